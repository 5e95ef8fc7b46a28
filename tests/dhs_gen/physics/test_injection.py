"""Arc rendering against lenstronomy ``ImageModel`` and lensing/photometry identities."""

from __future__ import annotations

import dataclasses
import math
import pickle

import numpy as np
import pytest

from dhs_gen.conventions import ellipticity_from_q_phi, pixel_centers_arcsec
from dhs_gen.errors import ChoiceError, InvalidValueError, RangeError
from dhs_gen.physics import adaptive
from dhs_gen.physics.adaptive import render_sb_bands, render_sb_batch
from dhs_gen.physics.injection import ArcRender, convolve_same, render_arc, render_arc_bands, render_arcs
from dhs_gen.physics.lensing import SIEShear
from dhs_gen.physics.psf import gaussian_kernel, moffat_kernel
from dhs_gen.sources.profiles import SersicSource, TemplateSource

PIX = 0.262
ORACLE_L1 = 2e-3  # brief: sum|ours - lenstronomy| / sum|lenstronomy| on the convolved image


def _task(rng):
    e1, e2 = ellipticity_from_q_phi(rng.uniform(0.5, 1.0), rng.uniform(0, np.pi))
    theta_e = rng.uniform(0.8, 2.5)
    lens = SIEShear(theta_e, float(e1), float(e2), *rng.normal(0, 0.05, 2), *rng.uniform(-0.3, 0.3, 2))
    se1, se2 = ellipticity_from_q_phi(rng.uniform(0.4, 1.0), rng.uniform(0, np.pi))
    r, phi = theta_e * np.sqrt(rng.uniform(0, 0.5)), rng.uniform(0, 2 * np.pi)
    src = SersicSource(rng.uniform(1, 20), rng.uniform(0.1, 0.5), rng.uniform(0.5, 4.0), float(se1), float(se2),
                       lens.center_x + r * np.cos(phi), lens.center_y + r * np.sin(phi))
    return lens, src, moffat_kernel(rng.uniform(1.0, 1.6), PIX, beta=3.5, size=25)


def _l1(a, b):
    return np.abs(a - b).sum() / np.abs(b).sum()


def _oracle_cases(n_cases, seed):
    rng = np.random.default_rng(seed)
    for _ in range(n_cases):
        lens, src, psf = _task(rng)
        ref = render_arc(lens, src, psf, 64, PIX, supersample=4, engine="lenstronomy")
        yield lens, src, psf, ref


def _check_oracle(n_cases, seed):
    """Exact path: the same sub-pixel samples and kernel as lenstronomy, so round-off only (1e-8).
    Adaptive path: the brief's 2e-3 relative L1 (measured worst ~3e-4 in ``make bench``)."""
    for lens, src, psf, ref in _oracle_cases(n_cases, seed):
        for use_adaptive in (True, False):
            ours = render_arc(lens, src, psf, 64, PIX, supersample=4, adaptive=use_adaptive)
            assert _l1(ours, ref) < ORACLE_L1, (use_adaptive, lens, src)
            if not use_adaptive:  # identical samples and kernel: only round-off differs
                assert _l1(ours, ref) < 1e-8


def test_render_arc_matches_lenstronomy_image_model():
    _check_oracle(40, seed=101)  # ~3 s: 40 random SIE+shear / Sersic tasks, both paths


def test_template_bands_match_lenstronomy_engine():
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[:31, :31] - 15.0
    images = [np.exp(-0.5 * ((xx - 2) ** 2 + (yy / 1.5) ** 2) / s**2) + 0.05 * rng.uniform(size=xx.shape)
              for s in (3.0, 4.0, 5.0)]
    lens = SIEShear(1.4, 0.1, -0.05, 0.02, 0.01, 0.1, -0.1)
    sources = [TemplateSource(img, 0.03, f, 0.15, 0.05, rotation_rad=0.4) for img, f in zip(images, (1, 2, 3), strict=True)]
    psfs = [gaussian_kernel(f, PIX) for f in (1.4, 1.2, 1.1)]
    ours = render_arc_bands(lens, sources, psfs, 48, PIX, supersample=4)
    ref = render_arc_bands(lens, sources, psfs, 48, PIX, supersample=4, engine="lenstronomy")
    for b in range(3):
        assert _l1(ours.images[b], ref.images[b]) < ORACLE_L1
    assert ours.magnification == pytest.approx(ref.magnification, rel=1e-3)


