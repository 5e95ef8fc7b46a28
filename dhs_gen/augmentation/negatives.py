"""Hard negatives and core masking (Gen5-Prime shortcut mitigation, seed 000).

* :func:`azimuthal_shuffle` destroys arc morphology but keeps the radial light profile: the
  pixels of each annulus around the centre are permuted at random (one permutation shared by
  all bands, so every pixel keeps its colour). The multiset of values in each annulus is
  unchanged, hence annular sums, the radial profile and the total flux are preserved.
* :func:`core_mask` / :func:`core_dropout` hide the central disc, one definition shared by the
  training reader (core dropout), the hard negatives and the leakage gates.

Pixel coordinates follow the DESIGN grid: the stamp centre is ``((H-1)/2, (W-1)/2)`` in
(row, column) pixel indices; radii are in pixels.
"""

from __future__ import annotations

import math

import numpy as np

from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.utils import rng_for

_SALT = "hardneg_azimuthal_shuffle_v1"


def _radius_pix(h: int, w: int, center) -> np.ndarray:
    cy, cx = ((h - 1) / 2.0, (w - 1) / 2.0) if center is None else (float(center[0]), float(center[1]))
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(yy - cy, xx - cx)


def annulus_index(h: int, w: int, center=None, n_bins: int | None = None) -> np.ndarray:
    """Annulus number of every pixel, shape (h, w), int.

    Parameters
    ----------
    h, w : int
        Stamp size, pixels.
    center : (float, float), optional
        (row, column) of the centre in pixel indices; default the stamp centre.
    n_bins : int, optional
        Number of equal-width annuli from radius 0 to the farthest pixel centre; default
        (None) annuli 1 pixel wide: annulus ``floor(r)``.

    Returns
    -------
    ndarray (h, w) of int in [0, n_annuli).
    """
    r = _radius_pix(h, w, center)
    if n_bins is None:
        return np.floor(r).astype(np.int64)
    if int(n_bins) != n_bins or n_bins < 1:
        raise InvalidValueError("n_bins", n_bins, "must be a positive integer or None (1-pixel annuli)")
    r_max = float(r.max())
    if r_max == 0.0:
        return np.zeros((h, w), dtype=np.int64)
    return np.minimum((r / r_max * n_bins).astype(np.int64), int(n_bins) - 1)


def azimuthal_shuffle(arc_image, key: str, center=None, n_bins: int | None = None) -> np.ndarray:
    """Permute pixels within annuli around the centre: same radial profile, no arc.

    Parameters
    ----------
    arc_image : array (H, W) or (B, H, W)
        Image in flux per pixel (e.g. an injected arc, or the arc-plus-host stamp).
    key : str
        Deterministic key (``task_id``); the same key gives the same permutation.
    center : (float, float), optional
        (row, column) of the centre in pixel indices; default ``((H-1)/2, (W-1)/2)``.
    n_bins : int, optional
        Number of equal-width annuli; default annuli 1 pixel wide (see :func:`annulus_index`).

    Returns
    -------
    ndarray, same shape and dtype as ``arc_image``: every annulus holds the same values as
    in the input (so its sum, and the total flux, are preserved), in a random order that is
    the same for all bands.
    """
    img = np.asarray(arc_image)
    if img.ndim not in (2, 3) or img.size == 0:
        raise InvalidValueError("arc_image", img, "must be a non-empty (H, W) or (B, H, W) array")
    h, w = img.shape[-2:]
    annulus = annulus_index(h, w, center, n_bins).ravel()
    rng = rng_for(str(key), _SALT)
    by_annulus = np.argsort(annulus, kind="stable")                  # pixel slots, grouped by annulus
    shuffled = np.lexsort((rng.random(annulus.size), annulus))        # same groups, random order inside
    flat = img.reshape(-1, h * w)
    out = np.empty_like(flat)
    out[:, by_annulus] = flat[:, shuffled]
    return out.reshape(img.shape)


def core_mask(H: int, W: int, radius_pix: float) -> np.ndarray:
    """Boolean (H, W) disc: pixel centres within ``radius_pix`` of ``((H-1)/2, (W-1)/2)``.

    Parameters
    ----------
    H, W : int
        Stamp size, pixels.
    radius_pix : float
        Disc radius, pixels (>= 0; 0 masks the centre pixel only when H and W are odd).

    Returns
    -------
    ndarray (H, W) of bool, True inside the disc.
    """
    for name, v in (("H", H), ("W", W)):
        if int(v) != v or v < 1:
            raise InvalidValueError(name, v, "stamp size must be a positive integer (pixels)")
    radius_pix = check_range("radius_pix", radius_pix, 0.0, math.inf)
    return _radius_pix(int(H), int(W), None) <= radius_pix


def core_dropout(image, radius_pix: float, fill: float = 0.0) -> np.ndarray:
    """Copy of ``image`` with the central disc set to ``fill`` (deterministic; the caller draws
    with its own generator whether to apply it).

    Parameters
    ----------
    image : array (..., H, W)
        Image(s) in flux per pixel; every leading plane (band, batch) is masked alike.
    radius_pix : float
        Disc radius, pixels (see :func:`core_mask`).
    fill : float
        Value written inside the disc, same unit as ``image``.

    Returns
    -------
    ndarray, same shape and dtype as ``image``.
    """
    img = np.array(image, copy=True)
    if img.ndim < 2:
        raise InvalidValueError("image", img, "must have at least 2 dimensions (..., H, W)")
    img[..., core_mask(img.shape[-2], img.shape[-1], radius_pix)] = fill
    return img
