"""Gen8 artifacts: presets, identity, determinism, each artifact against an analytic expectation."""

import math
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import special

from dhs_gen.augmentation.artifacts import (
    ARTIFACT_PROFILES,
    ArtifactConfig,
    apply_domain_randomization,
    apply_domain_randomization_bands,
    artifact_config,
    shift_bilinear,
)
from dhs_gen.errors import ChoiceError, ConfigError, InvalidValueError, RangeError

OFF = ARTIFACT_PROFILES["none"]


def _noise_stamp(bands=3, size=48, seed=0, sigmas=(1.0, 2.0, 4.0)):
    rng = np.random.default_rng(seed)
    return np.stack([rng.normal(0.0, sigmas[b], (size, size)) for b in range(bands)])


def _mad(a):
    return float(np.median(np.abs(a - np.median(a))))


def _real_cutouts(shared_data: Path):
    files = sorted((shared_data / "dr10" / "cutouts").glob("*.npz"))
    if not files:
        pytest.skip("no DR10 cutouts in the shared data folder")
    return files


def test_presets_match_seed_table():
    table = {"mild": (0.10, 0.05, 0.01, 0.2), "strong": (0.25, 0.15, 0.05, 0.5)}
    for name, (cosmic, sat, bg, jitter) in table.items():
        cfg = artifact_config(name)
        assert (cfg.cosmic_rate, cfg.sat_rate, cfg.bg_plane_amp, cfg.jitter_sigma_pix) == (cosmic, sat, bg, jitter)
    none = artifact_config("none")
    assert (none.cosmic_rate, none.sat_rate, none.bg_plane_amp, none.jitter_sigma_pix) == (0, 0, 0, 0)
    assert not any(getattr(none, f) for f in dir(none) if f.startswith("enable_"))
    assert set(ARTIFACT_PROFILES) == {"none", "mild", "strong"}
    assert artifact_config("mild", cosmic_rate=0.5).cosmic_rate == 0.5


def test_seed_default_fields():
    cfg = ArtifactConfig()
    assert (cfg.psf_e_sigma, cfg.bg_plane_amp, cfg.cosmic_rate, cfg.cosmic_amp, cfg.cosmic_length_pix,
            cfg.sat_rate, cfg.sat_amp, cfg.jitter_sigma_pix) == (0.05, 0.02, 0.15, 8.0, (8, 24), 0.08, 12.0, 0.25)


def test_unknown_profile_and_bad_config_raise_picklable_errors():
    with pytest.raises(ChoiceError, match="medium"):
        artifact_config("medium")
    for bad in ({"cosmic_rate": 1.5}, {"sat_rate": -0.1}, {"cosmic_length_pix": (20, 8)}, {"jitter_sigma_pix": -1.0},
                {"psf_e_sigma": 0.5}, {"enable_bg_plane": "yes"}):
        with pytest.raises(ConfigError) as info:
            ArtifactConfig(**bad)
        assert next(iter(bad)) in str(info.value)
        assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_everything_disabled_is_bit_exact_identity(dtype):
    stamp = _noise_stamp().astype(dtype)
    out = apply_domain_randomization_bands(stamp, "k", [4.0, 4.0, 4.0], cfg=OFF)
    assert out["img"].dtype == dtype and out["img"].tobytes() == stamp.tobytes()
    assert out["img"] is not stamp
    single = apply_domain_randomization(stamp[0], "k", 3.0, cfg=OFF)["img"]
    assert single.tobytes() == stamp[0].tobytes()


def test_deterministic_and_input_untouched():
    stamp = _noise_stamp().astype(np.float32)
    before = stamp.copy()
    cfg = ArtifactConfig(cosmic_rate=1.0, sat_rate=1.0)
    a = apply_domain_randomization_bands(stamp, "task-1", [4, 4, 4], cfg=cfg)
    b = apply_domain_randomization_bands(stamp, "task-1", [4, 4, 4], cfg=cfg)
    assert a["img"].tobytes() == b["img"].tobytes() and a["meta"] == b["meta"]
    assert stamp.tobytes() == before.tobytes()
    c = apply_domain_randomization_bands(stamp, "task-2", [4, 4, 4], cfg=cfg)
    assert not np.array_equal(a["img"], c["img"])


