"""Area-weighted (flux-conserving) resampling of flux-per-pixel images onto another pixel grid.

Pixels are uniform squares on the DESIGN grid (:mod:`dhs_gen.conventions`): a stamp of ``n``
pixels of side ``h`` has its edges at ``(i - n/2) h`` for ``i = 0..n``, so input and output
stamps share their centre unless a shift is asked for. Each output pixel receives the flux of
every input pixel in proportion to their exact overlap area (no aliasing when downsampling).
The 2-D overlap is separable, so a resampling is two matrix products. Flux is conserved to
float rounding when the output grid covers the input; pixels outside it are lost.
"""

from __future__ import annotations

import math

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, check_range


def overlap_fractions(n_src: int, src_pixscale: float, n_dst: int, dst_pixscale: float,
                      shift_arcsec: float = 0.0) -> np.ndarray:
    """(n_dst, n_src) fraction of each source pixel's width inside each destination pixel (1-D).

    Parameters
    ----------
    n_src, n_dst : int
        Source and destination sizes, pixels.
    src_pixscale, dst_pixscale : float
        Source and destination pixel scales, arcsec per pixel.
    shift_arcsec : float
        Source position (arcsec, relative to the source stamp centre) that lands on the
        destination stamp centre; 0 aligns the centres.

    Returns
    -------
    ndarray (n_dst, n_src) float64, dimensionless fractions in [0, 1]; a column sums to 1 when
    the destination covers that source pixel.
    """
    src = (np.arange(n_src + 1) - n_src / 2.0) * src_pixscale - shift_arcsec
    dst = (np.arange(n_dst + 1) - n_dst / 2.0) * dst_pixscale
    lo = np.maximum(dst[:-1, None], src[None, :-1])
    hi = np.minimum(dst[1:, None], src[None, 1:])
    return np.clip(hi - lo, 0.0, None) / src_pixscale


def area_weighted_resample(image, src_pixscale: float, dst_pixscale: float, out_shape: tuple[int, int],
                           center_arcsec=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Rebin flux-per-pixel images (..., H, W) onto an ``out_shape`` grid of another pixel scale.

    Parameters
    ----------
    image : array (..., H, W)
        Flux per input pixel (any unit, e.g. nanomaggies); leading axes (bands) are kept.
    src_pixscale, dst_pixscale : float
        Input and output pixel scales, arcsec per pixel.
    out_shape : (int, int)
        Output (rows, columns), pixels.
    center_arcsec : (x, y) in arcsec
        Input position, relative to the input stamp centre, that lands on the output stamp
        centre; ``(0, 0)`` keeps the centres aligned.

    Returns
    -------
    out : ndarray (..., H', W') float64
        Flux per output pixel (unit of ``image``).
    coverage : ndarray (H', W') float64
        Fraction of each output pixel's area covered by the input, in [0, 1].
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim < 2 or min(img.shape[-2:]) < 1:
        raise InvalidValueError("image", img, "must be a non-empty image (..., H, W)")
    src = check_range("src_pixscale", src_pixscale, 0.0, math.inf, lo_open=True)
    dst = check_range("dst_pixscale", dst_pixscale, 0.0, math.inf, lo_open=True)
    oh, ow = (int(check_range("out_shape", n, 1, 100_000)) for n in out_shape)
    cx, cy = (check_range("center_arcsec", c) for c in center_arcsec)
    wy = overlap_fractions(img.shape[-2], src, oh, dst, cy)
    wx = overlap_fractions(img.shape[-1], src, ow, dst, cx)
    out = wy @ img @ wx.T  # (H', H) @ (..., H, W) @ (W, W'): separable, two matmuls
    coverage = np.outer(wy.sum(1), wx.sum(1)) * (src / dst) ** 2
    return out, np.clip(coverage, 0.0, 1.0)


def resample_to_pixscale(image, src_pixscale: float, target_pixscale: float = PIXSCALE_DR10_ARCSEC,
                         out_size: int | None = None, center_arcsec=(0.0, 0.0)) -> np.ndarray:
    """Area-weighted resampling of a flux-per-pixel image onto another pixel grid.

    Parameters
    ----------
    image : array (H, W)
        Flux per input pixel (any unit).
    src_pixscale, target_pixscale : float
        Input and output pixel scales, arcsec per pixel.
    out_size : int, optional
        Output side, pixels. Default: the smallest grid covering the input, ``ceil(N src / dst)``
        per axis (flux then conserved to float rounding). A smaller grid crops (flux is lost).
    center_arcsec : (x, y) in arcsec
        Input position, relative to the input stamp centre (DESIGN grid), that lands on the
        output stamp centre; ``(0, 0)`` keeps the centres aligned.

    Returns
    -------
    ndarray (H', W') float64, flux per output pixel (same unit as ``image``).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 1:
        raise InvalidValueError("image", img, "must be a non-empty 2-D image (H, W)")
    src = check_range("src_pixscale", src_pixscale, 0.0, math.inf, lo_open=True)
    dst = check_range("target_pixscale", target_pixscale, 0.0, math.inf, lo_open=True)
    h, w = img.shape
    if out_size is None:
        oh, ow = (max(1, math.ceil(n * src / dst - 1e-9)) for n in (h, w))
    else:
        oh = ow = int(check_range("out_size", out_size, 1, 100_000))
    cx, cy = (check_range("center_arcsec", c) for c in center_arcsec)
    return area_weighted_resample(img, src, dst, (oh, ow), (cx, cy))[0]
