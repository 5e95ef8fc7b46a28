"""Measurements of a galaxy image (flux per pixel): border statistics, centroid, half-light radius, clumpiness.

Definitions (all on background-subtracted images):

* background: median of the outer border ring (``BORDER_PIX`` wide).
* noise: Gaussian-equivalent sigma from the median absolute deviation (:func:`robust_sigma`).
* centroid: flux-weighted first moment inside a circle of 3 half-light radii, iterated from the
  peak of the smoothed image (:func:`flux_weighted_centroid`).
* half-light radius (arcsec): circular-aperture growth curve about that centroid (sep's exact
  sub-pixel aperture sums), radius enclosing half of the stamp's total flux, as SExtractor's
  ``FLUX_RADIUS``.
* clumpiness S in [0, 1] (Conselice 2003, background-corrected): residual ``R = I - G(I)`` with
  ``G`` a Gaussian of sigma ``max(1 pix, 0.25 hlr)``; ``S = (sum R+ - N sigma_R / sqrt(2 pi)) /
  sum I+`` over pixels at ``0.25 hlr < r < 2 hlr``, where ``sigma_R`` is the residual noise on
  the border (the second term is the expected positive part of pure noise); clipped to [0, 1].
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import sep
from scipy import ndimage

from dhs_gen.errors import check_range

BORDER_PIX = 4
"""Width (pixels) of the border ring whose median is the background."""

MAD_TO_SIGMA = 1.4826
"""sigma / MAD of a Gaussian."""


@lru_cache(maxsize=32)
def border_index(h: int, w: int, width: int) -> np.ndarray:
    """Flat pixel indices (into ``H*W``) of the outer frame ``width`` pixels wide. Read-only.

    Order: the top rows, the bottom rows, then the left and right columns between them
    (callers that subsample the frame or sum over it depend on this order).
    """
    grid = np.arange(h * w).reshape(h, w)
    parts = [grid[:width, :], grid[h - width:, :], grid[width:h - width, :width],
             grid[width:h - width, w - width:]]
    idx = np.concatenate([p.ravel() for p in parts])
    idx.setflags(write=False)
    return idx


def border_frame(images: np.ndarray, width: int = BORDER_PIX) -> np.ndarray:
    """``(..., H, W) -> (..., M)``: the pixels of the outer frame ``width`` pixels wide, in :func:`border_index` order."""
    a = np.asarray(images)
    h, w = a.shape[-2:]
    return np.take(a.reshape(*a.shape[:-2], h * w), border_index(h, w, width), axis=-1)


def border_pixels(image: np.ndarray, width: int = BORDER_PIX) -> np.ndarray:
    """1-D array of the pixels in the outer ring of ``width`` pixels of a 2-D image, row-major order.

    The width is capped at ``min(H, W) // 4`` (at least 1) so small stamps keep a centre.
    """
    img = np.asarray(image)
    h, w = img.shape
    width = max(1, min(width, min(h, w) // 4))
    return img.reshape(-1)[np.unique(border_index(h, w, width))]


def robust_sigma(values: np.ndarray, axis: int | None = None):
    """Gaussian-equivalent standard deviation from the median absolute deviation.

    Over all values (a float) by default, else along ``axis`` (an array without that axis).
    """
    v = np.asarray(values, dtype=float)
    s = MAD_TO_SIGMA * np.median(np.abs(v - np.median(v, axis=axis, keepdims=True)), axis=axis)
    return float(s) if axis is None else s


def flux_weighted_centroid(image, n_iter: int = 4, radius_hlr: float = 3.0) -> tuple[float, float]:
    """Flux-weighted centroid ``(x, y)`` in pixel indices (x = column) of a galaxy stamp.

    First moment of the image inside a circle of ``radius_hlr`` half-light radii (at least 3
    pixels), iterated ``n_iter`` times: start at the peak of the sigma-1.5-pixel smoothed image
    with a circle of ``min(H, W) / 4`` pixels, then re-centre and re-measure the half-light
    radius each time. The circle keeps stamp-edge neighbours and most sky noise out; the
    weights are not clipped at 0, so symmetric noise does not pull the centroid.
    """
    img = np.asarray(image, dtype=float)
    smooth = ndimage.gaussian_filter(img, 1.5)
    yy, xx = np.indices(img.shape, dtype=float)
    y0, x0 = (float(v) for v in np.unravel_index(np.argmax(smooth), img.shape))
    radius = max(3.0, min(img.shape) / 4.0)
    for _ in range(n_iter):
        wgt = img * (((xx - x0) ** 2 + (yy - y0) ** 2) <= radius**2)
        if not wgt.sum() > 0:
            break
        x0, y0 = float((wgt * xx).sum() / wgt.sum()), float((wgt * yy).sum() / wgt.sum())
        hlr_pix = half_light_radius(img, 1.0, (x0, y0))
        if not math.isfinite(hlr_pix):
            break
        radius = max(3.0, radius_hlr * hlr_pix)
    return x0, y0


def half_light_radius(image, pixscale_arcsec: float, center_pix=None) -> float:
    """Radius (arcsec) of the circle about ``center_pix`` enclosing half the stamp's total flux.

    Parameters
    ----------
    image : array (H, W)
        Background-subtracted flux per pixel; its sum is the total flux.
    pixscale_arcsec : float
        Arcsec per pixel.
    center_pix : (x, y) pixel indices, optional
        Default :func:`flux_weighted_centroid`.

    Returns
    -------
    float, arcsec (NaN when the total flux is not positive).
    """
    img = np.array(image, dtype=np.float64, order="C")  # sep needs a writable C array
    pixscale_arcsec = check_range("pixscale_arcsec", pixscale_arcsec, 0.0, math.inf, lo_open=True)
    total = float(img.sum())
    if not total > 0:
        return math.nan
    x0, y0 = center_pix if center_pix is not None else flux_weighted_centroid(img)
    h, w = img.shape
    rmax = math.hypot(max(x0, w - 1 - x0), max(y0, h - 1 - y0)) + 1.0
    r, _flag = sep.flux_radius(img, np.array([x0]), np.array([y0]), np.array([rmax]), 0.5,
                               normflux=np.array([total]), subpix=5)
    return float(r[0]) * pixscale_arcsec


def clumpiness(image, hlr_pix: float, center_pix) -> float:
    """Background-corrected Conselice smoothness S in [0, 1]; see the module docstring."""
    img = np.asarray(image, dtype=float)
    if not (hlr_pix > 0 and math.isfinite(hlr_pix)):
        return math.nan
    resid = img - ndimage.gaussian_filter(img, max(1.0, 0.25 * hlr_pix))
    yy, xx = np.indices(img.shape, dtype=float)
    r = np.hypot(xx - center_pix[0], yy - center_pix[1])
    ann = (r > 0.25 * hlr_pix) & (r < 2.0 * hlr_pix)
    denom = float(np.clip(img[ann], 0, None).sum())
    if denom <= 0:
        return math.nan
    noise = robust_sigma(border_pixels(resid)) / math.sqrt(2.0 * math.pi) * ann.sum()
    return float(np.clip((np.clip(resid[ann], 0, None).sum() - noise) / denom, 0.0, 1.0))
