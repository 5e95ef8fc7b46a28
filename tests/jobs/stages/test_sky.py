"""``dhs sky``: the DR10 file layout, FITS content, parent-sample schema and determinism."""

import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from dhs_gen.survey import skysim, skysim_scene
from dhs_gen.survey.bricks import brick_by_name, bricknames_for
from jobs.stages import sky

ARGS = ["--n-bricks", "2", "--size-pix", "300", "--n-lrg", "6", "--n-field", "30", "--n-star", "5", "--seed", "7"]


@pytest.fixture(scope="module")
def small_sky(tmp_path_factory):
    out = tmp_path_factory.mktemp("sky")
    assert sky.main(["--out", str(out)] + ARGS) == 0
    return out


def _truth(out: Path) -> dict:
    return json.loads((out / "sky_truth.json").read_text())


def test_layout_has_every_dr10_file(small_sky):
    truth = _truth(small_sky)
    names = [b["brickname"] for b in truth["bricks"]]
    assert names == ["1498p020", "1501p020"]
    for name in names:
        folder = small_sky / "coadd" / name[:3] / name
        expected = {f"legacysurvey-{name}-{k}-{b}.fits.fz" for k in ("image", "invvar", "psfsize") for b in "grz"}
        expected.add(f"legacysurvey-{name}-maskbits.fits.fz")
        assert {p.name for p in folder.iterdir()} == expected


def test_fits_files_open_with_astropy_in_the_dr10_form(small_sky):
    name = "1501p020"
    folder = small_sky / "coadd" / "150" / name
    info = brick_by_name(name)
    for kind, dtype in (("image-r", np.float32), ("invvar-g", np.float32), ("psfsize-z", np.float32),
                        ("maskbits", np.int32)):
        path = folder / f"legacysurvey-{name}-{kind}.fits.fz"
        with fits.open(path, disable_image_compression=True) as raw:          # the tile-compressed table
            assert raw[1].header["ZCMPTYPE"] == "RICE_1"
            assert ("ZQUANTIZ" in raw[1].header) == (dtype == np.float32)       # integers: lossless
        with fits.open(path) as hdul:
            assert len(hdul) == 2 and isinstance(hdul[1], fits.CompImageHDU)    # image in HDU 1, as DR10
            data, header = hdul[1].data, hdul[1].header
            assert data.dtype == dtype and data.shape == (300, 300)
            assert header["BRICKNAM"] == name and header["CD1_1"] == pytest.approx(-0.262 / 3600, rel=1e-12)
            assert header["CTYPE1"] == "RA---TAN" and header["CRPIX1"] == 150.5
            ra, dec = WCS(header).all_pix2world([[149.5, 149.5]], 0)[0]
            assert ra == pytest.approx(info.ra, abs=1e-10) and dec == pytest.approx(info.dec, abs=1e-10)


def test_round_trip_precision_of_the_written_maps(small_sky):
    name = "1501p020"
    sim = skysim.simulate_brick(name, skysim_scene.SkyConfig(size_pix=300, n_lrg=6, n_field=30, n_star=5), seed=7)
    folder = small_sky / "coadd" / "150" / name
    read = {k: fits.getdata(folder / f"legacysurvey-{name}-{k}.fits.fz", 1)
            for k in ("maskbits", "invvar-r", "psfsize-g", "image-z")}
    assert np.array_equal(read["maskbits"], sim.maskbits)                      # lossless
    np.testing.assert_allclose(read["invvar-r"], sim.invvar["r"], rtol=2e-6)  # step 1e-6 of the median
    np.testing.assert_allclose(read["psfsize-g"], sim.psfsize["g"], rtol=2e-6)
    sigma = 1 / np.sqrt(np.median(sim.invvar["z"]))
    # q = 16 quantisation: step <= sigma / 16 (dithered), so |error| <= sigma / 32 plus float32 rounding
    covered = sim.invvar["z"] > 0
    err = np.abs(read["image-z"] - sim.image["z"])[covered]
    assert err.max() < sigma / 10 and np.all(read["image-z"][~covered] == 0)