def test_point_at_pixel_centre_stays_there():
    img = np.zeros((1, 32, 32))
    img[0, 9, 20] = 1.0
    psf = moffat_kernel(1.3, PIX, e1=0.2, size=15)  # asymmetric kernel: any shift or flip shows
    out = convolve_same(img, [psf])[0]
    np.testing.assert_allclose(out[2:17, 13:28], psf, atol=1e-12)
    # and through the renderer: a compact unlensed source on a pixel centre keeps its centroid there
    c = pixel_centers_arcsec(33, PIX)
    src = SersicSource(1.0, 0.05, 0.5, center_x=c[20], center_y=c[9])
    arc = render_arc(SIEShear(1e-8), src, gaussian_kernel(1.2, PIX), 33, PIX, supersample=8)
    yy, xx = np.mgrid[:33, :33]
    # float32 ray-shooting positions are good to ~1e-6" = 4e-6 pix; a convolution bug shifts by >= 1 pix
    assert (arc * xx).sum() / arc.sum() == pytest.approx(20, abs=1e-4)
    assert (arc * yy).sum() / arc.sum() == pytest.approx(9, abs=1e-4)


@pytest.mark.parametrize("adaptive, n, rel", [(False, 0.5, 1e-6), (True, 0.5, 2e-4), (False, 1.0, 5e-4),
                                              (True, 1.0, 5e-4)])
def test_unlensed_source_conserves_flux(adaptive, n, rel):
    src = SersicSource(flux=12.5, r_eff=0.4, n=n, e1=0.1, center_x=0.3)
    arc = render_arc(SIEShear(1e-8), src, moffat_kernel(1.3, PIX, size=25), 64, PIX, adaptive=adaptive)
    # flux beyond the 8.4" half-stamp is < 1e-8 for both profiles. Tolerance: the sub-pixel midpoint
    # sum of a smooth (Gaussian) profile is exact to all orders (Euler-Maclaurin), so only float32
    # round-off remains; the n=1 cusp at the centre costs ~(h_sub/r_eff)^2/24 * (area fraction) ~ 2e-4.
    # Adaptive: outskirts take the O(h^4) 5-point rule, refined where its indicator > 1e-3 of the peak
    assert arc.sum() == pytest.approx(12.5, rel=rel)


def test_sis_magnification_of_compact_source():
    """Total SIS magnification of a source at beta < theta_E is 2 theta_E / beta (both images)."""
    theta_e, beta, r_eff = 1.5, 0.5, 0.05
    src = SersicSource(flux=1.0, r_eff=r_eff, n=0.5, center_x=beta)
    res = render_arc_bands(SIEShear(theta_e), [src], [gaussian_kernel(1.0, PIX)], 64, PIX, supersample=8)
    # independent oracle: 2 theta_E/|beta'| averaged over the Gaussian source (quadrature, not ray shooting)
    sigma = r_eff / np.sqrt(2 * np.log(2))
    u = np.linspace(-6 * sigma, 6 * sigma, 401)
    ux, uy = np.meshgrid(u + beta, u)
    w = np.exp(-0.5 * ((ux - beta) ** 2 + uy**2) / sigma**2)
    expected = (2 * theta_e / np.hypot(ux, uy) * w).sum() / w.sum()
    assert expected == pytest.approx(2 * theta_e / beta, rel=0.02)  # finite-source correction is small
    # ray-shooting with 1/8-pixel sub-pixels across images ~0.1" wide: ~0.3% sampling error
    assert res.magnification == pytest.approx(expected, rel=5e-3)


@pytest.mark.parametrize("adaptive", [True, False])
def test_bands_share_the_lens_and_match_single_calls(adaptive):
    rng = np.random.default_rng(3)
    lens, src, psf = _task(rng)
    sources = [dataclasses.replace(src, flux=src.flux * f) for f in (0.5, 1.0, 2.0)]
    psfs = [moffat_kernel(f, PIX, size=s) for f, s in ((1.5, 25), (1.3, 21), (1.1, 17))]
    res = render_arc_bands(lens, sources, psfs, 64, PIX, adaptive=adaptive)
    assert isinstance(res, ArcRender) and res.images.shape == (3, 64, 64) and res.images.dtype == np.float64
    for b in range(3):  # same shape in every band: same samples, so equal to round-off
        single = render_arc(lens, sources[b], psfs[b], 64, PIX, adaptive=adaptive)
        # adaptive convolves in float32 (FFT size follows the largest kernel of the call): ~1e-7
        np.testing.assert_allclose(res.images[b], single, rtol=0, atol=(1e-6 if adaptive else 1e-12) * single.max())
    # a band of another shape widens the (shared) supersampled region: same image to quadrature accuracy
    other = dataclasses.replace(src, r_eff=src.r_eff * 1.5, center_x=src.center_x + 0.3)
    res2 = render_arc_bands(lens, [sources[0], other], psfs[:2], 64, PIX, adaptive=adaptive)
    assert _l1(res2.images[0], res.images[0]) < (1e-3 if adaptive else 1e-12)
    assert _l1(res2.images[1], render_arc(lens, other, psfs[1], 64, PIX, adaptive=adaptive)) < 1e-3
    unconvolved = render_arc(lens, sources[0], np.ones((1, 1)), 64, PIX, adaptive=adaptive)
    assert res.magnification == pytest.approx(unconvolved.sum() / sources[0].flux, rel=1e-6)  # float32 FFT


