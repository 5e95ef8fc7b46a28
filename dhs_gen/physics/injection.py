"""Render lensed, PSF-convolved arcs: SIE+shear lens, Sersic or template sources, per band.

A stamp of ``stamp_size`` pixels is ray-shot on the DESIGN grid (:mod:`dhs_gen.conventions`),
supersampled ``supersample x supersample`` per pixel, averaged to flux per pixel (mean surface
brightness times the pixel area), then convolved with the band's odd, centred, unit-sum PSF
(``fftconvolve(mode="same")`` semantics: the middle kernel pixel maps a pixel onto itself).
Deflections are computed once per lens and shared by every band.

The ray shooting (adaptive supersampling, block culling, the batch mode that renders many
tasks at once) lives in :mod:`dhs_gen.physics.adaptive`; this module checks inputs, convolves and
picks the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import fft as sfft

from dhs_gen.errors import ChoiceError, InvalidValueError, check_range
from dhs_gen.physics import lenstronomy_engine
from dhs_gen.physics.adaptive import (
    DEFAULT_CULL_TOL,
    DEFAULT_REFINE_TOL,
    _band_map,
    _plan,
    _render_many_pairs,
)
from dhs_gen.physics.lensing import SIEShear
from dhs_gen.physics.psf import validate_psf_kernel
from dhs_gen.sources.profiles import SOURCE_PROFILES

MIN_STAMP_SIZE = 8


@dataclass(frozen=True, eq=False)
class ArcRender:
    """Result of :func:`render_arc_bands`.

    Attributes
    ----------
    images : ndarray (B, H, W) float64
        PSF-convolved arc per band, flux per pixel (unit of the sources' ``flux``).
    magnification : float
        Unconvolved lensed flux inside the stamp in band 0 / band 0's intrinsic flux
        (dimensionless; NaN when that flux is 0).
    """

    images: np.ndarray
    magnification: float


# ----------------------------------------------------------------------------- validation
def _validate_geometry(stamp_size, pixscale_arcsec, supersample):
    check_range("stamp_size", stamp_size, MIN_STAMP_SIZE, 4096)
    if isinstance(stamp_size, bool) or int(stamp_size) != stamp_size:
        raise InvalidValueError("stamp_size", stamp_size, f"must be an integer >= {MIN_STAMP_SIZE} (pixels)")
    check_range("pixscale_arcsec", pixscale_arcsec, 0.0, math.inf, lo_open=True)
    check_range("supersample", supersample, 1, 64)
    if isinstance(supersample, bool) or int(supersample) != supersample:
        raise InvalidValueError("supersample", supersample, "must be an integer >= 1")
    return int(stamp_size), float(pixscale_arcsec), int(supersample)


def _validate_task(lens, sources, psfs):
    if not isinstance(lens, SIEShear):
        raise InvalidValueError("lens", type(lens).__name__, "must be a dhs_gen.physics.lensing.SIEShear")
    sources, psfs = list(sources), list(psfs)
    if not sources or len(sources) != len(psfs):
        raise InvalidValueError("sources/psfs", (len(sources), len(psfs)),
                                "need one source and one PSF per band (same non-zero length)")
    for s in sources:
        if type(s) not in SOURCE_PROFILES:
            raise InvalidValueError("sources", type(s).__name__,
                                    f"must be one of {[c.__name__ for c in SOURCE_PROFILES]}")
    return sources, [validate_psf_kernel(p, name=f"psfs[{i}]", rtol=1e-5) for i, p in enumerate(psfs)]


# ----------------------------------------------------------------------------- convolution
@lru_cache(maxsize=64)
def _fft_shape(n: int, k: int) -> tuple[int, int]:
    """Circular FFT size for a "same" convolution: n + (k-1)/2 keeps every wrapped term out of
    the cropped window (the full result spans n + k - 1; only indices (k-1)/2 .. n-1+(k-1)/2 are kept)."""
    m = sfft.next_fast_len(n + (k - 1) // 2, real=True)
    return (m, m)


_KERNEL_FFT_CACHE: dict = {}
_KERNEL_FFT_CACHE_MAX = 256


def _kernel_fft(psf: np.ndarray, shape: tuple[int, int], dtype) -> np.ndarray:
    """rfft2 of a kernel zero-padded to ``shape``, cached by kernel bytes (kernels repeat across tasks)."""
    key = (psf.shape, shape, np.dtype(dtype).str, psf.tobytes())
    hit = _KERNEL_FFT_CACHE.get(key)
    if hit is None:
        if len(_KERNEL_FFT_CACHE) >= _KERNEL_FFT_CACHE_MAX:
            _KERNEL_FFT_CACHE.clear()
        hit = sfft.rfft2(psf.astype(dtype), s=shape)
        _KERNEL_FFT_CACHE[key] = hit
    return hit


def convolve_same(images: np.ndarray, psfs, dtype=np.float64) -> np.ndarray:
    """Convolve each (H, W) image of a (M, H, W) stack with its odd kernel, ``fftconvolve(mode="same")``.

    Images are flux per pixel; kernels are odd, centred, unit-sum (validated by the caller).
    ``dtype`` float32 halves the FFT cost (relative error ~1e-7); returns float64.
    """
    return _convolve_scaled(images, np.arange(len(images)), np.ones(len(images)), psfs, dtype)


def _convolve_scaled(images, image_of_out, scale_of_out, psfs, dtype) -> np.ndarray:
    """``scale_of_out[i] * (images[image_of_out[i]] conv psfs[i])`` for every output i: (K, H, W) float64.

    Bands that share an image (the same source shape in every band) share its forward FFT:
    convolution is linear, so only the kernel and the flux scale differ per band.
    """
    m, h, w = images.shape
    sizes = {p.shape[0] for p in psfs}
    shape = _fft_shape(max(h, w), max(sizes))
    padded = np.zeros((m,) + shape, dtype=dtype)   # padded here: scipy would copy once more to pad
    padded[:, :h, :w] = images
    spec = sfft.rfft2(padded, axes=(1, 2), workers=1, overwrite_x=True)
    prod = np.empty((len(psfs),) + spec.shape[1:], dtype=spec.dtype)
    kernel_ffts: dict = {}  # by object first: tobytes() (the cache key) once per distinct array
    for i, p in enumerate(psfs):
        kf = kernel_ffts.get(id(p))
        if kf is None:
            kf = kernel_ffts[id(p)] = _kernel_fft(p, shape, dtype)
        np.multiply(spec[image_of_out[i]], kf, out=prod[i])
    full = sfft.irfft2(prod, s=shape, axes=(1, 2), workers=1, overwrite_x=True)
    # "same": a kernel of size kb (odd) shifts the full output by (kb-1)/2
    out = np.empty((len(psfs), h, w))
    if len(sizes) == 1:
        o = (sizes.pop() - 1) // 2
        np.multiply(full[:, o:o + h, o:o + w], np.asarray(scale_of_out)[:, None, None], out=out)
    else:
        for i, p in enumerate(psfs):
            o = (p.shape[0] - 1) // 2
            np.multiply(full[i, o:o + h, o:o + w], scale_of_out[i], out=out[i])
    return out


# ----------------------------------------------------------------------------- engines
def _numpy_engine(lens, sources, psfs, stamp_size, pixscale_arcsec, supersample, adaptive, refine_tol):
    (pix, groups), = _render_many_pairs(_plan(stamp_size, pixscale_arcsec, supersample), [lens], [sources], adaptive,
                                        refine_tol, DEFAULT_CULL_TOL)
    pair_of_band, scale_of_band = _band_map(groups, len(sources))
    images = _convolve_scaled(pix, pair_of_band, scale_of_band, psfs, _fft_dtype(adaptive))
    return images, float(pix[pair_of_band[0]].sum() * scale_of_band[0])


def _fft_dtype(adaptive: bool):
    return np.float32 if adaptive else np.float64  # the exact path stays float64 end to end


ENGINES = {"numpy": _numpy_engine, "lenstronomy": lenstronomy_engine.render_bands}
"""Render engine name -> ``f(lens, sources, psfs, stamp_size, pixscale_arcsec, supersample, adaptive, refine_tol)``
returning ``(images (B, H, W) flux per pixel, unconvolved band-0 flux in the stamp)``."""


def _engine(name):
    if name not in ENGINES:
        raise ChoiceError("engine", name, sorted(ENGINES))
    return ENGINES[name]


def render_arc_bands(lens, sources, psfs, stamp_size, pixscale_arcsec, supersample=4, engine="numpy",
                     adaptive=True, refine_tol=DEFAULT_REFINE_TOL) -> ArcRender:
    """Lensed, PSF-convolved arc in every band; deflections computed once for all bands.

    Parameters
    ----------
    lens : SIEShear
        Lens (arcsec).
    sources : list of SersicSource / TemplateSource, length B
        Source per band; ``flux`` is the band's total intrinsic flux (e.g. nanomaggies).
    psfs : list of ndarray (k, k), length B
        Odd, centred, unit-sum PSF kernels on the stamp's pixel grid.
    stamp_size : int
        Stamp side, pixels (>= 8).
    pixscale_arcsec : float
        Pixel scale, arcsec per pixel.
    supersample : int
        Sub-pixels per pixel per axis (>= 1).
    engine : str
        ``"numpy"`` (fast) or ``"lenstronomy"`` (reference); see :data:`ENGINES`.
    adaptive : bool
        Supersample only where the lensed source has flux (module docstring); False = exact.
    refine_tol : float
        Refine (supersample) pixels whose curvature indicator exceeds this fraction of the
        brightest pixel's surface brightness (adaptive only; module docstring).

    Returns
    -------
    ArcRender
        ``images`` (B, H, W) float64 flux per pixel and the band-0 ``magnification``.
    """
    stamp_size, pixscale_arcsec, supersample = _validate_geometry(stamp_size, pixscale_arcsec, supersample)
    sources, psfs = _validate_task(lens, sources, psfs)
    check_range("refine_tol", refine_tol, 0.0, 1.0)
    images, flux0 = _engine(engine)(lens, sources, psfs, stamp_size, pixscale_arcsec, supersample, bool(adaptive),
                                    float(refine_tol))
    mag = flux0 / sources[0].flux if sources[0].flux > 0 else float("nan")
    return ArcRender(images=images, magnification=float(mag))


def render_arc(lens, source, psf, stamp_size, pixscale_arcsec, supersample=4, engine="numpy", adaptive=True,
               refine_tol=DEFAULT_REFINE_TOL) -> np.ndarray:
    """Lensed, PSF-convolved arc of one source: (H, W) float64, flux per pixel.

    Parameters as :func:`render_arc_bands` with a single ``source`` and ``psf``.
    """
    return render_arc_bands(lens, [source], [psf], stamp_size, pixscale_arcsec, supersample, engine, adaptive,
                            refine_tol).images[0]


def render_arcs(tasks, stamp_size, pixscale_arcsec, supersample=4, engine="numpy", adaptive=True,
                refine_tol=DEFAULT_REFINE_TOL, chunk_size=16) -> list[ArcRender]:
    """Batch of :func:`render_arc_bands` calls, convolved together (throughput mode).

    Parameters
    ----------
    tasks : iterable of (lens, sources, psfs)
        One tuple per stamp, each as the arguments of :func:`render_arc_bands`.
    stamp_size, pixscale_arcsec, supersample, engine, adaptive, refine_tol
        As :func:`render_arc_bands`, shared by all tasks.
    chunk_size : int
        Tasks convolved together in one stacked FFT (memory ~0.2 MB per band at 64x64).

    Returns
    -------
    list of ArcRender, in task order.
    """
    stamp_size, pixscale_arcsec, supersample = _validate_geometry(stamp_size, pixscale_arcsec, supersample)
    check_range("refine_tol", refine_tol, 0.0, 1.0)
    tasks = [_validate_task(*t) + (t[0],) for t in tasks]
    if engine != "numpy":
        eng = _engine(engine)
        results = [eng(lens, s, p, stamp_size, pixscale_arcsec, supersample, adaptive, refine_tol) for s, p, lens in tasks]
    else:
        plan, results = _plan(stamp_size, pixscale_arcsec, supersample), []
        for c in range(0, len(tasks), chunk_size):  # bounded memory, and the FFT buffers stay in cache
            chunk = tasks[c:c + chunk_size]
            rendered = _render_many_pairs(plan, [le for _, _, le in chunk], [s for s, _, _ in chunk], adaptive,
                                          refine_tol, DEFAULT_CULL_TOL)
            maps = [_band_map(groups, len(s)) for (_, groups), (s, _, _) in zip(rendered, chunk, strict=True)]
            first = np.cumsum([0] + [len(pix) for pix, _ in rendered])
            conv = _convolve_scaled(np.concatenate([pix for pix, _ in rendered]),
                                    np.concatenate([f + pob for f, (pob, _) in zip(first[:-1], maps, strict=True)]),
                                    np.concatenate([sob for _, sob in maps]), [p for _, psfs, _ in chunk for p in psfs],
                                    _fft_dtype(adaptive))
            bounds = np.cumsum([0] + [len(s) for s, _, _ in chunk])
            results += [(conv[a:b], float(pix[pob[0]].sum() * sob[0]))
                        for a, b, (pix, _), (pob, sob) in zip(bounds[:-1], bounds[1:], rendered, maps, strict=True)]
    return [ArcRender(images=img, magnification=(f0 / s[0].flux if s[0].flux > 0 else float("nan")))
            for (img, f0), (s, _, _) in zip(results, tasks, strict=True)]
