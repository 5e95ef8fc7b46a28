r"""Every convention of Dark Halo Scope, stated once, with formulas.

Angles on the sky
    Positions and lengths are in **arcsec** unless a name ends in ``_pix`` (pixels) or
    ``_rad`` (radians). Position angles ``phi`` are in radians, measured from the +x axis
    towards +y (counter-clockwise in the image as stored, x = columns, y = rows).

Pixel grid
    A stamp of N pixels per side has pixel centres at ``(i - (N - 1) / 2) * pixscale`` for
    ``i = 0 .. N-1``: the centre of the stamp is the origin (between two pixels when N is
    even, on a pixel centre when N is odd). x runs along axis 1 (columns), y along axis 0
    (rows); images are ``(H, W)`` or ``(bands, H, W)``. Supersampling by ``s`` places
    sub-pixel centres at ``((k + 0.5) / s - 0.5) * pixscale`` (k = 0 .. s-1) around each
    pixel centre, and a pixel's value is the mean over its s*s sub-pixels times the pixel
    area (flux per pixel = mean surface brightness * pixscale**2).

Ellipticity (lenstronomy's convention, which GalSim calls the reduced shear g)
    .. math:: e = \frac{1 - q}{1 + q}, \quad e_1 = e \cos 2\phi, \quad e_2 = e \sin 2\phi

    with axis ratio ``q = b / a`` in (0, 1]. Elliptical radius for SIE and Sersic profiles,
    in the frame rotated by ``phi``: ``R^2 = q x'^2 + y'^2 / q`` (area-preserving, so a
    Sersic ``r_eff`` is the geometric-mean half-light radius).

External shear (lenstronomy ``SHEAR``)
    ``gamma1, gamma2`` with deflection ``alpha_x = gamma1 x + gamma2 y``,
    ``alpha_y = gamma2 x - gamma1 y``, about the origin (not the lens centre).

Photometry
    Images are in **nanomaggies per pixel** (AB zeropoint 22.5):
    ``m = 22.5 - 2.5 log10(flux_nmgy)``; ``flux_nmgy = 10 ** ((22.5 - m) / 2.5)``.
    Surface brightness is in nanomaggies per arcsec^2; it never shares a name with a flux.

PSF kernels
    Odd-sized, centred on the middle pixel, non-negative, summing to 1. Convolution keeps
    that middle pixel fixed, so a point source at a pixel centre stays at that pixel centre.
"""

from __future__ import annotations

import math

import numpy as np

ZEROPOINT_AB = 22.5
"""AB magnitude of a source of 1 nanomaggy."""

PIXSCALE_DR10_ARCSEC = 0.262
"""DESI Legacy Surveys DR10 coadd pixel scale, arcsec per pixel."""

DR10_BANDS = "grz"


def mag_to_nmgy(mag):
    """AB magnitude -> flux in nanomaggies (zeropoint 22.5)."""
    return 10.0 ** ((ZEROPOINT_AB - np.asarray(mag, dtype=float)) / 2.5)