def test_parent_sample_has_the_real_schema_and_consistent_values(small_sky, shared_data):
    real = pq.read_schema(shared_data / "dr10" / "phase3_lrg_parent_sample.parquet")
    t = pq.read_table(small_sky / "parent_sample.parquet")
    assert [(f.name, f.type) for f in t.schema] == [(f.name, f.type) for f in real]
    d = t.to_pandas()
    assert len(d) == 12 and set(d.BRICKNAME) == {"1498p020", "1501p020"}
    assert list(bricknames_for(d.RA.to_numpy(), d.DEC.to_numpy())) == list(d.BRICKNAME)
    for b in ("g", "r", "z", "w1"):
        flux = d[f"FLUX_{b.upper()}"].to_numpy(dtype=float)
        np.testing.assert_allclose(d[f"{b}_mag"], 22.5 - 2.5 * np.log10(flux), atol=1e-9)
    np.testing.assert_allclose(d.r_minus_z, d.r_mag - d.z_mag, atol=1e-12)
    assert d.is_lrg_v3.all() and (d.TYPE == "DEV").all() and (d.phase3_ranking_mode == "total_lrg_v3").all()
    assert d.r_mag.between(17.5, 20.5).all() and (d.g_mag - d.r_mag).between(1.5, 1.9).all()
    objects = pq.read_table(small_sky / "sky_objects.parquet").to_pandas()
    lrg = objects[objects.kind == "lrg"]
    np.testing.assert_allclose(np.sort(lrg.flux_r.to_numpy()), np.sort(d.FLUX_R.to_numpy()), rtol=1e-6)


def test_lrg_cuts_reproduce_the_real_flags(shared_data):
    d = pq.read_table(shared_data / "dr10" / "phase3_lrg_parent_sample.parquet").to_pandas()
    flags = sky.lrg_flags(d.z_mag, d.r_minus_z, d.z_minus_w1)
    for k in range(1, 6):
        assert np.array_equal(flags[f"is_lrg_v{k}"], d[f"is_lrg_v{k}"].to_numpy()), k


def test_truth_json_and_edge_lrgs(small_sky):
    truth = _truth(small_sky)
    assert truth["seed"] == 7 and truth["n_lrg"] == 12 and truth["config"]["size_pix"] == 300
    for b in truth["bricks"]:
        assert len(b["files"]) == 10 and b["stats"]["n_edge_lrg"] == 1
        assert b["stats"]["sigma_pix_nominal_r_nmgy"] == pytest.approx(
            skysim.pixel_sigma_for_depth(24.5, 1.3), rel=1e-12)  # r depth calibrated on real DR10 cutouts


def test_same_seed_same_bytes_of_data(small_sky, tmp_path):
    again = tmp_path / "again"
    sky.main(["--out", str(again)] + ARGS)
    assert pq.read_table(again / "parent_sample.parquet").equals(pq.read_table(small_sky / "parent_sample.parquet"))
    rel = "coadd/149/1498p020/legacysurvey-1498p020-image-g.fits.fz"
    # dither seeds are fixed per file, so even the compressed bytes repeat
    assert (again / rel).read_bytes() == (small_sky / rel).read_bytes()


def test_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as stop:
        sky.main(["--help"])
    assert stop.value.code == 0 and "--size-pix" in capsys.readouterr().out
    from dhs_gen.errors import InvalidValueError, RangeError

    with pytest.raises(InvalidValueError, match="size_pix"):
        sky.main(["--out", "/tmp/never", "--size-pix", "301"])
    with pytest.raises(RangeError, match="n-bricks"):
        sky.main(["--out", "/tmp/never", "--n-bricks", "0"])


def test_progress_line_per_brick(tmp_path):
    log = io.StringIO()
    sky.write_sky(str(tmp_path / "s"), 2, skysim_scene.SkyConfig(size_pix=200, n_lrg=2, n_field=5, n_star=2), 0, log=log)
    lines = [line for line in log.getvalue().splitlines() if line.startswith("sky: brick")]
    assert len(lines) == 2 and "1498p020" in lines[0]


@pytest.mark.slow
def test_default_sky_is_written_in_under_30_s(tmp_path):
    t = time.perf_counter()
    sky.main(["--out", str(tmp_path / "default")])
    seconds = time.perf_counter() - t
    assert seconds < 30.0 and _truth(tmp_path / "default")["n_lrg"] == 160
