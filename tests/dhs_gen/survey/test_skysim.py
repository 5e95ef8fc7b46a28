"""The synthetic sky kernels: profiles through analytic integrals, depth by Monte Carlo, brick content."""

import math

import numpy as np
import pytest
from scipy.special import gammainc

from dhs_gen.conventions import mag_to_nmgy
from dhs_gen.physics.psf import gaussian_kernel, moffat_kernel
from dhs_gen.sources.profiles import sersic_b_n
from dhs_gen.survey import skysim, skysim_scene

PS = 0.262


def _radius_pix(half, dx=0.0, dy=0.0, q=1.0, phi=0.0):
    yy, xx = np.mgrid[-half:half + 1, -half:half + 1].astype(float)
    x, y = xx - dx, yy - dy
    xr, yr = math.cos(phi) * x + math.sin(phi) * y, -math.sin(phi) * x + math.cos(phi) * y
    return np.sqrt(q * xr**2 + yr**2 / q)


def test_sersic_b_matches_published_values():
    # Ciotti & Bertin (1999): b_1 = 1.678347, b_4 = 7.669249
    assert sersic_b_n(1.0) == pytest.approx(1.678347, abs=2e-6)
    assert sersic_b_n(4.0) == pytest.approx(7.669249, abs=2e-6)


@pytest.mark.parametrize("n, r_eff, q, phi", [(4.0, 0.8, 1.0, 0.0), (4.0, 2.5, 0.6, 0.7), (1.0, 0.3, 0.5, 2.0)])
def test_sersic_render_encloses_the_analytic_light(n, r_eff, q, phi):
    """Light inside elliptical radius R = gammainc(2n, b (R/r_eff)^(1/n)) of the total (exact for any q)."""
    e1, e2 = (1 - q) / (1 + q) * math.cos(2 * phi), (1 - q) / (1 + q) * math.sin(2 * phi)
    half = int(12 * r_eff / PS)
    img = skysim.render_sersic(10.0, r_eff, n, e1, e2, 0.31, -0.22, half, PS)
    radius_arcsec = _radius_pix(half, 0.31, -0.22, q, phi) * PS
    # apertures of >= 10 px radius, so counting whole pixels by their centres is a fair integral
    radii = [r for r in (10 * PS, 1.0 * r_eff, 3.0 * r_eff, 8.0 * r_eff) if r >= 10 * PS]
    for radius in radii:
        expected = 10.0 * gammainc(2 * n, sersic_b_n(n) * (radius / r_eff) ** (1 / n))
        # tolerance: aperture-edge pixelisation + 2x/15x supersampling of the cusp; measured <= 0.12 %
        assert img[radius_arcsec < radius].sum() == pytest.approx(expected, rel=3e-3)


def test_sersic_centre_follows_the_sub_pixel_offset():
    img = skysim.render_sersic(1.0, 1.0, 4.0, 0.0, 0.0, 0.4, -0.3, 15, PS)
    yy, xx = np.mgrid[-15:16, -15:16]
    # the centroid of a symmetric profile is its centre; truncation at +-15 px biases it < 0.05 px
    assert (img * xx).sum() / img.sum() == pytest.approx(0.4, abs=0.05)
    assert (img * yy).sum() / img.sum() == pytest.approx(-0.3, abs=0.05)


def test_moffat_render_encloses_the_analytic_light():
    fwhm, beta = 1.3, 3.5
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    img = skysim.render_moffat(5.0, fwhm, 0.2, 0.1, 30, beta, PS)
    r = _radius_pix(30, 0.2, 0.1) * PS
    for radius in (3.0, 5.0, 7.0):                      # >= 11 px: pixel-centre counting is fair
        expected = 5.0 * (1 - (1 + radius**2 / alpha**2) ** (1 - beta))   # analytic Moffat curve of growth
        assert img[r < radius].sum() == pytest.approx(expected, rel=5e-3)


