"""Anchor sets: resampling (analytic oracles), real-data units, cutout sources, default set, metrics wiring."""

from __future__ import annotations

import glob
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from scipy.special import erf
from support import CutoutService

from dhs_gen.imaging.resample import area_weighted_resample
from dhs_gen.survey.bricks import brick_by_name, brick_wcs
from jobs import cli
from jobs.anchors.anchor_set import anchors_main, build_anchor_set, build_default_anchor_set
from jobs.cutouts.cutout import CutoutUnavailable, standardize
from jobs.cutouts.sources import (
    CoaddCacheCutouts,
    LegacySurveyCutoutService,
    LocalCutoutFolder,
    make_cutout_source,
)
from jobs.evaluation.gates import anchor_metrics
from jobs.runtime import outputs
from jobs.runtime.schema import ANCHOR_SCHEMA, decode_image


def _pixel_integrated_gaussian(n, pixscale, sigma, flux):
    """Exact flux per pixel of a centred circular Gaussian (erf integrals over pixel edges)."""
    edges = (np.arange(n + 1) - n / 2) * pixscale
    cdf = 0.5 * (1 + erf(edges / (np.sqrt(2) * sigma)))
    p = np.diff(cdf)
    return flux * np.outer(p, p)


def test_area_resample_is_exact_when_edges_align():
    # 0.131"/pix -> 0.262"/pix: each output pixel is exactly 2x2 input pixels, so the result must equal
    # the analytic pixel integrals at 0.262"/pix (float64 rounding, 1e-12 relative)
    src = _pixel_integrated_gaussian(128, 0.131, 0.8, 10.0)
    out, cov = area_weighted_resample(src[None], 0.131, 0.262, (64, 64))
    np.testing.assert_allclose(out[0], _pixel_integrated_gaussian(64, 0.262, 0.8, 10.0), rtol=1e-12, atol=1e-15)
    assert np.all(cov == pytest.approx(1.0))


def test_area_resample_conserves_flux_and_centroid_for_hsc_scale():
    # HSC 0.168"/pix -> 0.262: non-integer ratio; total flux kept to float rounding when the output covers
    # the input, centroid kept at the centre (symmetric overlap weights)
    src = _pixel_integrated_gaussian(101, 0.168, 0.7, 3.0)
    out, _ = area_weighted_resample(np.stack([src, 2 * src]), 0.168, 0.262, (80, 80))
    assert out[0].sum() == pytest.approx(src.sum(), rel=1e-12)
    assert out[1].sum() == pytest.approx(2 * src.sum(), rel=1e-12)
    yy, xx = np.mgrid[:80, :80]
    assert (out[0] * xx).sum() / out[0].sum() == pytest.approx(39.5, abs=1e-9)
    # against the analytic integrals at 0.262"/pix: treating flux as uniform inside each 0.168" input pixel
    # is a box smoothing of variance p^2/12 per axis; at the peak of a sigma = 0.7" Gaussian that is a
    # relative error ~ 2 * p^2 / (12 sigma^2) = 1%, so 2% of the peak bounds it with margin
    ref = _pixel_integrated_gaussian(80, 0.262, 0.7, src.sum())
    assert np.abs(out[0] - ref).max() < 0.02 * ref.max()


def test_standardize_selects_grz_and_records_provenance():
    cube = np.arange(5 * 10 * 10, dtype=float).reshape(5, 10, 10)  # g r i z y
    cut = standardize(cube, 0.262, "grizy", 6, "test cube", scale=1e-3, scale_note="zp 30")
    np.testing.assert_allclose(cut.image, cube[[0, 1, 3], 2:8, 2:8] * 1e-3, rtol=1e-6)
    assert cut.image.dtype == np.float32 and "bands g,r,z of grizy" in cut.provenance and "zp 30" in cut.provenance
    with pytest.raises(CutoutUnavailable, match="missing_band"):
        standardize(cube[:2], 0.262, "gr", 6, "two bands")
    bad = cube.copy()
    bad[:, 4:6, :] = np.nan
    with pytest.raises(CutoutUnavailable, match="nonfinite"):
        standardize(bad[[0, 1, 3]], 0.262, "grz", 6, "nan")


