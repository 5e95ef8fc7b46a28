"""Gen6 deep-source bank and sampler, built from the real HSC scenes in the shared data folder.

Oracles: the scenes themselves (re-read here with astropy / numpy, independently of the
builder), the HSC pixel scale from the FITS WCS, hash-uniformity bounds from the binomial law.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import sep
from astropy.io import fits

from dhs_gen.errors import InvalidValueError
from dhs_gen.sources.banks import BankTemplate, open_bank
from dhs_gen.sources.deep_bank import build_deep_source_bank
from dhs_gen.sources.deep_sampler import DeepSourceBank
from dhs_gen.sources.profiles import TemplateSource

STAMP = 64
HSC_TO_NMGY = 10 ** ((22.5 - 27.0) / 2.5)  # HSC coadds: AB zeropoint 27


@pytest.fixture(scope="module")
def built(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("deep") / "deep_bank.npz"
    summary = build_deep_source_bank(str(shared_data / "hsc"), str(out), 100, STAMP, 0.168, 0.262)
    return summary, out, DeepSourceBank.load(out)


def _scene_grz(path):
    """g, r, z planes of a real scene, border-median subtracted, in nanomaggies (test's own reader)."""
    if path.suffix == ".fits":
        cube = fits.getdata(path).astype(float)  # HSC g, r, i, z, y
    else:
        cube = np.load(path, allow_pickle=False)["images"].astype(float)
    grz = cube[[0, 1, 3]]
    ring = np.ones(grz.shape[1:], bool)
    ring[4:-4, 4:-4] = False
    return (grz - np.median(grz[:, ring], axis=1)[:, None, None]) * HSC_TO_NMGY


def test_bank_from_real_hsc_scenes(built):
    summary, out, bank = built
    assert summary["n_written"] == len(bank) >= 12  # 16 from the 5 distinct real scenes (measured)
    assert summary["n_detected"] == summary["n_written"] + sum(summary["cuts"].values())
    skipped = summary["skipped_files"]
    assert "no celestial WCS" in skipped["PSF_HSC.fits"]  # PSF cubes are not scenes
    assert "not a multi-band" in skipped["Cut_HST.fits"]  # single-band HST cut-outs
    assert "duplicate" in skipped["hsc_cosmos.npz"]  # same pixels as 43158172147386355.npz
    with np.load(out, allow_pickle=False) as z:  # nothing needs unpickling
        assert all(z[k].dtype != object for k in z.files)
        assert z["images"].dtype == np.float32 and z["images"].shape == (len(bank), 3, STAMP, STAMP)
        assert list(z["bands"]) == ["g", "r", "z"] and float(z["target_pixscale_arcsec"]) == 0.262
    assert np.all(bank.meta["src_pixscale_arcsec"] == 0.168) and np.all(bank.meta["hlr_arcsec"] > 0)


def test_each_template_is_one_centred_dominant_object(built):
    _, _, bank = built
    for i in range(len(bank)):
        det = np.ascontiguousarray(bank.images[i].sum(axis=0), dtype=np.float64)
        # anything above 2 % of the peak, connected: neighbours would show up as extra objects
        objs = sep.extract(det, 0.02 * det.max(), minarea=3, deblend_cont=1.0)
        assert objs["flux"].max() >= 0.95 * objs["flux"].sum(), (i, objs["flux"])
        yy, xx = np.indices(det.shape, dtype=float)
        c = (STAMP - 1) / 2
        # the kept light's barycentre is on the stamp centre (DESIGN grid); 0.05 pix: area weighting
        # places each output pixel's flux at its centre, not at the flux-weighted point inside it
        assert abs((det * xx).sum() / det.sum() - c) < 0.05 and abs((det * yy).sum() / det.sum() - c) < 0.05


def test_bands_share_one_segmentation(built):
    _, _, bank = built
    for i in range(len(bank)):
        support = bank.images[i] != 0
        assert np.array_equal(support[0], support[1]) and np.array_equal(support[1], support[2])


def test_colours_kept_from_the_scene(built, shared_data):
    _, _, bank = built
    meta, checked = bank.meta, 0
    for i in range(len(bank)):
        name = str(meta["source_file"][i])
        x, y = meta["x_pix"][i], meta["y_pix"][i]
        radius = 2.5 * meta["hlr_arcsec"][i] / 0.168
        others = [math.hypot(meta["x_pix"][j] - x, meta["y_pix"][j] - y) for j in range(len(bank))
                  if j != i and str(meta["source_file"][j]) == name]
        if meta["snr"][i] < 100 or min(others, default=1e9) < radius + 5:
            continue  # faint or crowded: an aperture on the scene is not a clean oracle there
        grz = _scene_grz(shared_data / "hsc" / name)
        yy, xx = np.indices(grz.shape[1:])
        ap = grz[:, np.hypot(xx - x, yy - y) < radius].sum(axis=1)
        tpl = bank.images[i].sum(axis=(1, 2), dtype=np.float64)
        scene_colours = -2.5 * np.log10(ap[:2] / ap[1:])
        bank_colours = -2.5 * np.log10(tpl[:2] / tpl[1:])
        # 0.15 mag: a 2.5-hlr aperture vs the isophote + wing ring include different outskirts of
        # galaxies with colour gradients (measured <= 0.1 mag)
        assert np.all(np.abs(scene_colours - bank_colours) < 0.15), (name, scene_colours, bank_colours)
        native = bank.native_colors(i)
        assert native["g-r"] == pytest.approx(-2.5 * np.log10(bank.flux[i, 0] / bank.flux[i, 1]))
        checked += 1
    assert checked >= 5


def test_template_flux_is_the_scene_flux(built, shared_data):
    """Area-weighted resampling 0.168" -> 0.262" keeps the isolated galaxy's flux."""
    _, _, bank = built
    i = int(np.flatnonzero(bank.meta["source_file"] == "hsc_ra150.24071_dec2.06514.fits")[0])  # alone in its scene
    grz = _scene_grz(shared_data / "hsc" / "hsc_ra150.24071_dec2.06514.fits")
    scene_flux = grz.sum(axis=(1, 2))  # the whole scene: this galaxy dominates it
    # 3 %: the scene's only other object (masked in the template) is ~2 % of the detected flux
    # (sep: 135 vs 7352), plus sky noise; measured difference <= 0.6 %
    assert np.allclose(bank.images[i].sum(axis=(1, 2)), scene_flux, rtol=0.03)


def test_sampling_is_deterministic_unit_sum_and_uniform(built):
    _, out, bank = built
    tid, imgs = bank.sample("brick_0001_obj_17_rep_0")
    tid2, imgs2 = DeepSourceBank.load(out).sample("brick_0001_obj_17_rep_0")
    assert tid == tid2 and np.array_equal(imgs, imgs2)
    assert imgs.shape == (3, STAMP, STAMP) and imgs.dtype == np.float64
    assert np.allclose(imgs.sum(axis=(1, 2)), 1.0, atol=1e-12)
    n_draws = 4000
    counts = np.bincount([bank.sample(f"task-{k}")[0] for k in range(n_draws)], minlength=len(bank))
    p = 1 / len(bank)
    assert np.all(np.abs(counts - n_draws * p) < 5 * math.sqrt(n_draws * p * (1 - p)))  # 5 sigma binomial


def test_open_bank_deep_feeds_template_source(built):
    _, out, _ = built
    bank = open_bank("deep", out)
    t = bank.pick("task-3")
    assert isinstance(t, BankTemplate) and t.template_id.startswith("deep:") and t.pixscale_arcsec == 0.262
    assert set(t.native_colors) == {"g-r", "r-z"} and not t.images.flags.writeable
    for b in range(3):  # what stage 4c does with it
        src = TemplateSource(t.images[b], t.pixscale_arcsec, flux=2.0, center_x=0.1, center_y=-0.2)
        assert src.image.sum() == pytest.approx(1.0)
    assert pickle.loads(pickle.dumps(bank)).pick("task-3").template_id == t.template_id


def test_bad_inputs(tmp_path, shared_data):
    with pytest.raises(InvalidValueError, match="no_such_dir"):
        build_deep_source_bank(str(tmp_path / "no_such_dir"), str(tmp_path / "o.npz"), 5, 32, 0.168, 0.262)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidValueError, match="no template"):
        build_deep_source_bank(str(tmp_path / "empty"), str(tmp_path / "o.npz"), 5, 32, 0.168, 0.262)
    summary = build_deep_source_bank(str(shared_data / "hsc"), str(tmp_path / "x.npz"), 3, 32, 0.168, 0.262)
    assert summary["n_written"] == 3
    wrong = build_deep_source_bank(str(shared_data / "hsc"), str(tmp_path / "y.npz"), 100, 32, 0.262, 0.262)
    assert "pixel scale 0.168" in wrong["skipped_files"]["Cut_HSC.fits"]  # the WCS contradicts a 0.262" claim
    with pytest.raises(InvalidValueError, match="no template"):
        build_deep_source_bank(str(shared_data / "hsc"), str(tmp_path / "z.npz"), 3, 32, 0.168, 0.262, min_snr=1e9)
    np.savez(tmp_path / "not_bank.npz", images=np.ones((2, 3, 8, 8)))
    with pytest.raises(InvalidValueError, match="missing"):
        DeepSourceBank.load(tmp_path / "not_bank.npz")
    np.savez(tmp_path / "pickled.npz", images=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        DeepSourceBank.load(tmp_path / "pickled.npz")
