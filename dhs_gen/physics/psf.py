"""PSF kernels: Gaussian and Moffat, optionally elliptical; odd-sized, centred, unit sum.

Kernels are pixel-integrated (each pixel is the mean of ``oversample**2`` point samples) so
that a narrow PSF still sums to 1 without losing its core. Ellipticity uses the project's
convention (:mod:`dhs_gen.conventions`): ``R^2 = q x'^2 + y'^2 / q`` in the frame rotated by
``phi``, which keeps the FWHM of the circularised profile equal to ``fwhm``.
"""

from __future__ import annotations

import math

import numpy as np

from dhs_gen.conventions import block_mean, elliptical_r2_grid, make_antisymmetric, q_phi_from_ellipticity
from dhs_gen.errors import InvalidValueError, RangeError, check_range

DEFAULT_MAX_KERNEL_SIZE = 63
_SIZE_IN_FWHM = {"gaussian": 2.0, "moffat": 2.5}  # kernel half-width in units of FWHM


def default_kernel_size(fwhm_arcsec: float, pixscale_arcsec: float, profile: str = "moffat",
                        max_size: int = DEFAULT_MAX_KERNEL_SIZE) -> int:
    """Odd kernel size (pixels) covering ``±k*FWHM`` (k=2 Gaussian, 2.5 Moffat), capped at ``max_size``."""
    half = int(math.ceil(_SIZE_IN_FWHM[profile] * fwhm_arcsec / pixscale_arcsec))
    return cap_kernel_size(2 * half + 1, max_size)


def cap_kernel_size(size: int, max_size: int) -> int:
    """Largest odd size <= both ``size`` and ``max_size`` (at least 1)."""
    size = min(int(size), int(max_size))
    if size % 2 == 0:
        size -= 1
    return max(size, 1)


def _profile_samples(size: int, pixscale_arcsec: float, oversample: int, e1: float, e2: float, profile) -> np.ndarray:
    """``profile(R^2)`` (in place on an R^2 array, arcsec^2) at the ``oversample x oversample`` point samples of
    every kernel pixel, in the sub-pixel order :func:`dhs_gen.conventions.block_mean` averages.

    An elliptical profile is point-symmetric about the kernel centre and so is the sample grid (its axis
    goes through :func:`dhs_gen.conventions.make_antisymmetric`), so only the first half of the rows is
    evaluated and the rest is that half turned by 180 degrees: identical values at half the cost.
    """
    n = size * oversample
    axis = make_antisymmetric(((np.arange(n) + 0.5) / oversample - size / 2.0) * pixscale_arcsec)
    q, phi = q_phi_from_ellipticity(e1, e2)
    h = n - n // 2
    half = profile(elliptical_r2_grid(axis[:h], axis, float(q), float(phi)))
    out = np.empty((n, n))
    out[:h] = half
    out[h:] = half[:n - h][::-1, ::-1]
    return out


def _validate_common(fwhm_arcsec, pixscale_arcsec, e1, e2, size, max_size, oversample):
    check_range("fwhm_arcsec", fwhm_arcsec, 0.0, math.inf, lo_open=True)
    check_range("oversample", oversample, 1, 64, integer=True)
    check_range("pixscale_arcsec", pixscale_arcsec, 0.0, math.inf, lo_open=True)
    check_range("e1", e1, -1.0, 1.0, lo_open=True, hi_open=True)
    check_range("e2", e2, -1.0, 1.0, lo_open=True, hi_open=True)
    if math.hypot(e1, e2) >= 1.0:
        raise RangeError("|e|", math.hypot(e1, e2), 0.0, 1.0, hi_open=True)
    check_range("max_size", max_size, 1, 10_001)
    if size is not None:
        if int(size) != size or size < 1 or size % 2 == 0:
            raise InvalidValueError("size", size, "kernel size must be a positive odd integer")


def _finish(profile_values, size, oversample):
    k = block_mean(profile_values, size, size, oversample)
    return k / k.sum()