def test_render_arcs_batch_equals_per_task_calls():
    rng = np.random.default_rng(4)
    tasks = []
    for i in range(5):
        lens, src, psf = _task(rng)
        srcs = [src, dataclasses.replace(src, flux=2 * src.flux)]
        if i == 2:
            srcs[1] = TemplateSource(np.ones((9, 9)), 0.05, 3.0, src.center_x, src.center_y)
        tasks.append((lens, srcs, [psf, gaussian_kernel(1.2, PIX)]))
    batch = render_arcs(tasks, 64, PIX, chunk_size=2)
    for (lens, srcs, psfs), got in zip(tasks, batch, strict=True):
        one = render_arc_bands(lens, srcs, psfs, 64, PIX)
        np.testing.assert_allclose(got.images, one.images, rtol=0, atol=1e-6 * one.images.max())  # float32 FFT
        assert got.magnification == pytest.approx(one.magnification, rel=1e-12)
    assert render_arcs([], 64, PIX) == []


def _compact_task(rng, template: bool):
    """A compact source (culling applies): Sersic n 0.5-1.5, r_eff 0.05-0.2", or a 1.5" pixel template."""
    lens, src, psf = _task(rng)
    if template:
        yy, xx = np.mgrid[:50, :50] - 24.5
        img = np.exp(-np.hypot(xx / rng.uniform(0.5, 1.0), yy) / 5.0) + 0.5 * np.exp(
            -0.5 * ((xx - rng.uniform(-10, 10)) ** 2 + (yy - rng.uniform(-10, 10)) ** 2) / 4.0)
        return lens, TemplateSource(img, 0.03, src.flux, src.center_x, src.center_y, rng.uniform(0, 6.3)), psf
    return lens, dataclasses.replace(src, r_eff=rng.uniform(0.05, 0.2), n=rng.uniform(0.5, 1.5)), psf


def test_block_culling_keeps_lenstronomy_accuracy_and_its_flux_bound():
    rng = np.random.default_rng(202)
    size = adaptive.CULL_MIN_STAMP_PIX   # the smallest stamp culling is tried on
    plan = adaptive._plan(size, PIX, 4)
    n_culled, n_tasks = 0, 12
    for _ in range(n_tasks):
        lens, src, psf = _compact_task(rng, template=False)
        reps = [src]
        blocks = adaptive._active_blocks(plan, lens.ray_map, reps, adaptive.DEFAULT_CULL_TOL)
        if adaptive._may_cull(plan, lens.ray_map, reps, adaptive.DEFAULT_CULL_TOL):  # the renderer culls
            n_culled += int((~blocks).sum())
        # the bound is honest: the exact path's flux in the dropped blocks is within cull_tol of the source flux
        exact = render_sb_bands(lens, [src], size, PIX, 4, adaptive=False)[0]
        dropped = exact[~blocks[plan.block_of_pixel]].sum()
        assert dropped <= adaptive.DEFAULT_CULL_TOL * src.flux
        ref = render_arc(lens, src, psf, size, PIX, supersample=4, engine="lenstronomy")
        assert _l1(render_arc(lens, src, psf, size, PIX, supersample=4), ref) < ORACLE_L1, (lens, src)
    assert n_culled > n_tasks * blocks.size // 4  # and culling happened: over a quarter of the blocks dropped