def _mad(x):
    return 1.4826 * np.median(np.abs(x - np.median(x)))


@pytest.fixture(scope="module")
def default_set(shared_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("anchors") / "default")
    manifest = build_default_anchor_set(shared_data, out, size_pix=64)
    return manifest, pq.read_table(outputs.dataset_files(out)[0]), out


def test_default_anchor_set_contents(default_set, shared_data):
    manifest, table, out = default_set
    assert table.schema == ANCHOR_SCHEMA
    assert manifest["rows_in"] == manifest["rows_written"] + manifest["rows_rejected"] == 58
    assert manifest["rejected_by_reason"] == {"missing_coverage": 1}
    rejects = pq.read_table(f"{out}/_rejects.parquet").to_pylist()
    assert [r["name"] for r in rejects] == ["DECaLS_zooniverse_example_bad_pix"]
    rows = table.to_pylist()
    pos = [r for r in rows if r["label"] == 1]
    assert len(pos) == 6 and {r["class"] for r in pos} == {"candidate"} and {r["grade"] for r in pos} == {"B"}
    assert sum(r["source_catalog"] == "des_lrg_hosts" for r in rows) == 46
    assert sum(r["source_catalog"] == "decals_zooniverse" for r in rows) == 5
    assert all(r["image_shape"] == [3, 64, 64] and r["pixscale_arcsec"] == 0.262 for r in rows)
    # DR10 pixels are the npz cutout itself, (H, W, 3) -> (3, H, W), centre-cropped 101 -> 64 from index 18
    by_name = {r["name"]: r for r in pos}
    for path in glob.glob(str(shared_data / "dr10" / "cutouts" / "*.npz")):
        with np.load(path, allow_pickle=False) as d:
            ref = d["cutout"][18:82, 18:82, :].transpose(2, 0, 1)
            r = by_name[str(d["meta_galaxy_id"])]
            assert r["brickname"] == str(d["meta_brickname"])
        np.testing.assert_array_equal(decode_image(r["image"], r["image_shape"]), ref)


def test_des_units_match_real_dr10_lrgs(default_set, shared_data):
    """x1e-3 (zeropoint 30): DES LRG hosts land on the bright end of the real DR10 LRG magnitudes and colours."""
    _, table, _ = default_set
    lrg = pq.read_table(shared_data / "dr10" / "phase3_lrg_parent_sample.parquet").to_pandas()
    des = [r for r in table.to_pylist() if r["source_catalog"] == "des_lrg_hosts"]
    yy, xx = np.mgrid[:64, :64]
    r_pix = np.hypot(yy - 31.5, xx - 31.5)
    ap, sky = r_pix <= 15, r_pix > 27
    mags = []
    for r in des:
        img = decode_image(r["image"], r["image_shape"]).astype(float)
        flux = [(b[ap] - np.median(b[sky])).sum() for b in img]
        mags.append(22.5 - 2.5 * np.log10(flux))
    g, rr, z = np.median(mags, axis=0)
    # total r of DR10 LRGs spans ~19-22.5 (1st-99th percentile); a wrong power of 10 moves by 2.5 mag
    lo, hi = np.nanpercentile(lrg["r_mag"], [1, 99])
    assert lo < rr < hi and abs(rr - np.nanmedian(lrg["r_mag"])) < 1.5
    # colours within 0.3 mag of the DR10 LRG medians (LRG colour spread is ~0.3 mag)
    assert abs((g - rr) - np.nanmedian(lrg["g_mag"] - lrg["r_mag"])) < 0.3
    assert abs((rr - z) - np.nanmedian(lrg["r_mag"] - lrg["z_mag"])) < 0.3
    # sky noise per pixel comparable to the real DR10 cutouts (within 2x; DES is a little deeper)
    dr10 = [decode_image(r["image"], r["image_shape"]) for r in table.to_pylist() if r["label"] == 1]
    ref = np.median([[_mad(b[sky]) for b in img] for img in dr10], axis=0)
    des_noise = np.median([[_mad(b[sky]) for b in decode_image(r["image"], r["image_shape"])] for r in des], axis=0)
    assert np.all((des_noise / ref > 0.5) & (des_noise / ref < 2.0))