def nmgy_to_mag(flux_nmgy):
    """Flux in nanomaggies -> AB magnitude (NaN for flux <= 0)."""
    f = np.asarray(flux_nmgy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(f > 0, ZEROPOINT_AB - 2.5 * np.log10(np.where(f > 0, f, 1.0)), np.nan)


def ellipticity_from_q_phi(q, phi_rad):
    """Axis ratio q = b/a in (0, 1] and position angle phi (rad) -> (e1, e2)."""
    q = np.asarray(q, dtype=float)
    e = (1.0 - q) / (1.0 + q)
    return e * np.cos(2.0 * np.asarray(phi_rad)), e * np.sin(2.0 * np.asarray(phi_rad))


def q_phi_from_ellipticity(e1, e2):
    """(e1, e2) -> (q, phi_rad), the inverse of :func:`ellipticity_from_q_phi`.

    Python numbers (numpy float64 scalars included) give floats through ``math``, 5x faster than numpy on scalars
    (every lens and source of a render asks); anything else gives numpy results. ``math.hypot`` and ``np.hypot``
    may differ in the last bit.
    """
    if isinstance(e1, (float, int)) and isinstance(e2, (float, int)):
        e = math.hypot(e1, e2)
        return (1.0 - e) / (1.0 + e), 0.5 * math.atan2(e2, e1)
    e = np.hypot(e1, e2)
    phi = 0.5 * np.arctan2(e2, e1)
    return (1.0 - e) / (1.0 + e), phi


def elliptical_r2_grid(ys: np.ndarray, xs: np.ndarray, q: float, phi_rad: float) -> np.ndarray:
    """``R^2 = q x'^2 + y'^2 / q`` (the elliptical radius above) on the grid of row coordinates ``ys`` x column
    coordinates ``xs`` (any length unit): (len(ys), len(xs)) float64.

    In the unrotated frame ``R^2`` is the quadratic form ``a x^2 + 2 b x y + c y^2``, so the grid costs three
    broadcast operations instead of a meshgrid, a rotation and the products.
    """
    c, s = math.cos(phi_rad), math.sin(phi_rad)
    a, b, cc = q * c * c + s * s / q, c * s * (q - 1.0 / q), q * s * s + c * c / q
    r2 = np.multiply.outer(ys, (2.0 * b) * xs)
    r2 += (cc * ys * ys)[:, None]
    r2 += (a * xs * xs)[None, :]
    return r2


def make_antisymmetric(axis: np.ndarray) -> np.ndarray:
    """``axis`` (sample coordinates symmetric about 0 up to rounding) with its second half set, in place, to its
    first half negated and reversed: exactly antisymmetric, so a profile of the elliptical radius on a grid of
    such axes is point-symmetric to the bit and half of it can be turned by 180 degrees instead of evaluated."""
    m = axis.size
    axis[m - m // 2:] = -axis[:m // 2][::-1]
    return axis


def pixel_centers_arcsec(n_pix: int, pixscale_arcsec: float) -> np.ndarray:
    """1-D pixel-centre coordinates (arcsec) of an ``n_pix`` grid centred on the origin."""
    return (np.arange(n_pix, dtype=float) - (n_pix - 1) / 2.0) * pixscale_arcsec


def subpixel_offsets_arcsec(supersample: int, pixscale_arcsec: float) -> np.ndarray:
    """1-D offsets (arcsec) of the ``supersample`` sub-pixel centres around a pixel centre."""
    k = np.arange(supersample, dtype=float)
    return ((k + 0.5) / supersample - 0.5) * pixscale_arcsec


def pixel_grid_arcsec(n_pix: int, pixscale_arcsec: float, supersample: int = 1):
    """2-D (x, y) coordinates (arcsec) of all (sub-)pixel centres of a square stamp.

    Returns arrays of shape ``(n_pix * s, n_pix * s)`` ordered so that
    :func:`block_mean` averages each pixel's sub-pixels.
    """
    c = pixel_centers_arcsec(n_pix, pixscale_arcsec)
    o = subpixel_offsets_arcsec(supersample, pixscale_arcsec)
    axis = (c[:, None] + o[None, :]).ravel()
    x, y = np.meshgrid(axis, axis)  # x varies along columns (axis 1), y along rows (axis 0)
    return x, y


def block_mean(values: np.ndarray, n_rows: int, n_cols: int, supersample: int) -> np.ndarray:
    """Mean of each pixel's ``supersample x supersample`` sub-pixels: (..., n_rows * s, n_cols * s) -> (..., n_rows, n_cols).

    The sub-pixel order of :func:`pixel_grid_arcsec`; leading axes are images averaged alike. Equal to
    ``reshape(n_rows, s, n_cols, s).mean(axis=(1, 3))`` up to the order of the additions (~1e-16 relative),
    and 5-10x faster: numpy reduces two strided axes of a 4-D view one element at a time, while here the
    row sub-axis is a contiguous reduction and the column sub-axis ``s`` strided additions of whole pixel rows.
    """
    s = int(supersample)
    lead = values.shape[:-2]
    rows_summed = values.reshape(*lead, n_rows, s, n_cols * s).sum(axis=-2).reshape(*lead, n_rows, n_cols, s)
    out = rows_summed[..., 0].copy()
    for j in range(1, s):
        out += rows_summed[..., j]
    out /= s * s
    return out
