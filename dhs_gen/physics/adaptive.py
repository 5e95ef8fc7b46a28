"""Adaptive supersampling: the unconvolved lensed image of SIE+shear tasks, flux per pixel.

The ray-shooting half of :mod:`dhs_gen.physics.injection` (which convolves with the PSF and checks
inputs): per-grid constants (:func:`_plan`), block culling, the coarse 5-point pass, the
supersampled fine pass and the vectorised grouped coarse pass. Stamps are on the DESIGN grid
(:mod:`dhs_gen.conventions`), supersampled ``supersample x supersample`` per pixel.

Adaptive supersampling (default, ``adaptive=True``)
    Supersampling the whole stamp is wasted work: an arc covers a few hundred of 4096 pixels.
    A coarse pass ray-shoots pixel centres and corners ((N+1)^2 + N^2 rays, not N^2 s^2) and
    gives every pixel the rule ``2/3 f(centre) + 1/3 mean f(corners)``, the pixel mean to
    O(h^4). A pixel is *refined* (full ``s x s`` sub-pixel mean, the same samples as the exact
    path and lenstronomy) when its curvature indicator ``|f(centre) - mean f(corners)|``
    exceeds ``refine_tol`` times the brightest pixel; when the disk that holds its source-plane
    footprint (radius ``|D beta| * half-diagonal``, :meth:`dhs_gen.physics.lensing.RayMap.lipschitz`,
    about its centre's ray) meets the source core (half-light ellipse; a template's whole
    support), so that a compact source between the coarse rays is never missed; or when it lies
    within 2 pixels of the lens centre, where the ray map folds. A template is 0 wherever its
    support cannot reach, so its coarse pass only needs the pixel centres.

    Block culling: on stamps of ``CULL_MIN_STAMP_PIX`` (160) pixels or more, when scalar bounds
    say part of the stamp cannot reach a Sersic source (:func:`_may_cull`; compact profiles),
    8x8-pixel blocks are bounded first (one ray per block centre, the Lipschitz disk of the block,
    ``sb_bound`` of the nearest frame radius it can reach) and dropped, faintest first, while
    their bounds add up to at most ``DEFAULT_CULL_TOL`` (1e-5) of the source's flux. A rigorous
    bound: never an error above it (a template beside a Sersic shape is culled with it). Smaller
    stamps (DR10's 64 px) and template-only tasks skip it: there it costs more than it saves.

    Accuracy/speed (``make bench``, DR10-like tasks: theta_E 0.8-2.5", r_eff 0.1-0.5", n 0.5-4,
    64x64, s = 4): ``refine_tol = 1e-3`` ray-shoots ~11k points instead of 65k and differs from
    lenstronomy by <= 3e-4 relative L1 (median 1e-4) - inside the 2e-3 oracle tolerance; most
    of that difference is lenstronomy's own 4x4 midpoint error in the outskirts, which the
    5-point rule does not share. 1e-4 gives ~7e-5 L1 for ~14k rays, 1e-2 ~1.3e-3 for ~10k.
    ``adaptive=False`` is the exact path (float64, every sub-pixel of every pixel); the adaptive
    path runs in float32 (~1e-6" positions).

Evaluation
    A ray costs one sqrt, arctan and arctanh (:class:`dhs_gen.physics.lensing.RayMap`); every source is
    evaluated in its own frame (``frame_sb``), reached from (x, y, 1, A, B) by one small matrix
    product, so each shape costs ~7 array operations per ray on top. Bands of one shape (same
    profile, different flux) share every ray and the forward FFT of the convolution.

Batch mode (:func:`render_sb_batch`, :func:`dhs_gen.physics.injection.render_arcs`)
    Sersic-only tasks with nothing to cull run their coarse pass vectorised, ``_GROUP_TASKS`` at
    a time (the per-call overhead of numpy dominates a single 64x64 task); each task's matrix
    products stay separate 2-D products and everything else is element-wise, so a task's output
    is bit-identical whatever batch or group it is rendered in (single calls use the same
    path). Bands are convolved chunk by chunk in one stacked real FFT per chunk, reusing the FFT
    of each distinct kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from dhs_gen.conventions import pixel_centers_arcsec, subpixel_offsets_arcsec
from dhs_gen.physics.lensing import sie_angular_terms
from dhs_gen.sources.profiles import SersicSource

DEFAULT_REFINE_TOL = 1e-3
DEFAULT_CULL_TOL = 1e-5
BLOCK_PIX = 8  # side of the blocks culled before the coarse pass, pixels
# Culling bounds the blocks (~50 us for 64 of them) and gathers the kept lattice: measured on the bench's Sersic
# tasks it costs more than it saves below ~160 px stamps (64 px: 327 vs 197 us a culled task; 192 px: 547 vs
# 631), and never pays for templates, whose coarse pass already evaluates pixel centres only.
CULL_MIN_STAMP_PIX = 160
_CENTRE_GUARD_PIX = 2.0  # pixels around the lens centre that are always supersampled
_FINE_CHUNK_RAYS = 16384  # rays per fine-pass chunk: its ~10 float32 rows stay in a core's L2 cache
_GROUP_TASKS = 8  # tasks per vectorised coarse pass: ~3 MB of float32 temporaries at 64x64


# ----------------------------------------------------------------------------- per-grid constants (cached)
@dataclass(frozen=True, eq=False)
class _Plan:
    """Everything about a (stamp_size, pixscale_arcsec, supersample) grid that does not depend on the task."""

    n: int
    pixscale: float
    supersample: int
    coarse_xy1: np.ndarray   # (3, (N+1)^2 + N^2) float32: (x, y, 1) of pixel corners, then centres, arcsec
    centres: np.ndarray      # (2, N^2) float64 pixel centres, arcsec (row-major)
    axis32: np.ndarray       # (N,) float32 pixel-centre coordinate along either axis, arcsec
    sub: np.ndarray          # (2, s^2) float64 sub-pixel offsets from the pixel centre, arcsec
    block_of_pixel: np.ndarray  # (N, N) flat block index of every pixel
    block_centres: np.ndarray   # (3, nb^2) float64: (x, y, 1) of block centres, arcsec
    block_half_diag: np.ndarray  # (nb^2,) arcsec: the farthest a block point lies from its centre
    block_area: np.ndarray       # (nb^2,) arcsec^2
    block_lo: np.ndarray         # (2, nb^2) arcsec, lower x/y edges
    block_hi: np.ndarray         # (2, nb^2) arcsec, upper x/y edges


@lru_cache(maxsize=32)
def _plan(stamp_size: int, pixscale_arcsec: float, supersample: int) -> _Plan:
    n, h = stamp_size, pixscale_arcsec
    c = pixel_centers_arcsec(n, h)
    edges = np.append(c - 0.5 * h, c[-1] + 0.5 * h)
    ex, ey = np.meshgrid(edges, edges)
    cx, cy = np.meshgrid(c, c)
    xy = np.concatenate([np.stack([ex.ravel(), ey.ravel()]), np.stack([cx.ravel(), cy.ravel()])], axis=1)
    coarse = np.vstack([xy, np.ones((1, xy.shape[1]))]).astype(np.float32)
    o = subpixel_offsets_arcsec(supersample, h)
    ox, oy = np.meshgrid(o, o)
    nb = -(-n // BLOCK_PIX)
    starts = np.arange(nb) * BLOCK_PIX
    stops = np.minimum(starts + BLOCK_PIX, n)
    lo1, hi1 = edges[starts], edges[stops]  # block edges along one axis
    lo_x, lo_y = np.meshgrid(lo1, lo1)
    hi_x, hi_y = np.meshgrid(hi1, hi1)
    ii = np.arange(n) // BLOCK_PIX
    arrays = dict(coarse_xy1=coarse, centres=np.stack([cx.ravel(), cy.ravel()]), axis32=c.astype(np.float32),
                  sub=np.stack([ox.ravel(), oy.ravel()]), block_of_pixel=ii[:, None] * nb + ii[None, :],
                  block_centres=np.stack([(0.5 * (lo_x + hi_x)).ravel(), (0.5 * (lo_y + hi_y)).ravel(),
                                          np.ones(nb * nb)]),
                  block_half_diag=0.5 * np.hypot(hi_x - lo_x, hi_y - lo_y).ravel(),
                  block_area=((hi_x - lo_x) * (hi_y - lo_y)).ravel(),
                  block_lo=np.stack([lo_x.ravel(), lo_y.ravel()]), block_hi=np.stack([hi_x.ravel(), hi_y.ravel()]))
    for a in arrays.values():
        a.setflags(write=False)
    return _Plan(n=n, pixscale=h, supersample=supersample, **arrays)


# ----------------------------------------------------------------------------- ray shooting and sources
def _frame_coords(ray_map, coeffs, xy1, dtype) -> np.ndarray:
    """(P, 2, m) source-frame coordinates of the points ``xy1`` (3, m) (arcsec), in ``dtype``.

    ``coeffs`` (2P, 5) are the frames as functions of (x, y, 1, A, B) (``RayMap.functional``).
    """
    basis = np.empty((5, xy1.shape[1]), dtype=dtype)
    basis[:3] = xy1
    return _basis_frame_coords(ray_map, coeffs, basis)


def _basis_frame_coords(ray_map, coeffs, basis) -> np.ndarray:
    """:func:`_frame_coords` of the points whose (x, y, 1) fill the first 3 rows of ``basis`` (5, m); the last two
    rows receive (A, B)."""
    dtype = basis.dtype
    frame = ray_map.frame32 if dtype == np.float32 else ray_map.frame.astype(dtype, copy=False)
    ray_map.angular_terms(frame @ basis[:3], out=basis[3:])
    return (coeffs.astype(dtype) @ basis).reshape(-1, 2, basis.shape[1])


def _frame_sb(reps, uv) -> np.ndarray:
    """(P, m) surface brightness (flux per arcsec^2) of each source from its frame coordinates (uv scratch)."""
    kinds = [type(r) for r in reps]
    if all(k is kinds[0] for k in kinds):  # the usual case: one profile type, one vectorised call
        return kinds[0].frame_sb(reps, uv)
    out = np.empty(uv[:, 0].shape, dtype=uv.dtype)
    for kind in set(kinds):
        idx = [j for j, k in enumerate(kinds) if k is kind]
        out[idx] = kind.frame_sb([reps[j] for j in idx], uv[idx])
    return out


# ----------------------------------------------------------------------------- adaptive pass
def _may_cull(plan, ray_map, reps, cull_tol) -> bool:
    """Whether block culling is tried: a stamp of at least ``CULL_MIN_STAMP_PIX`` with a Sersic shape, some
    image point of which maps beyond every source's ``cull_radius`` at the per-block flux share. Scalar bounds
    only, so skipping is cheap (culling is then simply not tried: always safe)."""
    if plan.n < CULL_MIN_STAMP_PIX or all(rep.core_is_support for rep in reps):
        return False
    q, eps = ray_map.q, ray_map.eps
    alpha_max = float(np.abs(ray_map.beta_basis[0, 3:]).sum()) * math.hypot(math.atan(eps / q), math.atanh(min(eps, 1 - 1e-12)))
    half = 0.5 * plan.n * plan.pixscale  # half side of the stamp, arcsec
    share = cull_tol / (plan.block_area.size * plan.block_area.max())  # per arcsec^2 of an average block
    for rep in reps:
        d = rep.cull_radius(share * rep.flux) / rep.frame_shrink  # source-plane arcsec
        # |beta - c| >= (1 - |gamma|) |theta| - alpha_max - |c|: beyond r_img nothing reaches the source
        r_img = (d + math.hypot(rep.center_x, rep.center_y) + alpha_max) / max(1.0 - ray_map.gamma, 1e-12)
        if not r_img < half:
            return False
    return True


def _active_blocks(plan, ray_map, reps, cull_tol) -> np.ndarray:
    """(nb^2,) bool: blocks that may hold more than their share of ``cull_tol`` of some source's flux.

    A block's source-plane footprint lies within ``lipschitz * half_diagonal`` of its centre's
    ray; its surface brightness is then at most ``sb_bound`` of the smallest frame radius that
    footprint can reach. Blocks are dropped, faintest bound first, while the bounds of the
    dropped blocks add up to at most ``cull_tol`` of the source's intrinsic flux.
    """
    lo, hi = plan.block_lo, plan.block_hi
    cx, cy = ray_map.center
    gap = np.hypot(np.maximum(np.maximum(lo[0] - cx, cx - hi[0]), 0.0), np.maximum(np.maximum(lo[1] - cy, cy - hi[1]), 0.0))
    reach = ray_map.lipschitz(gap) * plan.block_half_diag  # arcsec in the source plane
    uv = _frame_coords(ray_map, _coefficients(ray_map, reps), plan.block_centres, np.float64)
    active = np.zeros(plan.block_area.shape, dtype=bool)
    for j, rep in enumerate(reps):
        rho = np.hypot(uv[j, 0], uv[j, 1]) - rep.frame_stretch * reach  # frame radius the footprint can reach
        bound = np.nan_to_num(rep.sb_bound(rho) * plan.block_area)  # flux, an upper bound
        order = np.argsort(bound)
        keep = np.cumsum(bound[order]) > cull_tol * rep.flux
        active[order[keep]] = True
    return active


def _reach(plan, ray_maps, centre_idx=None) -> np.ndarray:
    """(T, n) float32: source-plane radius (arcsec) about each pixel centre's ray holding the pixel's footprint.

    ``|D beta| * half-diagonal`` with :meth:`RayMap.lipschitz` at the pixel's distance from the
    lens centre; a compact source whose core is that close may slip between the five rays.
    """
    n = plan.n
    out = np.empty((len(ray_maps), n * n), dtype=np.float32)
    for t, rm in enumerate(ray_maps):
        outside, rows, cols, box = _reach_box(plan, rm)
        reach = out[t].reshape(n, n)
        reach[...] = outside
        if box is not None:
            reach[rows, cols] = box
    return out if centre_idx is None else out.take(centre_idx, axis=1)


def _reach_box(plan, rm):
    """:func:`_reach` of one lens as ``(outside, rows, cols, box)``: the float32 value of every pixel outside the
    box ``[rows, cols]`` about the lens centre, and the values inside it (float32; None when the box misses the
    stamp).

    Beyond ``theta_e / (2 sqrt(q))`` of the centre (2 kappa < 2) the bound is ``1 + |gamma|``; the box holds every
    other pixel, with a margin of the half-diagonal plus 2 pixels.
    """
    half_diag = np.float32(plan.pixscale / math.sqrt(2.0))
    (cx, cy), lens_scale, gamma = rm.center, np.float32(rm.theta_e / math.sqrt(rm.q)), np.float32(rm.gamma)
    outside = (np.float32(1.0) + gamma) * half_diag
    r_box = (0.5 * float(lens_scale) + float(half_diag)) / plan.pixscale + 2.0
    if not math.isfinite(r_box):   # an Einstein radius past float32: every pixel
        r_box = 2.0 * plan.n + abs(cx / plan.pixscale) + abs(cy / plan.pixscale)
    rows, cols = _index_span(cy, r_box, plan), _index_span(cx, r_box, plan)
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return outside, rows, cols, None
    ax = plan.axis32
    r = np.hypot(ax[rows, None] - np.float32(cy), ax[None, cols] - np.float32(cx))
    r -= half_diag
    np.maximum(r, np.float32(1e-2), out=r)  # closer pixels are inside the centre guard anyway
    np.divide(lens_scale, r, out=r)  # >= 2 kappa at the pixel's closest point
    r -= np.float32(1.0)
    np.maximum(r, np.float32(1.0), out=r)
    r += gamma
    r *= half_diag
    return outside, rows, cols, r


def _near_sersic_cores(plan, ray_maps, r2_centres, stretch) -> np.ndarray:
    """(T, N*N) bool: pixels whose footprint may meet the half-light ellipse of one of their task's Sersic shapes.

    ``r2_centres`` (T, P, N*N) float32: :meth:`SersicSource.frame_radius2` of the pixel centres' rays;
    ``stretch`` (T, P) float32 frame stretches. :meth:`SersicSource.near_core` with :func:`_reach` as the margin,
    applied with one threshold outside the box of :func:`_reach_box` and pixel by pixel inside it.
    """
    n_tasks, n_pairs, n = len(ray_maps), r2_centres.shape[1], plan.n
    near = np.empty((n_tasks, n * n), dtype=bool)
    for t, rm in enumerate(ray_maps):
        outside, rows, cols, box = _reach_box(plan, rm)
        r2 = r2_centres[t]
        SersicSource.near_radius2(r2[0], stretch[t, 0] * outside, out=near[t])
        for j in range(1, n_pairs):
            near[t] |= SersicSource.near_radius2(r2[j], stretch[t, j] * outside)
        if box is not None:
            near_box = near[t].reshape(n, n)[rows, cols]   # a view: written in place
            for j in range(n_pairs):
                near_box |= SersicSource.near_radius2(r2[j].reshape(n, n)[rows, cols], stretch[t, j] * box)
    return near


def _index_span(centre: float, radius_pix: float, plan) -> slice:
    """The pixel indices along one axis within ``radius_pix`` pixels of the coordinate ``centre`` (arcsec)."""
    c = centre / plan.pixscale + 0.5 * (plan.n - 1)
    return slice(max(math.floor(c - radius_pix), 0), min(math.ceil(c + radius_pix) + 1, plan.n))


def _five_point(f_c, f_p, refine_tol):
    """Pixel means (K, N*N) float32 from corner (K, N+1, N+1) and centre (K, N*N) samples, and where to refine.

    ``2/3 f(centre) + 1/3 mean f(corners)`` is the pixel mean to O(h^4) (the h^2 terms cancel);
    ``|f(centre) - mean f(corners)| ~ h^2 |laplacian f| / 8`` says how far from that regime the
    pixel is: refine where it exceeds ``refine_tol`` times the brightest pixel.
    """
    k = f_p.shape[0]
    corners = f_c[:, :-1, :-1] + f_c[:, 1:, :-1]
    corners += f_c[:, :-1, 1:]
    corners += f_c[:, 1:, 1:]
    corners = corners.reshape(k, -1)
    corners *= np.float32(0.25)
    indicator = np.subtract(f_p, corners)
    np.abs(indicator, out=indicator)
    pix = f_p * np.float32(2.0 / 3.0)
    corners *= np.float32(1.0 / 3.0)
    pix += corners
    return pix, indicator > np.float32(refine_tol) * pix.max(axis=1, keepdims=True)


def _guard(plan, ray_map, active):
    """Set ``active`` (N, N) on the pixels within the guard of the lens centre, where the ray map folds."""
    n, h = plan.n, plan.pixscale
    guard, origin = _CENTRE_GUARD_PIX + 0.5, 0.5 * (n - 1)
    (cx, cy), tiny = ray_map.center, 1e-9
    c0, c1 = math.ceil(cx / h + origin - guard - tiny), math.floor(cx / h + origin + guard + tiny)
    r0, r1 = math.ceil(cy / h + origin - guard - tiny), math.floor(cy / h + origin + guard + tiny)
    if c1 >= 0 and r1 >= 0 and c0 < n and r0 < n:
        active[max(r0, 0):r1 + 1, max(c0, 0):c1 + 1] = True


def _coarse_group(plan, ray_maps, coeffs, reps, refine_tol):
    """Coarse pass of T tasks at once, each with P Sersic shapes, on the whole lattice (no culling).

    ``coeffs`` (T, 2P, 5), ``reps`` the T*P sources task-major. Returns 5-point values
    (T*P, N*N) float32 (flux per arcsec^2) and the pixels to supersample (T, N*N) bool.
    """
    n_tasks, n = len(ray_maps), plan.n
    n_pairs = len(reps) // n_tasks
    xy1 = plan.coarse_xy1
    lens = np.array([(rm.eps, 1.0 / rm.q) for rm in ray_maps], dtype=np.float32)
    c32 = coeffs.astype(np.float32)
    m = xy1.shape[1]
    basis = np.empty((n_tasks, 5, m), dtype=np.float32)   # (x, y, 1, A, B) of every ray, as _frame_coords
    basis[:, :3] = xy1
    xy, uv = np.empty((n_tasks, 2, m), dtype=np.float32), np.empty((n_tasks, 2 * n_pairs, m), dtype=np.float32)
    for t, rm in enumerate(ray_maps):  # one 2-D product per task: a task's bits do not depend on its group
        np.matmul(rm.frame32, xy1, out=xy[t])
    sie_angular_terms(xy, lens[:, 0:1], lens[:, 1:2], out=basis[:, 3:])
    for t in range(n_tasks):
        np.matmul(c32[t], basis[t], out=uv[t])
    uv = uv.reshape(n_tasks * n_pairs, 2, -1)
    n_c = (n + 1) ** 2
    stretch = np.array([r.frame_stretch for r in reps], dtype=np.float32).reshape(n_tasks, n_pairs)
    r2 = SersicSource.frame_radius2(uv)
    near = _near_sersic_cores(plan, ray_maps, r2[:, n_c:].reshape(n_tasks, n_pairs, -1), stretch)
    f = SersicSource.radius2_sb(reps, r2)
    pix, sharp = _five_point(f[:, :n_c].reshape(-1, n + 1, n + 1), f[:, n_c:], refine_tol)
    active = near
    for j in range(n_pairs):
        active |= sharp.reshape(n_tasks, n_pairs, -1)[:, j]
    for t, rm in enumerate(ray_maps):
        _guard(plan, rm, active[t].reshape(n, n))
    return pix, active


def _coarse_pass(plan, ray_map, coeffs, reps, pixel_mask, refine_tol):
    """5-point pixel values (P, N*N) float32 (flux per arcsec^2) and the pixels to supersample (N*N,) bool.

    Any mix of source types; ``pixel_mask`` (N, N) bool: pixels of the kept blocks (None: all).
    """
    n = plan.n
    n_c, n_pairs = (n + 1) ** 2, len(reps)
    values = not all(rep.core_is_support for rep in reps)  # templates: supersampled wherever they reach, 0 elsewhere
    if pixel_mask is None:  # every block kept: the whole lattice, no gathers
        centre_idx = None
        xy1 = plan.coarse_xy1 if values else plan.coarse_xy1[:, n_c:]
    else:  # culled: only with a Sersic shape (_may_cull), so the values are needed
        centre_idx = np.flatnonzero(pixel_mask)
        corner_mask = np.zeros((n + 1, n + 1), dtype=bool)
        for di in (0, 1):
            for dj in (0, 1):
                corner_mask[di:di + n, dj:dj + n] |= pixel_mask
        corner_idx = np.flatnonzero(corner_mask)
        xy1 = plan.coarse_xy1.take(np.concatenate([corner_idx, n_c + centre_idx]), axis=1)
    uv = _frame_coords(ray_map, coeffs, xy1, np.float32)
    n_cen = n * n if centre_idx is None else centre_idx.size
    uv_c = uv[:, :, uv.shape[2] - n_cen:]  # the pixel centres: last in every layout
    reach = _reach(plan, [ray_map], centre_idx)[0]
    near = reps[0].near_core(uv_c[0, 0], uv_c[0, 1], np.float32(reps[0].frame_stretch) * reach)
    for j in range(1, n_pairs):
        near |= reps[j].near_core(uv_c[j, 0], uv_c[j, 1], np.float32(reps[j].frame_stretch) * reach)
    if values:
        f = _frame_sb(reps, uv)
        if centre_idx is None:
            f_c, f_p = f[:, :n_c].reshape(n_pairs, n + 1, n + 1), f[:, n_c:]
        else:
            f_c = np.zeros((n_pairs, n_c), dtype=np.float32)
            f_c[:, corner_idx] = f[:, :corner_idx.size]
            f_c = f_c.reshape(n_pairs, n + 1, n + 1)
            f_p = np.zeros((n_pairs, n * n), dtype=np.float32)
            f_p[:, centre_idx] = f[:, corner_idx.size:]
        pix, sharp = _five_point(f_c, f_p, refine_tol)
        active = sharp.any(axis=0)
        if centre_idx is not None:  # culled pixels stay 0 (their corners next to kept pixels were evaluated)
            pix *= pixel_mask.reshape(1, n * n)
    else:
        pix = np.zeros((n_pairs, n * n), dtype=np.float32)
        active = np.zeros(n * n, dtype=bool)
    if centre_idx is None:
        active |= near
    else:
        active[centre_idx] |= near
    active2 = active.reshape(n, n)
    _guard(plan, ray_map, active2)
    if pixel_mask is not None:
        active2 &= pixel_mask
    return pix, active


def _fine_pass(plan, ray_map, coeffs, reps, pixels, dtype) -> np.ndarray:
    """(P, len(pixels)) mean surface brightness over the s x s sub-pixels of each pixel (flux per arcsec^2)."""
    s2 = plan.supersample**2
    out = np.empty((len(reps), pixels.size), dtype=np.float64)
    step = max(1, _FINE_CHUNK_RAYS // s2)
    for a in range(0, pixels.size, step):  # chunks: the (5, m) basis and the frames stay in cache
        chunk = pixels[a:a + step]
        basis = np.empty((5, s2, chunk.size), dtype=dtype)
        np.add(plan.sub[:, :, None], plan.centres.take(chunk, axis=1)[:, None, :], out=basis[:2])
        basis[2] = 1.0
        f = _frame_sb(reps, _basis_frame_coords(ray_map, coeffs, basis.reshape(5, -1)))
        out[:, a:a + chunk.size] = f.reshape(len(reps), s2, chunk.size).sum(axis=1, dtype=np.float64)
    out *= 1.0 / s2
    return out


def _coefficients(ray_map, reps) -> np.ndarray:
    """(2P, 5) float64: the frames of the P shapes ``reps`` as functions of (x, y, 1, A, B) (``RayMap.functional``)."""
    return ray_map.functional(np.concatenate([r.frame_matrix() for r in reps]))


def _render_task_pairs(plan, lens, groups, adaptive, refine_tol, cull_tol):
    """Unconvolved lensed image of each distinct source shape of one task (inputs validated).

    ``groups``: :func:`_unique_shapes` of the task's sources. Returns ``(pix, groups)``: (P, N, N) float64
    flux per pixel of each group's representative and the groups (band ``b`` of group ``j`` is ``scale * pix[j]``).
    """
    n = plan.n
    reps = [rep for rep, _ in groups]
    ray_map = lens.ray_map
    coeffs = _coefficients(ray_map, reps)
    if not adaptive or plan.supersample == 1:  # exact: every sub-pixel of every pixel, float64
        pix = _fine_pass(plan, ray_map, coeffs, reps, np.arange(n * n), np.float64)
    else:
        blocks = _active_blocks(plan, ray_map, reps, cull_tol) if _may_cull(plan, ray_map, reps, cull_tol) else None
        pixel_mask = None if blocks is None or blocks.all() else blocks[plan.block_of_pixel]
        if pixel_mask is not None and not pixel_mask.any():
            pix = np.zeros((len(reps), n * n))
        else:
            coarse, active = _coarse_pass(plan, ray_map, coeffs, reps, pixel_mask, refine_tol)
            pix = coarse.astype(np.float64)
            idx = np.flatnonzero(active)
            pix[:, idx] = _fine_pass(plan, ray_map, coeffs, reps, idx, np.float32)
    pix *= plan.pixscale**2
    return pix.reshape(len(reps), n, n), groups


def _groupable(plan, lens, groups, adaptive, cull_tol) -> bool:
    """Whether a task (:func:`_unique_shapes` groups) can join a vectorised group: adaptive, Sersic sources only,
    nothing to cull."""
    reps = [rep for rep, _ in groups]
    return (adaptive and plan.supersample > 1 and all(type(r) is SersicSource for r in reps)
            and not _may_cull(plan, lens.ray_map, reps, cull_tol))


def _render_group_pairs(plan, lenses, groups, refine_tol) -> list:
    """:func:`_render_task_pairs` of T groupable tasks (their :func:`_unique_shapes` groups) with the same number of
    shapes, the coarse pass vectorised."""
    reps_per_task = [[rep for rep, _ in g] for g in groups]
    ray_maps = [le.ray_map for le in lenses]
    # a single call (one task) skips np.stack: 3 % of a render_arc call, measured side by side
    coeffs = (_coefficients(ray_maps[0], reps_per_task[0])[None] if len(ray_maps) == 1 else
              np.stack([_coefficients(rm, reps) for rm, reps in zip(ray_maps, reps_per_task, strict=True)]))
    coarse, active = _coarse_group(plan, ray_maps, coeffs, [r for reps in reps_per_task for r in reps], refine_tol)
    n, n_pairs, out = plan.n, len(reps_per_task[0]), []
    for t, (rm, reps) in enumerate(zip(ray_maps, reps_per_task, strict=True)):
        pix = coarse[t * n_pairs:(t + 1) * n_pairs].astype(np.float64)
        idx = np.flatnonzero(active[t])
        pix[:, idx] = _fine_pass(plan, rm, coeffs[t], reps, idx, np.float32)
        pix *= plan.pixscale**2
        out.append((pix.reshape(n_pairs, n, n), groups[t]))
    return out


def _render_many_pairs(plan, lenses, sources_per_task, adaptive, refine_tol, cull_tol, group_size=_GROUP_TASKS):
    """:func:`_render_task_pairs` of many tasks: groupable ones with the same shape count vectorised together."""
    groups = [_unique_shapes(srcs) for srcs in sources_per_task]
    if len(lenses) == 1:   # a single call: nothing to group
        if _groupable(plan, lenses[0], groups[0], adaptive, cull_tol):
            return _render_group_pairs(plan, lenses, groups, refine_tol)
        return [_render_task_pairs(plan, lenses[0], groups[0], adaptive, refine_tol, cull_tol)]
    out = [None] * len(lenses)
    pending: dict = {}
    for t, (le, g) in enumerate(zip(lenses, groups, strict=True)):
        if _groupable(plan, le, g, adaptive, cull_tol):
            pending.setdefault(len(g), []).append(t)
        else:
            out[t] = _render_task_pairs(plan, le, g, adaptive, refine_tol, cull_tol)
    for members in pending.values():
        for a in range(0, len(members), group_size):
            ts = members[a:a + group_size]
            for t, res in zip(ts, _render_group_pairs(plan, [lenses[t] for t in ts], [groups[t] for t in ts], refine_tol),
                              strict=True):
                out[t] = res
    return out


def _band_map(groups, n_bands):
    """(pair index, flux scale) of every band, as two arrays of length ``n_bands``."""
    pair_of_band, scale_of_band = np.zeros(n_bands, dtype=np.intp), np.zeros(n_bands)
    for j, (_, members) in enumerate(groups):
        for b, scale in members:
            pair_of_band[b], scale_of_band[b] = j, scale
    return pair_of_band, scale_of_band


def _unique_shapes(sources):
    """Sources grouped by shape (all but flux): [(representative, [(band, flux scale), ...]), ...]."""
    if len(sources) == 1:   # one band: one group, without hashing its shape key (~3 us of a render_arc call)
        return [(sources[0], [(0, 1.0 if sources[0].flux > 0 else 0.0)])]
    groups: dict = {}
    for b, s in enumerate(sources):
        groups.setdefault(s.shape_key(), []).append((b, s))
    out = []
    for members in groups.values():
        rep = next((s for _, s in members if s.flux > 0), members[0][1])
        out.append((rep, [(b, (s.flux / rep.flux) if rep.flux > 0 else 0.0) for b, s in members]))
    return out


def render_sb_batch(lenses, sources_per_task, stamp_size, pixscale_arcsec, supersample, adaptive=True,
                    refine_tol=DEFAULT_REFINE_TOL, cull_tol=DEFAULT_CULL_TOL) -> list[np.ndarray]:
    """Unconvolved lensed images of many tasks: list of (B_t, N, N) float64, flux per pixel.

    Inputs must be validated (see :func:`render_arc_bands` for the parameters).
    """
    plan = _plan(stamp_size, pixscale_arcsec, supersample)
    out = []
    for (pix, groups), srcs in zip(_render_many_pairs(plan, lenses, sources_per_task, adaptive, refine_tol, cull_tol),
                                   sources_per_task, strict=True):
        pair_of_band, scale_of_band = _band_map(groups, len(srcs))
        out.append(pix[pair_of_band] * scale_of_band[:, None, None])
    return out


def render_sb_bands(lens, sources, stamp_size, pixscale_arcsec, supersample, adaptive=True, refine_tol=DEFAULT_REFINE_TOL,
                    cull_tol=DEFAULT_CULL_TOL):
    """Unconvolved lensed images of one task, (B, N, N) float64 flux per pixel (inputs validated)."""
    return render_sb_batch([lens], [sources], stamp_size, pixscale_arcsec, supersample, adaptive, refine_tol, cull_tol)[0]
