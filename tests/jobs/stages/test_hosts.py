"""``dhs hosts build`` -> 4a -> 4c on real host cutouts: accounting, photometry, brick = cutout, the service."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from support import CutoutService

from jobs import cli
from jobs.cutouts.coadds import load_brick
from jobs.cutouts.host_images import Declared
from jobs.cutouts.sources import LegacySurveyCutoutService
from jobs.runtime import outputs, storage
from jobs.runtime.config import load_config
from jobs.runtime.schema import decode_image
from jobs.stages import hosts, inject, manifest, sky

DR9_FILE = "cutout_59.1067_-30.4848.fits"


def _rows(uri):
    return storage.read_parquet(outputs.dataset_files(str(uri))).sort_by("task_id").to_pylist()


def _cfg():
    return load_config("base", {"lens": {"theta_e_arcsec": [1.2, 2.0]}, "n_replicates": 2,
                                "source": {"mode": "mix", "mix_modes": ["sersic", "hybrid"], "mix_probs": [0.5, 0.5]}})


@pytest.fixture(scope="module")
def des_hosts(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("des") / "hosts"
    assert cli.main(["hosts", "build", "--cutouts", f"local:{shared_data}/des/lrg_hosts", "--out", str(out),
                     "--zeropoint", "30", "--pixscale-arcsec", "0.263", "--psf-fwhm-arcsec", "1.3,1.15,1.05"]) == 0
    return out


@pytest.fixture(scope="module")
def des_stamps(des_hosts, spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("des_run")
    manifest.run(None, _cfg(), str(base / "m"), partitions=2, spark=spark, hosts_uri=str(des_hosts))
    inject.run(str(base / "m"), None, str(base / "s"), partitions=3, spark=spark, hosts_uri=str(des_hosts))
    return base


def test_des_host_dataset_accounts_for_every_host(des_hosts):
    m = outputs.read_manifest(str(des_hosts))
    assert (m["rows_in"], m["rows_written"], m["rows_rejected"]) == (46, 46, 0)
    row = pq.read_table(outputs.dataset_files(str(des_hosts))[0]).to_pylist()[0]
    assert row["psf_source"] == "declared (--psf-fwhm-arcsec)" and row["invvar_source"].startswith("estimated")
    assert "zeropoint 30" in row["provenance"] and row["ra"] is None and row["host_id"].startswith("host_")


def test_manifest_and_inject_on_real_hosts_keep_every_row(des_stamps, des_hosts):
    m_in, m_out = outputs.read_manifest(str(des_stamps / "m")), outputs.read_manifest(str(des_stamps / "s"))
    assert m_in["inputs"] == {"hosts": str(des_hosts)} and m_out["inputs"]["hosts"] == str(des_hosts)
    assert m_in["rows_written"] == 46 * 2 * 2 * 2   # hosts x theta_E x replicates x (injection + control)
    assert m_out["rows_written"] + m_out["rows_rejected"] == m_in["rows_written"]
    assert m_out["rows_rejected"] == 0
    # hosts without a position are split by their own id: every split gets hosts, a host stays in one
    rows = _rows(des_stamps / "s")
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["host_id"], r["split"]) == r["split"]
    assert set(split_of.values()) == {"train", "val", "test"}


def test_photometry_on_real_hosts(des_stamps, des_hosts):
    host_pixels = {h["host_id"]: h["image"] for h in pq.read_table(outputs.dataset_files(str(des_hosts))[0]).to_pylist()}
    rows = _rows(des_stamps / "s")
    by_task = {r["task_id"]: r for r in rows}
    checked = 0
    for r in rows:
        if r["kind"] != "injection":
            continue
        # arc_flux = 10**((22.5 - m) / 2.5) x magnification
        assert r["arc_flux_r_nmgy"] == pytest.approx(10 ** ((22.5 - r["src_mag_r"]) / 2.5) * r["magnification"], rel=1e-9)
        ctrl = by_task[r["pair_id"] + "/control"]
        if r["artifact_profile"] != "none":
            continue
        diff = decode_image(r["image"], r["image_shape"]).astype(float) - decode_image(ctrl["image"], r["image_shape"])
        for b, band in enumerate("grz"):
            expected = r[f"arc_flux_{band}_nmgy"]
            sigma = np.sqrt(expected / 1000.0) + 1e-6      # the arc's photon noise, gain >= 1000 e-/nmgy
            assert abs(diff[b].sum() - expected) < 6 * sigma, (band, diff[b].sum(), expected)
        assert ctrl["image"] == host_pixels[r["host_id"]]     # the control is the real host, untouched
        checked += 1
    assert checked >= 20


def test_dr9_viewer_cutout_with_invvar_and_psf_becomes_a_host(shared_data, tmp_path, capsys):
    out = tmp_path / "h"
    assert cli.main(["hosts", "build", "--cutouts", f"local:{shared_data}/decals/dr9_cutout_invvar",
                     "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows_written"] == 1
    row = pq.read_table(outputs.dataset_files(str(out))[0]).to_pylist()[0]
    assert row["psf_source"].startswith("measured on copsf_") and row["invvar_source"] == "file"
    assert row["brickname"] == "0591m305" and row["ra"] == pytest.approx(59.1067, abs=1e-3)


def test_catalog_psfsize_comes_first_and_unmatched_rows_are_rejected(shared_data, tmp_path):
    cat = tmp_path / "cat.csv"
    cat.write_text("RA,DEC,PSFSIZE_G,PSFSIZE_R,PSFSIZE_Z\n59.10676,-30.48484,1.61,1.42,1.33\n10.0,10.0,1.5,1.4,1.3\n")
    out = tmp_path / "h"
    m = hosts.build_hosts(f"local:{shared_data}/decals/dr9_cutout_invvar", str(out), str(cat))
    assert (m["rows_written"], m["rows_rejected"], m["rejected_by_reason"]) == (1, 1, {"no_cutout": 1})
    row = pq.read_table(outputs.dataset_files(str(out))[0]).to_pylist()[0]
    assert row["psf_source"] == "catalog PSFSIZE_G/R/Z"
    assert (row["psf_fwhm_g_arcsec"], row["psf_fwhm_r_arcsec"], row["psf_fwhm_z_arcsec"]) == (1.61, 1.42, 1.33)
    rejects = pq.read_table(str(out / outputs.REJECTS_FILE)).to_pylist()
    assert rejects[0]["reason"] == "no_cutout" and rejects[0]["ra"] == 10.0


def test_hosts_without_any_psf_are_rejected_with_the_reason(shared_data, tmp_path):
    m = hosts.build_hosts(f"local:{shared_data}/dr10/cutouts", str(tmp_path / "h"))
    assert (m["rows_written"], m["rejected_by_reason"]) == (0, {"no_psf": 6})


@pytest.mark.parametrize("argv, needle", [
    (["--cutouts", "nowhere:x"], "cutouts kind"),
    (["--cutouts", "coadd:/tmp"], "--catalog"),
    (["--cutouts", "local:/tmp", "--psf-fwhm-arcsec", "1.2,1.3"], "psf_fwhm_arcsec"),
    (["--cutouts", "local:/tmp", "--size", "2"], "size"),
])
def test_bad_arguments_are_one_line_errors(argv, needle, tmp_path, capsys):
    assert cli.main(["hosts", "build", *argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------
# The same manifest row from a brick and from a cutout of that brick
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def brick_sky(tmp_path_factory):
    out = tmp_path_factory.mktemp("sky")
    sky.main(["--out", str(out), "--n-bricks", "1", "--n-lrg", "8", "--size-pix", "400"])
    return out


def _viewer_cutouts(sky_dir, parent, folder, size=80):
    """Legacy Surveys viewer-layout cutouts (image + invvar HDUs, TAN WCS) cut from the sky's brick pixels."""
    folder.mkdir()
    table = pq.read_table(parent).to_pylist()
    brick = load_brick(str(sky_dir / "coadd"), table[0]["BRICKNAME"])
    for i, r in enumerate(table):
        x, y = brick.wcs.all_world2pix([[r["RA"], r["DEC"]]], 0)[0]
        x0, y0 = int(np.floor(x + 0.5)) - size // 2, int(np.floor(y + 0.5)) - size // 2
        if x0 < 0 or y0 < 0 or x0 + size > brick.shape[1] or y0 + size > brick.shape[0]:
            continue
        head = brick.wcs[y0:y0 + size, x0:x0 + size].to_header()
        hdus = [fits.PrimaryHDU()]
        for b in "grz":
            for kind, maps in (("image", brick.image), ("invvar", brick.invvar)):
                h = fits.ImageHDU(maps[b][y0:y0 + size, x0:x0 + size], header=head.copy())
                h.header["IMAGETYP"], h.header["BAND"] = kind, b
                hdus.append(h)
        fits.HDUList(hdus).writeto(folder / f"cutout_{i:03d}.fits")
    return brick


