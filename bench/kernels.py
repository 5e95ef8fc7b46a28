"""Kernel benchmark: ``render_arc`` (numpy engine) vs lenstronomy ``ImageModel`` on the same tasks.

Tasks are DR10-like: 64x64 stamps at 0.262"/pix, supersampling 4, a 25x25 Moffat PSF (beta 3.5,
FWHM 1.0-1.6"), SIE+shear lenses with theta_E 0.8-2.5", Sersic sources with r_eff 0.1-0.5",
n 0.5-4, placed inside the caustic region so that they form arcs. Timings are the best of
``REPEATS`` interleaved passes over all tasks, in process CPU time (``time.process_time``: the
machine is shared, and CPU time does not count the time this process waits for a core; every
kernel here is single-threaded, so CPU time = single-core time).

The lenstronomy side is as favourable to it as possible: one ``ImageModel`` built once and
re-used, only the kwargs change per task, and glibc's malloc told to keep freed memory
(:func:`jobs.runtime.allocator.keep_freed_memory`, as every 4c task does): by default each of lenstronomy's 65k-sample float64 temporaries
(512 kB, above glibc's initial 128 kB mmap threshold) is a fresh ``mmap`` whose pages fault on
first touch, which doubles its time (6.5 vs 3.0 ms per stamp measured here) and makes its speed
depend on whatever ran before in the process. Its kwargs are built once, outside its clock, while every
round of ours renders new lens and source objects (:func:`fresh_tasks`): what each caches on first use (the
lens's ray map, a Sersic's normalisation) is paid as a user pays it for every new task. Lines printed:

* a table: mode, ms per stamp for numpy and lenstronomy, speedup, and the accuracy of the numpy
  image against lenstronomy's (max and median relative L1, max relative total-flux difference);
* ``render_arc single``: one call per single-band stamp, adaptive (default) and exact paths;
* ``render_arcs batch``: single-band tasks in one batch call;
* ``render_arcs batch grz``: three-band tasks (one lens, per-band flux and PSF) vs three
  lenstronomy renders per stamp, and stamps/s against the DESIGN target of 200 per core;
* ``template ...``: the same lenses with COSMOS-like pixel templates (:func:`make_template_tasks`)
  vs lenstronomy ``INTERPOL``.

Run: ``python -m bench kernels``.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC, ellipticity_from_q_phi
from dhs_gen.physics.injection import render_arc, render_arcs
from dhs_gen.physics.lensing import SIEShear
from dhs_gen.physics.lenstronomy_engine import image_model
from dhs_gen.physics.psf import moffat_kernel
from dhs_gen.sources.profiles import SersicSource, TemplateSource
from jobs.runtime.allocator import keep_freed_memory

STAMP, SUPERSAMPLE, PSF_SIZE = 64, 4, 25
N_TASKS, REPEATS = 40, 7
GRZ_FLUX_RATIOS = (0.8, 1.0, 1.1)


def make_tasks(n: int, seed: int = 0):
    """``n`` (lens, source, psf) single-band tasks and per-task grz PSFs, from a seeded generator."""
    rng = np.random.default_rng(seed)
    tasks, grz_psfs = [], []
    for _ in range(n):
        e1, e2 = ellipticity_from_q_phi(rng.uniform(0.6, 1.0), rng.uniform(0, np.pi))
        g1, g2 = rng.normal(0.0, 0.04, 2)
        theta_e = rng.uniform(0.8, 2.5)
        lens = SIEShear(theta_e, float(e1), float(e2), float(g1), float(g2), *rng.uniform(-0.1, 0.1, 2))
        se1, se2 = ellipticity_from_q_phi(rng.uniform(0.5, 1.0), rng.uniform(0, np.pi))
        r, phi = 0.5 * theta_e * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)  # inside ~ the caustic
        src = SersicSource(flux=rng.uniform(1.0, 20.0), r_eff=rng.uniform(0.1, 0.5), n=rng.uniform(0.5, 4.0),
                           e1=float(se1), e2=float(se2), center_x=r * np.cos(phi), center_y=r * np.sin(phi))
        fwhms = rng.uniform(1.0, 1.6, 3)
        psfs = [moffat_kernel(f, PIXSCALE_DR10_ARCSEC, beta=3.5, size=PSF_SIZE) for f in fwhms]
        tasks.append((lens, src, psfs[1]))
        grz_psfs.append(psfs)
    return tasks, grz_psfs


def make_template_tasks(tasks, seed: int = 1):
    """COSMOS-like template sources for the lenses of ``tasks``: 64x64 at 0.03"/pix (1.9" across), a
    smooth elliptical body plus a few clumps, rotated, placed as the Sersic sources were."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64] - 31.5
    out = []
    for le, s, psf in tasks:
        q, phi = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi)
        xr, yr = np.cos(phi) * xx + np.sin(phi) * yy, -np.sin(phi) * xx + np.cos(phi) * yy
        img = np.exp(-np.sqrt(q * xr**2 + yr**2 / q) / rng.uniform(3.0, 6.0))
        for cx, cy in rng.uniform(-12, 12, (3, 2)):
            img += rng.uniform(0.2, 1.0) * np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / rng.uniform(1.0, 2.5) ** 2)
        src = TemplateSource(img, 0.03, s.flux, s.center_x, s.center_y, rotation_rad=rng.uniform(0, 2 * np.pi))
        out.append((le, src, psf))
    return out