def test_noise_equivalent_area_of_a_gaussian_point_source():
    """NEA = 4 pi sigma^2 for a well-sampled Gaussian (sum of p^2 = 1 / (4 pi sigma^2))."""
    sigma_pix = 2.2
    kernel = gaussian_kernel(sigma_pix * PS * 2.3548200450309493, PS, size=41)
    nea = skysim.noise_equivalent_area_pix(0.0 + 1.0, PS, r_eff_arcsec=0.0, psf=kernel)
    # pixel integration widens the Gaussian by 1/12 px^2 in variance: 4 pi (sigma^2 + 1/12)
    assert nea == pytest.approx(4 * math.pi * (sigma_pix**2 + 1 / 12), rel=5e-3)


def test_pixel_sigma_gives_the_depth_by_monte_carlo():
    """A matched-filter flux of the depth galaxy in pure noise of sigma_pix scatters by flux_5sigma / 5."""
    fwhm, depth = 1.3, 23.4
    sigma_pix = skysim.pixel_sigma_for_depth(depth, fwhm, PS)
    kernel = moffat_kernel(fwhm, PS, beta=3.5, max_size=101)
    from scipy.signal import fftconvolve

    gal = skysim.render_sersic(1.0, 0.45, 1.0, 0.0, 0.0, 0.0, 0.0, 20, PS)
    p = fftconvolve(gal, kernel, mode="full")
    p /= p.sum()
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((4000,) + p.shape) * sigma_pix
    flux_hat = (noise * p).sum(axis=(1, 2)) / (p * p).sum()        # optimal linear estimator
    # 4000 draws: the sample std is within 3.4 % (3 sigma) of the truth
    assert flux_hat.std() == pytest.approx(mag_to_nmgy(depth) / 5.0, rel=0.034)
    assert 0.004 < sigma_pix < 0.012                                # DR10 r coadds: ~0.006-0.01 nmgy


SMALL = skysim_scene.SkyConfig(size_pix=300, n_lrg=6, n_field=30, n_star=6, n_bright_star=1, gap_probability=1.0)


@pytest.fixture(scope="module")
def brick():
    return skysim.simulate_brick("1501p020", SMALL, seed=3)


def test_brick_is_deterministic_and_seeded(brick):
    again = skysim.simulate_brick("1501p020", SMALL, seed=3)
    other = skysim.simulate_brick("1501p020", SMALL, seed=4)
    for b in "grz":
        assert np.array_equal(again.image[b], brick.image[b]) and np.array_equal(again.invvar[b], brick.invvar[b])
        assert not np.array_equal(other.image[b], brick.image[b])
    assert np.array_equal(again.maskbits, brick.maskbits)


def test_maps_have_dr10_like_values(brick):
    for b in "grz":
        img, iv, fwhm = brick.image[b], brick.invvar[b], brick.psfsize[b]
        assert img.dtype == iv.dtype == fwhm.dtype == np.float32 and img.shape == (300, 300)
        assert np.all(np.isfinite(img)) and np.all(np.isfinite(iv)) and np.all(iv >= 0)
        nominal = skysim.FWHM_NOMINAL_ARCSEC[b]
        assert fwhm.min() >= 0.85 * nominal - 1e-6 and fwhm.max() <= 1.15 * nominal + 1e-6
        assert np.abs(np.diff(fwhm, axis=1)).max() < 0.01 * nominal             # smooth: < 1 % per pixel
        sigma = 1 / np.sqrt(iv[iv > 0])
        nominal_sigma = skysim.pixel_sigma_for_depth(skysim.DEPTH_GAL_MAG[b], nominal, PS)
        assert np.all(np.abs(np.log10(sigma / nominal_sigma)) <= 0.4 * skysim.DEPTH_VARIATION_MAG + 1e-6)
    gap = brick.stats["gap"]
    strip = brick.invvar[gap["band"]][:, gap["x0_pix"]: gap["x0_pix"] + gap["width_pix"]]
    assert np.all(strip == 0) and np.all(brick.image[gap["band"]][:, gap["x0_pix"]] == 0)