def test_zooniverse_values_are_surface_brightness_per_native_pixel(shared_data):
    """Blank-sky noise after conversion matches DR10 noise per 0.262" pixel; flux-per-fine-pixel would not."""
    npz = sorted(glob.glob(str(shared_data / "dr10" / "cutouts" / "*.npz")))
    dr10 = np.median([[_mad(b[:20, :20]) for b in np.load(p, allow_pickle=False)["cutout"].transpose(2, 0, 1)] for p in npz], axis=0)
    ratios_sb, ratios_flux = [], []
    for path in sorted(glob.glob(str(shared_data / "decals" / "zooniverse_examples" / "example_[a-e].fits"))):
        with fits.open(path) as hdul:
            data, s = hdul[0].data, abs(hdul[0].header["CD1_1"]) * 3600
        n = int(424 * s / 0.262) // 2 * 2
        for sb, ratios in ((True, ratios_sb), (False, ratios_flux)):
            img = standardize(data, s, "grz", n, "zoo", surface_brightness=sb).image
            k = n // 6
            corner = np.concatenate([img[:, :k, :k], img[:, -k:, -k:]], axis=2).reshape(3, -1)
            ratios.append([_mad(b) for b in corner] / dr10)
    med_sb, med_flux = np.median(ratios_sb, axis=0), np.median(ratios_flux, axis=0)
    # DR3/DR5 depth varies by ~x2 around DR10 per pixel; the wrong reading sums (0.262 / s)^2 = 3.4-6.9
    # fine pixels of per-native-pixel values, so it comes out >= 2.5x too noisy
    assert np.all((med_sb > 0.5) & (med_sb < 2.0)), med_sb
    assert np.all(med_flux > 2.5), med_flux


def test_local_folder_matches_by_position_and_builder_labels(shared_data):
    src = LocalCutoutFolder(str(shared_data / "dr10" / "cutouts"), match_radius_arcsec=2.0)
    ra, dec = src.ra[0], src.dec[0]
    arcsec = 1 / 3600
    catalog = pa.table({
        "name": ["lens_1as_off", "far_5as", "cand", "ring"],
        "ra": [ra, ra, src.ra[1], src.ra[2]],
        "dec": [dec + 1 * arcsec, dec + 5 * arcsec, src.dec[1], src.dec[2]],
        "class": ["known_lens", "known_lens", "candidate", "ring"],
        "grade": ["confident", "confident", "B", "ring"],
        "source_catalog": ["lenscat", "lenscat", "stein", "gz2"],
        "theta_e_arcsec": [1.1, None, None, None], "z": [0.3, None, None, None],
    })
    table, rejects = build_anchor_set(catalog, src, size_pix=32)
    assert table.column("name").to_pylist() == ["lens_1as_off", "ring"]
    assert table.column("label").to_pylist() == [1, 0]
    assert table.column("theta_e_arcsec").to_pylist()[0] == 1.1 and table.column("z_lens").to_pylist()[0] == 0.3
    assert {(r["name"], r["reason"]) for r in rejects} == {("far_5as", "no_cutout"),
                                                          ("cand", "class_not_selected:candidate")}
    table2, _ = build_anchor_set(catalog, src, size_pix=32, include_candidates=True)
    assert "cand" in table2.column("name").to_pylist()


def test_legacysurvey_service_against_a_local_http_server(tmp_path):
    rng = np.random.default_rng(5)
    cube = rng.normal(0, 0.01, (3, 40, 40)).astype(np.float32)
    hdu = fits.PrimaryHDU(cube)
    hdu.header["BANDS"] = "grz"
    path = tmp_path / "cut.fits"
    hdu.writeto(path)
    with CutoutService(path.read_bytes(), missing=("missing",), failures=2) as server:
        svc = LegacySurveyCutoutService(server.template, retries=3, backoff_s=0.0, timeout_s=5)
        cut = svc.fetch(150.1, 2.2, 32)
        assert server.requests == 3  # two 503s retried, then served
        assert "ra=150.1000000" in server.paths[-1] and "size=32" in server.paths[-1]
        np.testing.assert_array_equal(cut.image, cube[:, 4:36, 4:36])
        with pytest.raises(CutoutUnavailable, match="http_error"):
            LegacySurveyCutoutService(server.template.replace("cutout", "missing"), retries=3, backoff_s=0).fetch(1, 1, 8)
        assert server.requests == 4  # a 404 is not retried
    with pytest.raises(ValueError, match="url_template"):
        LegacySurveyCutoutService("http://x/?ra={ra}")