def _accuracy(ours, refs):
    l1 = [np.abs(a - b).sum() / np.abs(b).sum() for a, b in zip(ours, refs, strict=True)]
    dflux = [abs(a.sum() - b.sum()) / b.sum() for a, b in zip(ours, refs, strict=True)]
    return max(l1), float(np.median(l1)), max(dflux)


def lenstronomy_pass(tasks):
    """A pass rendering every single-band task with one lenstronomy ``ImageModel`` built once (the PSF of
    task 0): lenstronomy's best case, the reference every ratio here is taken against."""
    model, _, _ = image_model(tasks[0][0], tasks[0][1], tasks[0][2], STAMP, PIXSCALE_DR10_ARCSEC, SUPERSAMPLE)
    kwargs = [(le.lenstronomy_kwargs(), [s.lenstronomy()[1]]) for le, s, _ in tasks]
    return lambda: [model.image(kwargs_lens=kl, kwargs_source=ks) for kl, ks in kwargs]


def best_cpu_seconds(passes: dict, repeats: int = REPEATS, inputs: dict | None = None) -> tuple[dict, dict]:
    """(results of a warm-up round, best process CPU seconds of each pass) over ``repeats`` rounds, the
    passes interleaved so that a burst of load on the shared machine hits every side.

    ``inputs`` (pass name -> zero-argument factory): such a pass is called with a new result of its factory in
    every round, built before its clock starts (tasks whose lenses and sources carry no cached state, as a
    user's do on their first render).
    """
    inputs = inputs or {}

    def call(name):   # (result, CPU seconds)
        arg = (inputs[name](),) if name in inputs else ()
        t0 = time.process_time()
        out = passes[name](*arg)
        return out, time.process_time() - t0

    outputs = {name: call(name)[0] for name in passes}  # warm-up: imports, caches, kernel FFTs
    best = dict.fromkeys(passes, np.inf)
    for _ in range(repeats):
        for name in passes:
            best[name] = min(best[name], call(name)[1])
    return outputs, best


def fresh_tasks(tasks):
    """Copies of ``(lens, source(s), psf(s))`` tasks whose lens and sources are new objects: the per-object state
    they cache on first use (the lens's ray map, a Sersic's normalisation and frame) is paid again, as it is for
    every new task a user renders.

    PSF arrays are shared, and their FFTs stay cached across rounds: a survey's rows share a few kernels per brick
    and band, so a kernel's FFT is paid once per brick, not per row. (The grz pass's 120 kernels are each used once
    here; uncached, it measured 14-24 % slower.)"""
    def copy(s):
        return [dataclasses.replace(x) for x in s] if isinstance(s, list) else dataclasses.replace(s)
    return [(dataclasses.replace(le), copy(s), psf) for le, s, psf in tasks]