def test_block_culling_bounds_each_shape_beside_a_template():
    """A Sersic shape beside a template (two shapes, culled together at CULL_MIN_STAMP_PIX): the exact flux of each
    in the dropped blocks stays within cull_tol of its own flux."""
    rng = np.random.default_rng(203)
    size = adaptive.CULL_MIN_STAMP_PIX
    plan = adaptive._plan(size, PIX, 4)
    n_culled = 0
    for _ in range(6):
        lens, sersic, _ = _compact_task(rng, template=False)
        template = _compact_task(rng, template=True)[1]
        template = dataclasses.replace(template, center_x=sersic.center_x, center_y=sersic.center_y)
        reps = [sersic, template]
        assert adaptive._may_cull(plan, lens.ray_map, reps, adaptive.DEFAULT_CULL_TOL)
        blocks = adaptive._active_blocks(plan, lens.ray_map, reps, adaptive.DEFAULT_CULL_TOL)
        n_culled += int((~blocks).sum())
        for src in reps:
            exact = render_sb_bands(lens, [src], size, PIX, 4, adaptive=False)[0]
            assert exact[~blocks[plan.block_of_pixel]].sum() <= adaptive.DEFAULT_CULL_TOL * src.flux
    assert n_culled > 6 * blocks.size // 4


def test_block_culling_is_not_tried_where_it_costs_more_than_it_saves():
    """Below CULL_MIN_STAMP_PIX (DR10's 64 px stamps) and for templates, whose coarse pass is pixel centres only."""
    rng = np.random.default_rng(202)
    big = adaptive._plan(adaptive.CULL_MIN_STAMP_PIX, PIX, 4)
    small = adaptive._plan(64, PIX, 4)
    for template in (False, True):
        lens, src, _ = _compact_task(rng, template=template)
        tol = adaptive.DEFAULT_CULL_TOL
        assert adaptive._may_cull(big, lens.ray_map, [src], tol) is not template, template
        assert not adaptive._may_cull(small, lens.ray_map, [src], tol)
        if template:   # beside a Sersic shape it is tried
            sersic = _compact_task(rng, template=False)[1]
            assert adaptive._may_cull(big, lens.ray_map, [sersic, src], tol)
    # nor where the bounds say every block may reach the source: an extended Sersic with a long tail
    lens, src, _ = _task(rng)
    assert not adaptive._may_cull(big, lens.ray_map, [dataclasses.replace(src, r_eff=2.0, n=4.0)], tol)


def test_batch_output_is_bit_identical_whatever_the_grouping():
    """DESIGN determinism: a task's pixels do not depend on the batch, chunk or group it is rendered in."""
    rng = np.random.default_rng(11)
    lenses, sources = [], []
    for i in range(20):
        lens, src, _ = _compact_task(rng, template=True) if i % 7 == 3 else _task(rng)
        lenses.append(lens)
        sources.append([src, dataclasses.replace(src, flux=2 * src.flux)] if i % 3 else [src])
    batch = render_sb_batch(lenses, sources, 64, PIX, 4)
    plan = adaptive._plan(64, PIX, 4)
    assert sum(adaptive._groupable(plan, le, adaptive._unique_shapes(s), True, adaptive.DEFAULT_CULL_TOL)
               for le, s in zip(lenses, sources, strict=True)) >= 10  # the vectorised group path is exercised
    for lens, srcs, got in zip(lenses, sources, batch, strict=True):
        np.testing.assert_array_equal(got, render_sb_bands(lens, srcs, 64, PIX, 4))
    regrouped = adaptive._render_many_pairs(adaptive._plan(64, PIX, 4), lenses[::-1], sources[::-1], True,
                                             adaptive.DEFAULT_REFINE_TOL, adaptive.DEFAULT_CULL_TOL, group_size=3)
    for (pix, _), got in zip(regrouped[::-1], batch, strict=True):
        np.testing.assert_array_equal(pix[0], got[0])  # band 0 is its group's representative: scale 1


_LENS = SIEShear(1.2)
_SRC = SersicSource(1.0, 0.2)
_PSF = gaussian_kernel(1.2, PIX)