def test_coadd_cache_source_cuts_from_a_dr10_layout_brick(tmp_path):
    name, size = "2447p120", 200
    wcs = brick_wcs(name, size_pix=size)
    rng = np.random.default_rng(6)
    images = {}
    for band in "grz":
        images[band] = rng.normal(0, 0.01, (size, size)).astype(np.float32)
        for kind, data in (("image", images[band]), ("invvar", np.full((size, size), 1e4, np.float32)),
                           ("psfsize", np.full((size, size), 1.3, np.float32))):
            p = tmp_path / name[:3] / name / f"legacysurvey-{name}-{kind}-{band}.fits.fz"
            p.parent.mkdir(parents=True, exist_ok=True)
            fits.PrimaryHDU(data, header=wcs.to_header()).writeto(p)
    fits.PrimaryHDU(np.zeros((size, size), np.int32), header=wcs.to_header()).writeto(
        tmp_path / name[:3] / name / f"legacysurvey-{name}-maskbits.fits.fz")
    src = make_cutout_source(f"coadd:{tmp_path}")
    assert isinstance(src, CoaddCacheCutouts)
    info = brick_by_name(name)
    # a quarter pixel past pixel (100, 100) (0-based), by astropy: nearest pixel 100 -> corner 100 - 16 = 84
    ra, dec = (float(v) for v in wcs.all_pix2world(100.25, 100.25, 0))
    cut = src.fetch(ra, dec, 32)
    np.testing.assert_array_equal(cut.image[1], images["r"][84:116, 84:116])
    assert cut.invvar is not None and float(cut.invvar.min()) == 1e4
    with pytest.raises(CutoutUnavailable, match="off_brick_edge"):
        src.fetch(info.ra, info.dec + 0.01, 32)  # 137 px north of the centre: off this 200-px brick


def test_anchor_metrics_wiring():
    scored = pa.table({"score": [0.9, 0.8, 0.6, 0.2, 0.1, 0.2, 0.3, 0.7, None],
                       "label": [1, 1, 1, 1, 0, 0, 0, 0, 0],
                       "class": ["known_lens"] * 4 + ["ring"] * 2 + ["merger"] * 3})
    m = anchor_metrics(scored)
    # by hand: 3/4 lenses >= 0.5; 1/4 negatives >= 0.5; medians 0.7 and 0.25; AUROC = 12.5 / 16 pairs
    assert m["recovery_rate_0p5"] == 0.75 and m["contamination_rate_0p5"] == 0.25
    assert m["score_separation"] == pytest.approx(0.45) and m["auroc_anchor"] == pytest.approx(12.5 / 16)
    assert m["n_unscored"] == 1 and m["per_class"]["merger"] == {"n": 2, "n_at_or_above_threshold": 1}


def test_cli_build_and_metrics(shared_data, tmp_path, capsys):
    src = LocalCutoutFolder(str(shared_data / "dr10" / "cutouts"))
    cat = tmp_path / "cat.parquet"
    pq.write_table(pa.table({"name": ["a", "b"], "ra": src.ra[:2], "dec": src.dec[:2],
                             "class": ["known_lens", "other"], "source_catalog": ["x", "y"]}), cat)
    out = tmp_path / "anchors"
    assert anchors_main(["build", "--catalog", str(cat), "--cutouts", f"local:{shared_data}/dr10/cutouts",
                         "--out", str(out), "--size", "48"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["rows_written"] == 2 and report["extra"]["n_label_1"] == 1
    with pytest.raises(outputs.OutputExistsError):
        anchors_main(["build", "--catalog", str(cat), "--cutouts", f"local:{shared_data}/dr10/cutouts",
                      "--out", str(out)])
    scores = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"score": [0.9, 0.1], "label": [1, 0], "class": ["known_lens", "other"]}), scores)
    assert cli.main(["anchors", "metrics", "--scores", str(scores)]) == 0
    assert json.loads(capsys.readouterr().out)["passes_anchor_gate"] is True