def test_a_row_renders_bit_identically_from_the_brick_and_from_cutouts_of_it(brick_sky, spark, tmp_path):
    parent = brick_sky / "parent_sample.parquet"
    cfg = _cfg()
    manifest.run(str(parent), cfg, str(tmp_path / "m"), partitions=2, spark=spark)
    inject.run(str(tmp_path / "m"), str(brick_sky), str(tmp_path / "from_brick"), partitions=2, spark=spark)
    brick = _viewer_cutouts(brick_sky, parent, tmp_path / "cutouts")
    # the catalog gives the brick's PSF at each host: the cutouts carry no PSF of their own
    cat = pq.read_table(parent).to_pylist()
    for r in cat:
        x, y = brick.wcs.all_world2pix([[r["RA"], r["DEC"]]], 0)[0]
        ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        for b in "grz":
            r[f"PSFSIZE_{b.upper()}"] = float(brick.psfsize[b][iy, ix])
    pq.write_table(pa.Table.from_pylist(cat), tmp_path / "cat.parquet")
    for spec, name in ((f"coadd:{brick_sky / 'coadd'}", "coadd"), (f"local:{tmp_path / 'cutouts'}", "local")):
        hosts.build_hosts(spec, str(tmp_path / f"hosts_{name}"), str(tmp_path / "cat.parquet"), size=80)
        inject.run(str(tmp_path / "m"), None, str(tmp_path / f"from_{name}"), partitions=3, spark=spark,
                   hosts_uri=str(tmp_path / f"hosts_{name}"))
    a = {r["task_id"]: r for r in _rows(tmp_path / "from_brick")}
    compared = 0
    for name in ("coadd", "local"):
        for r in _rows(tmp_path / f"from_{name}"):
            ref = a[r["task_id"]]
            if ref["cutout_ok"] != 1 or r["cutout_ok"] != 1:
                continue
            for col in ("image", "invvar", "arc_flux_r_nmgy", "magnification", "psf_fwhm_r_arcsec", "arc_snr"):
                assert r[col] == ref[col], (name, r["task_id"], col)
            compared += 1
    assert compared >= 2 * 20