@pytest.mark.parametrize("call, name, error", [
    (lambda: render_arc(_LENS, _SRC, _PSF, 7, PIX), "stamp_size", RangeError),
    (lambda: render_arc(_LENS, _SRC, _PSF, 32.5, PIX), "stamp_size", InvalidValueError),
    (lambda: render_arc(_LENS, _SRC, _PSF, 32, PIX, supersample=0), "supersample", RangeError),
    (lambda: render_arc(_LENS, _SRC, _PSF, 32, float("nan")), "pixscale", RangeError),
    (lambda: render_arc(_LENS, _SRC, np.full((4, 4), 1 / 16), 32, PIX), "psf", InvalidValueError),
    (lambda: render_arc(_LENS, _SRC, 2 * _PSF, 32, PIX), "psf", InvalidValueError),
    (lambda: render_arc(_LENS, _SRC, _PSF, 32, PIX, engine="galsim"), "engine", ChoiceError),
    (lambda: render_arc_bands(_LENS, [_SRC, _SRC], [_PSF], 32, PIX), "sources/psfs", InvalidValueError),
    (lambda: render_arc("lens", _SRC, _PSF, 32, PIX), "lens", InvalidValueError),
])
def test_bad_render_inputs_raise_named_picklable_errors(call, name, error):
    with pytest.raises(ValueError) as info:
        call()
    assert isinstance(info.value, error)
    assert name in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_near_core_pixels_are_those_the_reach_margin_gives():
    """adaptive._near_sersic_cores (one threshold outside the lens box, pixel by pixel inside it) marks the
    pixels SersicSource.near_core marks with adaptive._reach as the margin: two shapes per task, tasks in one
    call of two, lenses inside and far outside the stamp (no box); the two float32 evaluations may only
    disagree where r2 sits on the threshold (to 1e-6)."""
    plan = adaptive._plan(64, PIX, 4)
    n_c = (plan.n + 1) ** 2
    rng = np.random.default_rng(5)
    n_near = 0
    for i in range(24):
        lenses, r2s, stretches, wants, limits = [], [], [], [], []
        for _ in range(2):
            lens, src, _ = _task(rng)
            if i % 6 == 5:   # far outside the stamp: no box
                lens = dataclasses.replace(lens, center_x=40.0, center_y=-35.0)
            small = dataclasses.replace(src, r_eff=rng.uniform(0.03, 0.1), center_x=lens.center_x + rng.normal(0, 0.3),
                                        center_y=lens.center_y + rng.normal(0, 0.3))   # a compact core near the centre
            rm, reps = lens.ray_map, [src, small]
            uv = adaptive._frame_coords(rm, adaptive._coefficients(rm, reps), plan.coarse_xy1[:, n_c:], np.float32)
            stretch = np.array([r.frame_stretch for r in reps], dtype=np.float32)
            reach = adaptive._reach(plan, [rm])[0]
            want = np.zeros(plan.n**2, dtype=bool)
            for j in range(2):
                want |= SersicSource.near_core(uv[j, 0], uv[j, 1], stretch[j] * reach)
            lenses.append(rm)
            r2s.append(SersicSource.frame_radius2(uv.copy()))
            stretches.append(stretch)
            wants.append(want)
            limits.append((1.0 + stretch[:, None].astype(float) * reach[None, :].astype(float)) ** 2)
        got = adaptive._near_sersic_cores(plan, lenses, np.stack(r2s), np.stack(stretches))
        for t in range(2):
            tie = np.any(np.abs(r2s[t] / limits[t] - 1.0) < 1e-6, axis=0)
            assert np.array_equal(got[t][~tie], wants[t][~tie])
            n_near += int(wants[t].sum())
    assert n_near > 48 * 20   # the cores are reached: the test compares marked pixels, not empty sets


def test_reach_is_the_lipschitz_bound_at_every_pixel():
    """adaptive._reach (evaluated only in a box around the lens centre) equals |D beta| * half-diagonal from
    RayMap.lipschitz at each pixel's closest distance to the lens centre, for lenses inside, at the edge of and
    far outside the stamp, and stays finite-or-inf (no error) for an Einstein radius past float32."""
    plan = adaptive._plan(64, PIX, 4)
    half_diag = PIX / math.sqrt(2.0)
    axis = pixel_centers_arcsec(64, PIX)
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    for theta_e, cx, cy in [(1.2, 0.1, -0.2), (2.5, 8.3, 0.0), (0.8, -40.0, 35.0), (3.0, 0.0, 8.5)]:
        lens = SIEShear(theta_e, 0.1, -0.05, 0.03, 0.01, cx, cy)
        rm = lens.ray_map
        got = adaptive._reach(plan, [rm])[0]
        r = np.maximum(np.hypot(xx - cx, yy - cy).ravel() - half_diag, 1e-2)
        np.testing.assert_allclose(got, rm.lipschitz(r) * half_diag, rtol=1e-5)   # float32 arithmetic
    huge = SIEShear(1e39, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    with np.errstate(over="ignore"):   # theta_E past float32
        assert np.all(np.isinf(adaptive._reach(plan, [huge.ray_map])[0]))