def test_noise_matches_invvar_where_the_sky_is_empty():
    cfg = skysim_scene.SkyConfig(size_pix=400, n_lrg=0, n_field=0, n_star=0, n_bright_star=0, gap_probability=0.0)
    empty = skysim.simulate_brick("1501p020", cfg, seed=1)
    for b in "grz":
        pulls = empty.image[b] * np.sqrt(empty.invvar[b])
        # 160,000 unit normals: mean within 0.01 (4 sigma), std within 1 % (4 sigma = 0.7 %)
        assert abs(pulls.mean()) < 0.01 and pulls.std() == pytest.approx(1.0, abs=0.01)


def test_catalog_ranges_and_edge_lrgs(brick):
    o = brick.objects
    lrg = o["kind"] == "lrg"
    assert lrg.sum() == 6 and (o["kind"] == "galaxy").sum() == 30 and (o["kind"] == "star").sum() == 7
    assert np.all((o["mag_r"][lrg] >= 17.5) & (o["mag_r"][lrg] <= 20.5))
    gr, rz = o["mag_g"] - o["mag_r"], o["mag_r"] - o["mag_z"]
    assert np.all((gr[lrg] >= 1.5) & (gr[lrg] <= 1.9) & (rz[lrg] >= 0.8) & (rz[lrg] <= 1.1))
    assert np.all((o["r_eff_arcsec"][lrg] >= 0.8) & (o["r_eff_arcsec"][lrg] <= 3.0)) and np.all(o["n_sersic"][lrg] == 4)
    edge = o["near_edge"]
    dist = np.minimum.reduce([o["x_pix"], o["y_pix"], 299 - o["x_pix"], 299 - o["y_pix"]])
    assert edge.sum() == 1 and np.all(dist[edge] < 32)                       # a 64-px stamp falls off
    assert np.all(o["flux_r"] == mag_to_nmgy(o["mag_r"]))
    back = brick.wcs.all_world2pix(np.c_[o["ra"], o["dec"]], 0)
    np.testing.assert_allclose(back, np.c_[o["x_pix"], o["y_pix"]], atol=1e-6)


def test_bright_star_is_masked_and_saturated_without_nans(brick):
    o = brick.objects
    i = int(np.flatnonzero(o["kind"] == "star")[0])                          # the bright one comes first
    assert o["mag_r"][i] < 14.0
    x, y = int(round(o["x_pix"][i])), int(round(o["y_pix"][i]))
    bit = skysim_scene.MASKBITS["BRIGHT"] if o["mag_r"][i] < 13 else skysim_scene.MASKBITS["MEDIUM"]
    rad_pix = skysim_scene.mask_radius_arcsec(o["mag_r"][i]) / PS
    yy, xx = np.mgrid[0:300, 0:300]
    inside = (xx - o["x_pix"][i]) ** 2 + (yy - o["y_pix"][i]) ** 2 < (rad_pix - 1) ** 2
    assert np.all(brick.maskbits[inside] & bit)
    assert brick.maskbits[y, x] & skysim_scene.MASKBITS["SATUR_R"] and brick.maskbits[y, x] & skysim_scene.MASKBITS["ALLMASK_R"]
    assert brick.image["r"][y, x] == np.float32(skysim.SATURATION_NMGY["r"])
    assert brick.maskbits.dtype == np.int32 and not np.any(brick.maskbits & skysim_scene.MASKBITS["NPRIMARY"])


def test_bad_config_is_refused():
    from dhs_gen.errors import InvalidValueError

    with pytest.raises(InvalidValueError, match="size_pix"):
        skysim_scene.SkyConfig(size_pix=1201)
    with pytest.raises(InvalidValueError, match="n_lrg"):
        skysim_scene.SkyConfig(n_lrg=-1)
