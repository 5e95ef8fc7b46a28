"""Stamp preprocessing shared by training, scoring and the gates: robust normalisation, dihedral maps.

:func:`normalize_stamps` is the one normalisation every consumer applies (training reader, ``dhs
score``, leakage features, realism). It is :func:`border_stats` (a few hundred border pixels per
band) then :func:`apply_stats_`; the training reader calls the two on each 32-stamp piece of a
batch as it gathers it, and gets the same bits, because the same float32 operations run on the
same pixels.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.imaging.measure import MAD_TO_SIGMA, border_index

# Width (pixels) of the stamp border whose pixels set the background level and noise scale:
# 4 px (1.05") is 960 of 4096 pixels at 64x64, clear of arcs (theta_E <= 3" = 11.5 px from the
# centre, the frame starts 28 px out).
NORM_BORDER_PIX = 4
# Every other frame pixel: 480 samples per band at 64x64 (MAD to ~5%).
NORM_SAMPLE_STRIDE = 2


@lru_cache(maxsize=32)
def border_sample_index(h: int, w: int, border_pix: int) -> np.ndarray:
    """Flat pixel indices (into ``H*W``) of the border sample: every ``NORM_SAMPLE_STRIDE``-th pixel
    of the outer frame of ``border_pix`` pixels, in :func:`dhs_gen.imaging.measure.border_index`
    order. Read-only."""
    idx = border_index(h, w, border_pix)[::NORM_SAMPLE_STRIDE].copy()
    idx.setflags(write=False)
    return idx


def _as_batch(images) -> tuple[np.ndarray, bool]:
    x = np.asarray(images, dtype=np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise InvalidValueError("images", x, "must have shape (N, bands, H, W) or (bands, H, W)")
    return x, single


def border_stats(images, border_pix: int = NORM_BORDER_PIX) -> tuple[np.ndarray, np.ndarray]:
    """Background level and inverse noise scale of each stamp and band, from its border.

    Parameters
    ----------
    images : np.ndarray
        ``(N, B, H, W)`` stamps, nanomaggies per pixel.
    border_pix : int
        Width of the frame used for the statistics, pixels (< min(H, W) / 2).

    Returns
    -------
    (np.ndarray, np.ndarray)
        ``median`` (nanomaggies) and ``inv_scale`` (1 / (1.4826 MAD), per nanomaggy), float32,
        shape ``(N, B)``. Where the border MAD is 0 (a constant or zero-filled border)
        the whole band's MAD about its median is used, and where that is 0 too, the scale is 1.
    """
    x, _ = _as_batch(images)
    n, b, h, w = x.shape
    check_range("border_pix", border_pix, 1, (min(h, w) - 1) // 2)
    flat = x.reshape(n, b, h * w)
    frame = np.take(flat, border_sample_index(h, w, int(border_pix)), axis=-1)  # (N, B, M): border only
    # Full sorts: numpy's vectorised float sort beats two partitions at a few hundred elements.
    k = frame.shape[-1] // 2  # the (M//2)-th order statistic (NaNs sort last, as in a partition)
    frame.sort(axis=-1)
    med = frame[..., k].copy()
    np.abs(np.subtract(frame, med[..., None], out=frame), out=frame)
    frame.sort(axis=-1)
    scale = MAD_TO_SIGMA * frame[..., k]
    bad = ~(scale > 0)
    if bad.any():
        # Guard MAD = 0: fall back to the whole band, then to 1 (never divide by zero).
        r, bands = np.nonzero(bad)
        whole = flat[r, bands]
        kw = whole.shape[-1] // 2
        med_whole = np.partition(whole, kw, axis=-1)[:, kw]
        mad_whole = np.partition(np.abs(whole - med_whole[:, None]), kw, axis=-1)[:, kw]
        scale[r, bands] = np.where(mad_whole > 0, MAD_TO_SIGMA * mad_whole, 1.0)
    return med, (1.0 / scale).astype(np.float32)


def apply_stats_(images: np.ndarray, median: np.ndarray, inv_scale: np.ndarray) -> np.ndarray:
    """In place: ``images = (images - median) * inv_scale`` per stamp and band; non-finite -> 0 (the sky).

    ``images`` ``(N, B, H, W)`` float32, writable; ``median``, ``inv_scale`` ``(N, B)`` from
    :func:`border_stats`. Returns ``images``.
    """
    # torch's vectorised kernels: 3x faster than numpy's broadcast loops here (measured), and the
    # same IEEE float32 subtract and multiply, so the same bits (no fused multiply-add in eager mode).
    x = torch.from_numpy(images)
    x.sub_(torch.from_numpy(np.ascontiguousarray(median))[..., None, None])
    x.mul_(torch.from_numpy(np.ascontiguousarray(inv_scale))[..., None, None])
    # A float32 sum is non-finite when any term is (or, rarely, on overflow): one read pass, no
    # temporary; the exact per-pixel check runs only then.
    if not math.isfinite(float(x.sum())):
        x.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)
    return images


def normalize_stamps(images: np.ndarray, border_pix: int = NORM_BORDER_PIX) -> np.ndarray:
    """Robust per-stamp, per-band normalisation: ``(x - median) / (1.4826 * MAD)`` of the border.

    The median and MAD come from the outer frame of ``border_pix`` pixels (mostly sky; every
    other pixel of it, see ``NORM_SAMPLE_STRIDE``), so the output is in units of the background
    noise sigma with the sky at 0, insensitive to the host, the arc or a bright outlier. Where the
    border MAD is 0 (a constant or zero-filled border) the whole band's MAD about its median is
    used, and where that is 0 too, the scale is 1. Non-finite pixels become 0 (the background level).

    Parameters
    ----------
    images : np.ndarray
        ``(N, B, H, W)`` or ``(B, H, W)`` stamps in nanomaggies per pixel.
    border_pix : int
        Width of the frame used for the statistics, in pixels (< min(H, W) / 2).

    Returns
    -------
    np.ndarray
        float32 array of the input's shape, dimensionless (background sigma units). A new array;
        the input is not modified.
    """
    x, single = _as_batch(images)
    med, inv = border_stats(x, border_pix)
    out = apply_stats_(np.array(x, dtype=np.float32, copy=True), med, inv)
    return out[0] if single else out


def dihedral_view(image: np.ndarray, op: int) -> np.ndarray:
    """A view of ``image`` (``(..., H, W)``, H == W) under one of the 8 flips/90-degree rotations:
    ``op % 4`` quarter turns, then a left-right flip if ``op >= 4``."""
    # Slices and swapaxes, not np.rot90: the reader calls this once per stamp, and these cost a
    # fraction of a microsecond. Equal to np.rot90(image, op % 4, axes=(-2, -1)) (tested).
    k = op % 4
    if k == 1:
        t = image[..., :, ::-1].swapaxes(-2, -1)
    elif k == 2:
        t = image[..., ::-1, ::-1]
    elif k == 3:
        t = image[..., ::-1, :].swapaxes(-2, -1)
    else:
        t = image
    return t[..., ::-1] if op >= 4 else t


def augment_dihedral(images: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """Apply one of the 8 flips/90-degree rotations to each stamp, in place.

    Parameters
    ----------
    images : np.ndarray
        ``(N, B, H, W)`` with H == W (any unit; values are only moved).
    ops : np.ndarray
        ``(N,)`` ints in [0, 8), see :func:`dihedral_view`.

    Returns
    -------
    np.ndarray
        ``images``, transformed.
    """
    for op in range(1, 8):
        idx = np.flatnonzero(ops == op)
        if idx.size:
            images[idx] = dihedral_view(images[idx], op)
    return images


def dihedral_torch(images: torch.Tensor, ops: torch.Tensor) -> torch.Tensor:
    """Batched :func:`dihedral_view` on any device: stamp ``i`` under map ``ops[i]``; a new tensor.

    The training loop applies the reader's drawn maps here, on the training device (on a GPU
    the copies are free; in numpy on the reader's CPU they cost ~10 us a stamp, measured).
    """
    out = images.clone()
    ops = ops.cpu()  # indices found on the host: on a GPU, unique/nonzero would wait for the device
    for op in torch.unique(ops).tolist():
        if op == 0:
            continue
        idx = torch.nonzero(ops == op).flatten().to(images.device)
        t = torch.rot90(images.index_select(0, idx), op % 4, dims=(-2, -1))
        out[idx] = t.flip(-1) if op >= 4 else t
    return out