def run() -> str:
    """Benchmark and return the table and ratio lines (< 60 s on 2 shared cores)."""
    tasks, grz_psfs = make_tasks(N_TASKS)
    malloc_note = "glibc keeps freed memory" if keep_freed_memory() else "default allocator"
    p = PIXSCALE_DR10_ARCSEC
    psf0 = tasks[0][2]
    batch = [(le, [s], [psf0]) for le, s, _ in tasks]
    grz = [(le, [dataclasses.replace(s, flux=s.flux * f) for f in GRZ_FLUX_RATIOS], psfs)
           for (le, s, _), psfs in zip(tasks, grz_psfs, strict=True)]
    templates = make_template_tasks(tasks)
    t_model, _, _ = image_model(templates[0][0], templates[0][1], psf0, STAMP, p, SUPERSAMPLE)
    t_kwargs = [(le.lenstronomy_kwargs(), [s.lenstronomy()[1]]) for le, s, _ in templates]
    interpol = t_model.SourceModel.func_list[0]  # caches its spline of the first image it sees

    def lenstronomy_templates():
        out = []
        for kl, ks in t_kwargs:
            interpol.delete_cache()
            out.append(t_model.image(kwargs_lens=kl, kwargs_source=ks))
        return out

    t_batch = [(le, [s], [psf0]) for le, s, _ in templates]

    def single(ts, adaptive=True):
        return [render_arc(le, s, psf0, STAMP, p, SUPERSAMPLE, adaptive=adaptive) for le, s, _ in ts]

    def batch_images(ts):
        return [r.images[0] for r in render_arcs(ts, STAMP, p, SUPERSAMPLE)]

    ours = {   # name: (pass, the tasks it renders)
        "render_arc single": (single, tasks),
        "render_arc single exact": (lambda ts: single(ts, adaptive=False), tasks),
        "render_arcs batch": (batch_images, batch),
        "render_arcs batch grz (3 bands)": (lambda ts: render_arcs(ts, STAMP, p, SUPERSAMPLE), grz),
        "template render_arc single": (single, templates),
        "template render_arcs batch": (batch_images, t_batch),
    }
    passes = {"lenstronomy": lenstronomy_pass(tasks), "lenstronomy template": lenstronomy_templates,
              **{name: fn for name, (fn, _) in ours.items()}}
    # our side renders new objects every round (their per-object caches cold, as a user's first render);
    # lenstronomy's kwargs are built once, outside its clock: the comparison errs in lenstronomy's favour
    inputs = {name: functools.partial(fresh_tasks, ts) for name, (_, ts) in ours.items()}
    outputs, best = best_cpu_seconds(passes, inputs=inputs)
    t_lt = best["lenstronomy"] / N_TASKS
    refs = outputs["lenstronomy"]
    rows = [(name, best[name] / N_TASKS, t_lt, *_accuracy(outputs[name], refs))
            for name in ("render_arc single", "render_arc single exact", "render_arcs batch")]
    rows.append(("render_arcs batch grz (3 bands)", best["render_arcs batch grz (3 bands)"] / N_TASKS, 3 * t_lt,
                 np.nan, np.nan, np.nan))
    t_lt_template = best["lenstronomy template"] / N_TASKS
    rows += [(name, best[name] / N_TASKS, t_lt_template, *_accuracy(outputs[name], outputs["lenstronomy template"]))
             for name in ("template render_arc single", "template render_arcs batch")]

    head = f"{'mode':34s} {'numpy ms':>9s} {'lenstr ms':>10s} {'speedup':>8s} {'L1 max':>9s} {'L1 med':>9s} {'dflux max':>9s}"
    lines = [f"kernels: {N_TASKS} tasks, {STAMP}x{STAMP} px, supersample {SUPERSAMPLE}, {PSF_SIZE}x{PSF_SIZE} Moffat, "
             f"theta_E 0.8-2.5\", r_eff 0.1-0.5\", n 0.5-4; CPU time, best of {REPEATS}; {malloc_note}", head, "-" * len(head)]
    for label, t, tl, l1max, l1med, dflux in rows:
        lines.append(f"{label:34s} {t * 1e3:9.3f} {tl * 1e3:10.3f} {tl / t:7.1f}x {l1max:9.2e} {l1med:9.2e} {dflux:9.2e}")
    lines.append("")
    for label, t, tl, *_ in rows:
        unit = "stamp (3 bands)" if "grz" in label else "stamp"
        lines.append(f"{label}: numpy {t * 1e3:.3f} ms/{unit}, lenstronomy {tl * 1e3:.3f} ms/{unit}, "
                     f"speedup {tl / t:.1f}x")
    t_grz = best["render_arcs batch grz (3 bands)"] / N_TASKS
    lines.append(f"render_arcs batch grz: {1.0 / t_grz:,.0f} three-band stamps/s on one core (DESIGN target >= 200)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