def test_single_band_api_equals_bands_api():
    img = _noise_stamp(bands=1)[0]
    cfg = ArtifactConfig(cosmic_rate=1.0, sat_rate=1.0)
    one = apply_domain_randomization(img, "k", psf_fwhm_pix=3.0, cfg=cfg)
    many = apply_domain_randomization_bands(img[None], "k", [3.0], cfg=cfg)
    assert np.array_equal(one["img"], many["img"][0]) and one["meta"] == many["meta"]


def test_noise_scale_is_the_mad_recorded_with_real_cutouts(shared_data):
    # oracle: the upstream pipeline stored the MAD of each real cutout's r band as meta_mad_r
    for path in _real_cutouts(shared_data)[:3]:
        with np.load(path, allow_pickle=False) as f:
            stamp, mad_r = np.moveaxis(f["cutout"], -1, 0), float(f["meta_mad_r"])
        out = apply_domain_randomization_bands(stamp, path.stem, [4.0, 3.8, 3.6], cfg=artifact_config("strong"))
        assert out["meta"]["noise_scale"][1] == pytest.approx(mad_r, rel=1e-5)  # float32 median rounding
        assert out["img"].shape == stamp.shape and out["img"].dtype == np.float32 and np.isfinite(out["img"]).all()


def test_background_plane_is_zero_mean_plane_of_mad_amplitude():
    stamp = _noise_stamp()
    cfg = replace(OFF, enable_bg_plane=True, bg_plane_amp=0.5)
    out = apply_domain_randomization_bands(stamp, "bg", cfg=cfg)
    gx, gy = out["meta"]["bg_plane"]["gx_mad"], out["meta"]["bg_plane"]["gy_mad"]
    for b in range(3):
        diff = out["img"][b] - stamp[b]
        mad = _mad(stamp[b])
        assert abs(diff.sum()) < 1e-9 * stamp.size  # zero-mean plane: total flux unchanged
        # from the left to the right column the plane rises by 2 gx MAD, top to bottom by 2 gy MAD
        np.testing.assert_allclose(diff[:, -1] - diff[:, 0], 2 * gx * mad, atol=1e-12)
        np.testing.assert_allclose(diff[-1, :] - diff[0, :], 2 * gy * mad, atol=1e-12)
    assert max(abs(gx), abs(gy)) <= 0.5


def _pixel_gaussian(size, sigma):
    edges = np.arange(size + 1) - size / 2.0
    w = np.diff(special.erf(edges / (math.sqrt(2) * sigma))) / 2.0
    return np.outer(w, w)


def test_round_psf_convolution_of_point_source_matches_erf_gaussian():
    # a point source at the centre of an odd stamp becomes the pixel-integrated Gaussian (analytic:
    # erf differences). Tolerance 2e-3 of the peak: dhs_gen.physics.psf integrates pixels by a 5x5 midpoint
    # rule, error ~ 2 (1/5)^2 / 24 / sigma^2 = 7e-4 here; 2-FWHM truncation adds ~1e-5
    stamp = np.zeros((1, 41, 41))
    stamp[0, 20, 20] = 1.0
    cfg = replace(OFF, enable_psf_anisotropy=True, psf_e_sigma=0.0)
    out = apply_domain_randomization_bands(stamp, "psf", [5.0], cfg=cfg, psf_model="gaussian")["img"][0]
    oracle = _pixel_gaussian(41, 5.0 / (2 * math.sqrt(2 * math.log(2))))
    np.testing.assert_allclose(out, oracle, atol=2e-3 * oracle.max())
    assert np.unravel_index(np.argmax(out), out.shape) == (20, 20)  # no one-pixel shift


