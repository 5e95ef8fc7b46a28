"""PSF kernels: normalisation, centring, FWHM (measured), agreement with astropy's models."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from astropy.convolution import discretize_model
from astropy.modeling.functional_models import Gaussian2D, Moffat2D

from dhs_gen.conventions import q_phi_from_ellipticity
from dhs_gen.errors import InvalidValueError, RangeError
from dhs_gen.physics.psf import (
    default_kernel_size,
    fwhm_of_kernel,
    gaussian_kernel,
    make_psf,
    moffat_kernel,
    validate_psf_kernel,
)

PIX = 0.262


def _measured_fwhm_along_x(kernel, pixscale):
    """FWHM (arcsec) from the half-maximum crossings of the central row, linearly interpolated."""
    c = kernel.shape[0] // 2
    row = kernel[c] / kernel[c, c]
    right = c + np.argmax(row[c:] < 0.5)
    x0, x1 = right - 1, right
    cross = x0 + (row[x0] - 0.5) / (row[x0] - row[x1])
    return 2 * (cross - c) * pixscale


@pytest.mark.parametrize("profile", ["gaussian", "moffat"])
@pytest.mark.parametrize("fwhm", [0.9, 1.3, 2.0])
def test_kernels_sum_to_one_are_odd_and_centred(profile, fwhm):
    k = make_psf(profile, fwhm, PIX)
    assert k.shape[0] % 2 == 1 and k.shape[0] == k.shape[1]
    assert k.sum() == pytest.approx(1.0, abs=1e-12)
    yy, xx = np.mgrid[: k.shape[0], : k.shape[1]] - k.shape[0] // 2
    assert abs((k * xx).sum()) < 1e-12 and abs((k * yy).sum()) < 1e-12  # first moments, e = 0
    assert np.unravel_index(np.argmax(k), k.shape) == (k.shape[0] // 2,) * 2
    validate_psf_kernel(k)


@pytest.mark.parametrize("make", [lambda f, p: gaussian_kernel(f, p, size=201),
                                  lambda f, p: moffat_kernel(f, p, beta=2.5, size=201),
                                  lambda f, p: moffat_kernel(f, p, beta=4.765, size=201)])
def test_fwhm_matches_when_measured(make):
    fwhm = 1.2
    pixscale = fwhm / 40  # fine pixels: pixel integration widens the FWHM by ~(1/40)^2 / 12 relative
    k = make(fwhm, pixscale)
    # linear interpolation between samples 1/40 FWHM apart: < 1e-3 relative
    assert _measured_fwhm_along_x(k, pixscale) == pytest.approx(fwhm, rel=2e-3)
    # the area-above-half-maximum estimator, quantised to whole pixels: ~1/40 of the FWHM
    assert fwhm_of_kernel(k, pixscale) == pytest.approx(fwhm, rel=0.03)


@pytest.mark.parametrize("beta", [2.0, 3.5, 6.0])
def test_moffat_matches_astropy_moffat2d_and_its_fwhm(beta):
    fwhm, size = 1.3, 25
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    model = Moffat2D(amplitude=1.0, x_0=0.0, y_0=0.0, gamma=alpha / PIX, alpha=beta)
    assert model.fwhm * PIX == pytest.approx(fwhm, rel=1e-12)  # astropy's FWHM of the same alpha, beta
    half = size // 2
    ref = discretize_model(model, (-half, half + 1), (-half, half + 1), mode="oversample", factor=5)
    # both average 5x5 point samples per pixel at the same sub-pixel centres: equal to round-off
    np.testing.assert_allclose(moffat_kernel(fwhm, PIX, beta=beta, size=size), ref / ref.sum(), rtol=1e-10)


def test_gaussian_matches_astropy_gaussian2d():
    fwhm, size = 1.1, 21
    sigma_pix = fwhm / PIX / (2 * math.sqrt(2 * math.log(2)))
    half = size // 2
    ref = discretize_model(Gaussian2D(1.0, 0.0, 0.0, sigma_pix, sigma_pix), (-half, half + 1), (-half, half + 1),
                           mode="oversample", factor=5)
    np.testing.assert_allclose(gaussian_kernel(fwhm, PIX, size=size), ref / ref.sum(), rtol=1e-10)


@pytest.mark.parametrize("e1, e2, size, oversample", [(0.15, -0.08, 21, 5), (-0.05, 0.2, 25, 3), (0.1, 0.1, 21, 4)])
def test_elliptical_gaussian_matches_astropy_gaussian2d(e1, e2, size, oversample):
    """An elliptical kernel (evaluated on half its samples and turned by 180 degrees) against astropy's rotated
    Gaussian2D averaged over the same point samples: R^2 = q x'^2 + y'^2 / q means sigma / sqrt(q) along the
    major axis and sigma sqrt(q) along the minor one."""
    fwhm = 1.2
    sigma_pix = fwhm / PIX / (2 * math.sqrt(2 * math.log(2)))
    q, phi = q_phi_from_ellipticity(e1, e2)
    model = Gaussian2D(1.0, 0.0, 0.0, sigma_pix / math.sqrt(q), sigma_pix * math.sqrt(q), theta=phi)
    half = size // 2
    ref = discretize_model(model, (-half, half + 1), (-half, half + 1), mode="oversample", factor=oversample)
    k = gaussian_kernel(fwhm, PIX, e1=e1, e2=e2, size=size, oversample=oversample)
    np.testing.assert_allclose(k, ref / ref.sum(), rtol=1e-10, atol=1e-16)


def test_elliptical_kernel_is_elongated_along_its_position_angle():
    k = moffat_kernel(1.3, PIX, e1=0.2, size=31)  # phi = 0: major axis along x
    yy, xx = np.mgrid[:31, :31] - 15
    assert (k * xx**2).sum() > 1.2 * (k * yy**2).sum()
    k2 = moffat_kernel(1.3, PIX, e2=0.2, size=31)  # phi = 45 deg: positive x-y correlation
    assert (k2 * xx * yy).sum() > 0
    assert k.sum() == pytest.approx(1.0, abs=1e-12)


def test_default_size_is_odd_covers_the_core_and_is_capped():
    assert default_kernel_size(1.3, PIX, "moffat") == 2 * math.ceil(2.5 * 1.3 / PIX) + 1
    assert default_kernel_size(50.0, PIX, "moffat", max_size=40) == 39
    assert moffat_kernel(50.0, PIX, max_size=40).shape == (39, 39)


@pytest.mark.parametrize("kernel, what", [
    (np.full((4, 4), 1 / 16), "odd"), (np.full((3, 3), 0.2), "sum"), (np.array([[0.5, -0.1, 0.6]] * 1), "square"),
    (np.where(np.eye(3) > 0, np.nan, 0.0), "finite"), (np.diag([1.5, -1.0, 0.5]), "non-negative"),
])
def test_validate_rejects_bad_kernels_with_named_picklable_errors(kernel, what):
    with pytest.raises(InvalidValueError) as info:
        validate_psf_kernel(kernel, name="psf_r")
    assert "psf_r" in str(info.value) and what in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


@pytest.mark.parametrize("call, name", [
    (lambda: gaussian_kernel(0.0, PIX), "fwhm_arcsec"), (lambda: moffat_kernel(1.0, PIX, beta=1.0), "beta"),
    (lambda: moffat_kernel(1.0, float("nan")), "pixscale_arcsec"), (lambda: gaussian_kernel(1.0, PIX, size=4), "size"),
    (lambda: make_psf("airy", 1.0, PIX), "psf profile"), (lambda: moffat_kernel(1.0, PIX, oversample=0), "oversample"),
    (lambda: gaussian_kernel(1.0, PIX, oversample=2.5), "oversample"),
])
def test_bad_psf_parameters_raise_named_errors(call, name):
    with pytest.raises((RangeError, InvalidValueError)) as info:
        call()
    assert name in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