# ------------------------------------------------------------------------------------------------
# legacysurvey: the cutout service (a local stand-in serving the real DR9 file), retries
# ------------------------------------------------------------------------------------------------

def test_legacysurvey_service_hosts_with_retries_and_404(shared_data, tmp_path):
    body = (shared_data / "decals" / "dr9_cutout_invvar" / DR9_FILE).read_bytes()
    cat = tmp_path / "cat.csv"
    cat.write_text("ra,dec\n59.1067599,-30.4848417\n10.0,10.0\n")
    # the first two requests fail with 503 (retried); the second position is not in the survey (404)
    with CutoutService(body, missing=("ra=10.0000000",), failures=2) as service:
        source = LegacySurveyCutoutService(service.template, retries=3, backoff_s=0.01)
        rows, rejects = hosts.build_service(source, hosts.read_catalog(str(cat)), 64,
                                            Declared(psf_fwhm_arcsec=(1.5, 1.3, 1.2)), "legacysurvey")
    assert len(rows) == 1 and rows[0]["invvar_source"] == "file"
    assert [r["reason"] for r in rejects] == ["http_error"] and "404" in rejects[0]["detail"]


def test_a_host_smaller_than_the_stamp_is_a_rejected_row(shared_data, tmp_path):
    out = tmp_path / "small"
    hosts.build_hosts(f"local:{shared_data}/des/lrg_hosts", str(out), size=48, declared=Declared(
        zeropoint=30.0, pixscale_arcsec=0.263, psf_fwhm_arcsec=(1.3, 1.15, 1.05)))
    host = pq.read_table(outputs.dataset_files(str(out))[0]).to_pylist()[0]
    cfg = _cfg()                                       # stamp_size_pix 64 > 48
    planned = manifest.plan_host(host, cfg, cfg.config_hash())
    joined = [{**r, **{j: host[c] for c, j in inject.HOST_JOIN_COLUMNS.items()}} for r in planned]
    joined.append({**planned[0], "task_id": "orphan", **dict.fromkeys(inject.HOST_JOIN_COLUMNS.values())})
    got = list(inject.inject_host_rows(joined, cfg, "sha"))
    assert len(got) == len(joined)
    assert {r["reject_reason"] for r in got[:-1]} == {"cutout_too_small"} and got[-1]["reject_reason"] == "missing_host"
    assert all(r["cutout_ok"] == 0 and r["image"] is None for r in got)