def test_anisotropic_psf_ellipticity_matches_meta():
    stamp = np.zeros((1, 61, 61))
    stamp[0, 30, 30] = 1.0
    cfg = replace(OFF, enable_psf_anisotropy=True, psf_e_sigma=0.2)
    for key in ("a1", "a2", "a3"):
        out = apply_domain_randomization_bands(stamp, key, [8.0], cfg=cfg, psf_model="gaussian")
        img, meta = out["img"][0], out["meta"]["psf"]
        yy, xx = np.mgrid[:61, :61] - 30.0
        ixx, iyy, ixy = ((img * xx * xx).sum() - 1 / 12, (img * yy * yy).sum() - 1 / 12, (img * xx * yy).sum())
        # second moments of an elliptical Gaussian give the distortion chi = 2e / (1 + |e|^2)
        e1, e2 = meta["e1"], meta["e2"]
        norm = 2.0 / (1.0 + e1 * e1 + e2 * e2)
        # tolerance: kernel truncated at 2 FWHM removes ~1e-5 of the light but ~1e-3 of the variance
        assert (ixx - iyy) / (ixx + iyy) == pytest.approx(norm * e1, abs=3e-3)
        assert 2 * ixy / (ixx + iyy) == pytest.approx(norm * e2, abs=3e-3)


@pytest.mark.parametrize("size, max_kernel, expected", [(21, 63, 21), (20, 63, 19), (48, 7, 7)])
def test_psf_wider_than_stamp_is_capped_not_crashing(size, max_kernel, expected):
    stamp = _noise_stamp(bands=3, size=size)
    cfg = replace(OFF, enable_psf_anisotropy=True)
    out = apply_domain_randomization_bands(stamp, "wide", [200.0, 150.0, 100.0], cfg=cfg, max_kernel_size=max_kernel)
    assert out["meta"]["psf"]["kernel_size_pix"] == [expected] * 3
    assert out["img"].shape == stamp.shape and np.isfinite(out["img"]).all()


def test_cosmic_ray_one_band_sharp_track_after_psf():
    stamp = _noise_stamp(size=64)
    base_cfg = replace(OFF, enable_psf_anisotropy=True)
    with_cr = replace(base_cfg, enable_cosmic_rays=True, cosmic_rate=1.0, cosmic_amp=50.0)
    for key in ("cr1", "cr2", "cr3", "cr4"):
        clean = apply_domain_randomization_bands(stamp, key, [5.0] * 3, cfg=base_cfg)["img"]
        out = apply_domain_randomization_bands(stamp, key, [5.0] * 3, cfg=with_cr)
        meta = out["meta"]["cosmic_ray"]
        diff = out["img"] - clean  # independent streams: the PSF draw is the same with or without the ray
        changed = [b for b in range(3) if np.any(diff[b] != 0)]
        assert changed == [meta["band_index"]]
        band = meta["band_index"]
        peak = meta["peak_mad"] * _mad(stamp[band])
        assert 0.5 * 50.0 <= meta["peak_mad"] <= 1.5 * 50.0
        assert diff[band].max() <= peak * (1 + 1e-12)
        # applied after the PSF, so the track stays sharp: sigma 0.5 px means the pixels above half
        # peak form a line ~1-2 px wide; it is clipped by the stamp edge, so count within the length
        n_bright = int((diff[band] > 0.5 * peak).sum())
        assert 1 <= n_bright <= 3 * (meta["length_pix"] + 2)


def test_artifact_frequencies_follow_rates():
    # 600 keys, rate 0.25: binomial sigma = sqrt(600 * 0.25 * 0.75) = 10.6; allow 4 sigma
    cfg = replace(OFF, enable_cosmic_rays=True, cosmic_rate=0.25, enable_sat_wings=True, sat_rate=0.15)
    stamp = _noise_stamp(bands=1, size=8)
    n_cr = n_sat = 0
    for i in range(600):
        meta = apply_domain_randomization_bands(stamp, f"f{i}", cfg=cfg)["meta"]
        n_cr += meta["cosmic_ray"] is not None
        n_sat += meta["sat_wings"] is not None
    assert abs(n_cr - 150) <= 4 * math.sqrt(600 * 0.25 * 0.75)
    assert abs(n_sat - 90) <= 4 * math.sqrt(600 * 0.15 * 0.85)


