"""Common utilities of the seed API: resampling, unit conversion and key hashing.

Hashing is the only source of randomness in the project: every stochastic kernel takes a
key (a ``task_id``) or a :class:`numpy.random.Generator` made from one by :func:`rng_for`,
so a row renders to the same bytes on any executor, in any partition, on any retry.
"""

from __future__ import annotations

import hashlib

import numpy as np
from scipy import ndimage

from dhs_gen.errors import InvalidValueError, check_range

_U64 = float(2**64)


def hash_uint64(key: str, salt: str = "") -> int:
    """Stable 64-bit unsigned integer from ``salt:key`` (blake2b; independent of PYTHONHASHSEED)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def uniform_from_hash(key: str, salt: str = "") -> float:
    """Deterministic float in [0, 1) from ``salt:key``."""
    return hash_uint64(key, salt) / _U64


def rng_for(key: str, salt: str = "") -> np.random.Generator:
    """A :class:`numpy.random.Generator` seeded from ``salt:key`` (128 bits of blake2b)."""
    digest = hashlib.blake2b(f"{salt}:{key}".encode(), digest_size=16).digest()
    return np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))


def categorical_from_hash(key: str, probs, salt: str = "") -> int:
    """Index drawn from the categorical distribution ``probs`` by hashing ``salt:key``.

    Parameters
    ----------
    key : str
        Deterministic key, e.g. a ``task_id``.
    probs : array-like of float
        Non-negative weights; normalised here, so they need not sum to exactly 1.
    salt : str
        Separates independent draws made from the same key.

    Returns
    -------
    int
        Index into ``probs``; the frequency of each index over many keys matches ``probs``.
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim != 1 or p.size == 0 or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise InvalidValueError("probs", p, "must be a non-empty 1-D array of finite weights >= 0 with a positive sum")
    cdf = np.cumsum(p / p.sum())
    u = uniform_from_hash(key, salt)
    return int(min(np.searchsorted(cdf, u, side="right"), p.size - 1))


def to_surface_brightness(img, pixscale_arcsec: float) -> np.ndarray:
    """Flux per pixel -> surface brightness (flux per arcsec^2).

    Parameters
    ----------
    img : array
        Image in flux per pixel (e.g. nanomaggies per pixel).
    pixscale_arcsec : float
        Pixel scale in arcsec per pixel.

    Returns
    -------
    ndarray
        ``img / pixscale_arcsec**2`` in flux per arcsec^2.
    """
    pixscale_arcsec = check_range("pixscale_arcsec", pixscale_arcsec, 0.0, np.inf, lo_open=True)
    return np.asarray(img, dtype=float) / pixscale_arcsec**2


def bilinear_resample(img, src_pixscale_arcsec: float, dst_pixscale_arcsec: float) -> np.ndarray:
    """Resample a flux-per-pixel image onto a grid of another pixel scale, conserving flux.

    The output has ``round(N * src / dst)`` pixels per axis (at least 1) and shares the image
    centre with the input (DESIGN grid convention). Values are bilinearly interpolated in
    surface brightness and converted back to flux per output pixel, so the total flux is
    conserved for well-sampled images. For strong downsampling (e.g. HST 0.03"/pix -> 0.262"/pix)
    point sampling aliases: use the area-weighted resampler instead (``dhs_gen.imaging.resample``).

    Parameters
    ----------
    img : array (H, W)
        Image in flux per pixel.
    src_pixscale_arcsec, dst_pixscale_arcsec : float
        Input and output pixel scales, arcsec per pixel.

    Returns
    -------
    ndarray (H', W'), float64, flux per output pixel.
    """
    img = np.asarray(img, dtype=float)
    if img.ndim != 2:
        raise InvalidValueError("img", img, "must be a 2-D image (H, W)")
    src = check_range("src_pixscale_arcsec", src_pixscale_arcsec, 0.0, np.inf, lo_open=True)
    dst = check_range("dst_pixscale_arcsec", dst_pixscale_arcsec, 0.0, np.inf, lo_open=True)
    h, w = img.shape
    ratio = dst / src  # input pixels per output pixel
    oh, ow = max(1, int(round(h / ratio))), max(1, int(round(w / ratio)))
    # output pixel centres expressed in input pixel-index coordinates, centres aligned
    yy = (np.arange(oh) - (oh - 1) / 2.0) * ratio + (h - 1) / 2.0
    xx = (np.arange(ow) - (ow - 1) / 2.0) * ratio + (w - 1) / 2.0
    gy, gx = np.meshgrid(yy, xx, indexing="ij")
    sampled = ndimage.map_coordinates(img, [gy, gx], order=1, mode="constant", cval=0.0)
    return sampled * ratio**2