def gaussian_kernel(fwhm_arcsec: float, pixscale_arcsec: float, e1: float = 0.0, e2: float = 0.0,
                    size: int | None = None, max_size: int = DEFAULT_MAX_KERNEL_SIZE,
                    oversample: int = 5) -> np.ndarray:
    """Pixel-integrated Gaussian PSF kernel.

    Parameters
    ----------
    fwhm_arcsec : float
        Full width at half maximum, arcsec (> 0).
    pixscale_arcsec : float
        Pixel scale, arcsec per pixel.
    e1, e2 : float
        Ellipticity (lenstronomy convention), |e| < 1.
    size : int, optional
        Odd kernel size in pixels; default covers ±2 FWHM. Capped at ``max_size``.
    max_size : int
        Largest allowed size (pixels); an even cap is reduced to the odd size below it.
    oversample : int
        Point samples per pixel per axis used to integrate the profile over each pixel.

    Returns
    -------
    ndarray (size, size), float64, sums to 1, centred on the middle pixel.
    """
    _validate_common(fwhm_arcsec, pixscale_arcsec, e1, e2, size, max_size, oversample)
    size = cap_kernel_size(size or default_kernel_size(fwhm_arcsec, pixscale_arcsec, "gaussian", max_size), max_size)
    sigma = fwhm_arcsec / (2.0 * math.sqrt(2.0 * math.log(2.0)))
    def profile(r2):
        r2 *= -0.5 / sigma**2
        return np.exp(r2, out=r2)

    return _finish(_profile_samples(size, pixscale_arcsec, oversample, e1, e2, profile), size, oversample)


def moffat_kernel(fwhm_arcsec: float, pixscale_arcsec: float, beta: float = 3.5, e1: float = 0.0,
                  e2: float = 0.0, size: int | None = None, max_size: int = DEFAULT_MAX_KERNEL_SIZE,
                  oversample: int = 5) -> np.ndarray:
    """Pixel-integrated Moffat PSF kernel, ``I(r) ∝ (1 + (r/alpha)^2)^-beta``.

    ``alpha = fwhm / (2 sqrt(2^(1/beta) - 1))``. Parameters as :func:`gaussian_kernel`, plus

    beta : float
        Moffat power index (> 1; DR10 PSFs are well described by beta ~ 3.5).

    Returns
    -------
    ndarray (size, size), float64, sums to 1 over the (truncated) kernel, centred.
    """
    _validate_common(fwhm_arcsec, pixscale_arcsec, e1, e2, size, max_size, oversample)
    check_range("beta", beta, 1.0, 100.0, lo_open=True)
    size = cap_kernel_size(size or default_kernel_size(fwhm_arcsec, pixscale_arcsec, "moffat", max_size), max_size)
    alpha = fwhm_arcsec / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    def profile(r2):
        r2 *= 1.0 / alpha**2
        np.log1p(r2, out=r2)   # (1 + r^2/alpha^2)^-beta as exp(-beta log1p(.)): two vectorised calls instead of a pow
        r2 *= -beta
        return np.exp(r2, out=r2)

    return _finish(_profile_samples(size, pixscale_arcsec, oversample, e1, e2, profile), size, oversample)


PSF_PROFILES = {"gaussian": gaussian_kernel, "moffat": moffat_kernel}


def make_psf(profile: str, fwhm_arcsec: float, pixscale_arcsec: float, **kwargs) -> np.ndarray:
    """Kernel by profile name (``gaussian`` | ``moffat``); kwargs as the profile function."""
    if profile not in PSF_PROFILES:
        raise InvalidValueError("psf profile", profile, f"must be one of {sorted(PSF_PROFILES)}")
    return PSF_PROFILES[profile](fwhm_arcsec, pixscale_arcsec, **kwargs)


def validate_psf_kernel(psf, name: str = "psf", rtol: float = 1e-6) -> np.ndarray:
    """Return ``psf`` as float64 if it is a finite, non-negative, odd, square kernel summing to 1.

    Raises :class:`InvalidValueError` naming what is wrong (even size, sum != 1, ...).
    """
    k = np.asarray(psf, dtype=float)
    if k.ndim != 2 or k.shape[0] != k.shape[1]:
        raise InvalidValueError(name, k, "PSF kernel must be a square 2-D array")
    if k.shape[0] % 2 == 0:
        raise InvalidValueError(name, k, f"PSF kernel size must be odd (got {k.shape[0]}) so its centre is a pixel")
    s = float(k.sum())   # a NaN or infinite pixel makes the sum non-finite: one pass checks both
    if not math.isfinite(s) and not np.isfinite(k).all():
        raise InvalidValueError(name, k, "PSF kernel must be finite")
    if k.min() < 0:
        raise InvalidValueError(name, k, "PSF kernel must be non-negative")
    if abs(s - 1.0) > rtol:
        raise InvalidValueError(name, k, f"PSF kernel must sum to 1 within {rtol:g} (sum={s:.8g})")
    return k


def fwhm_of_kernel(psf, pixscale_arcsec: float) -> float:
    """Circularised FWHM (arcsec) of a kernel from the area above half maximum: 2 sqrt(A / pi)."""
    k = np.asarray(psf, dtype=float)
    area_pix = float((k >= 0.5 * k.max()).sum())
    return 2.0 * math.sqrt(area_pix / math.pi) * pixscale_arcsec