def test_saturation_wings_in_every_band_scaled_by_band_mad():
    stamp = _noise_stamp(size=40)
    cfg = replace(OFF, enable_sat_wings=True, sat_rate=1.0, sat_amp=12.0)
    out = apply_domain_randomization_bands(stamp, "sat", cfg=cfg)
    diff = out["img"] - stamp
    mads = [_mad(stamp[b]) for b in range(3)]
    assert all(np.any(diff[b] > 0) for b in range(3))
    np.testing.assert_allclose(diff[1] / mads[1], diff[0] / mads[0], atol=1e-9)  # same geometry, MAD units
    np.testing.assert_allclose(diff[2] / mads[2], diff[0] / mads[0], atol=1e-9)
    assert diff[0].max() / mads[0] <= 12.0 * (1 + 1e-12)
    m = out["meta"]["sat_wings"]
    # the peak sits at the nearest pixel to the star centre, within one pixel
    iy, ix = np.unravel_index(np.argmax(diff[0]), diff[0].shape)
    assert abs(iy - m["y_pix"]) <= 1 and abs(ix - m["x_pix"]) <= 1


def test_jitter_moves_centroid_by_the_recorded_shift_in_every_band():
    yy, xx = np.mgrid[:48, :48]
    blob = np.exp(-0.5 * ((yy - 23.5) ** 2 + (xx - 23.5) ** 2) / 3.0**2)
    stamp = np.stack([blob, 2 * blob, 3 * blob])
    cfg = replace(OFF, enable_astrom_jitter=True, jitter_sigma_pix=0.5)
    out = apply_domain_randomization_bands(stamp, "jit", cfg=cfg)
    dy, dx = out["meta"]["jitter"]["dy_pix"], out["meta"]["jitter"]["dx_pix"]
    assert (dy, dx) != (0.0, 0.0)
    for b in range(3):
        img = out["img"][b]
        # linear interpolation shifts the centroid of a fully contained source exactly (to the 1e-9
        # level of the Gaussian's truncated tails at 8 sigma)
        assert (img * yy).sum() / img.sum() - 23.5 == pytest.approx(dy, abs=1e-6)
        assert (img * xx).sum() / img.sum() - 23.5 == pytest.approx(dx, abs=1e-6)
        assert img.sum() == pytest.approx(stamp[b].sum(), rel=1e-9)


@pytest.mark.parametrize("dy, dx", [(0.3, -0.2), (-0.7, 0.45), (1.6, -2.3), (0.0, 0.0), (-3.0, 1.0)])
def test_shift_bilinear_matches_scipy_ndimage_shift(dy, dx):
    from scipy import ndimage

    img = np.random.default_rng(7).normal(0.0, 1.0, (3, 40, 33))
    ref = np.stack([ndimage.shift(band, (dy, dx), order=1, mode="nearest") for band in img])
    np.testing.assert_allclose(shift_bilinear(img, dy, dx), ref, rtol=0, atol=1e-12)


def test_bad_call_arguments():
    stamp = _noise_stamp()
    with pytest.raises(ChoiceError, match="psf_model"):
        apply_domain_randomization_bands(stamp, "k", [3, 3, 3], psf_model="airy")
    with pytest.raises(RangeError, match="psf_fwhm_pix"):
        apply_domain_randomization_bands(stamp, "k", [3, -1, 3])
    with pytest.raises(InvalidValueError, match="psf_fwhm_pix"):
        apply_domain_randomization_bands(stamp, "k", [3, 3])
    with pytest.raises(InvalidValueError, match="img"):
        apply_domain_randomization(stamp, "k")
    with pytest.raises(InvalidValueError, match="stamp"):
        apply_domain_randomization_bands(stamp[0], "k")
    with pytest.raises(InvalidValueError, match="max_kernel_size"):
        apply_domain_randomization_bands(stamp, "k", 3.0, max_kernel_size=0)
