"""Training benchmark: is CPU training input-bound? (reader stamps/s vs model stamps/s).

``run()`` writes a small synthetic stamps dataset (the stamps Parquet layout of
``jobs.schema.STAMP_SCHEMA``: part files + ``_manifest.json``), then measures on the same data

* the reader alone: Parquet -> decode -> ``normalize_stamps`` -> augment + core dropout, stamps/s
  in one process (DESIGN.md target: >= 20k stamps/s at 3x64x64);
* training steps of the small CPU model (``resnet_small``): steps/s and stamps/s;
* their ratio: reader rate / training rate (> 1: the model, not the input, limits training).

:func:`make_synthetic_stamps` is also the test fixture of the reader and training tests: hosts
are elliptical Gaussian galaxies with DR10-like fluxes and per-band sky noise; an injection adds
a PSF-convolved arc on the Einstein ring to the *same* noisy host pixels as its paired control
(as stage 4c does), scaled to a chosen matched-filter SNR.

Run: ``python -m bench.training`` (or ``python -m bench``).
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy.signal import fftconvolve

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.psf import gaussian_kernel
from jobs.schema import STAMP_SCHEMA, encode_image

# Per-pixel sky noise, nanomaggies, of DR10-depth coadds in g, r, z (5-sigma point-source
# depths ~24.0/23.5/22.7 with a 1.3" PSF give ~0.006/0.010/0.021 nmgy per 0.262" pixel).
SKY_SIGMA_NMGY = np.array([0.006, 0.010, 0.021])
HOST_COLOURS = np.array([0.35, 1.0, 1.9])   # LRG-like g:r:z flux ratios
ARC_COLOURS = np.array([1.0, 1.0, 0.9])     # bluish source


def _host(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(n, 3, size, size) noiseless elliptical Gaussian hosts, nanomaggies per pixel."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size] - c
    flux_r = rng.uniform(5.0, 30.0, n)                 # r ~ 18.8 - 20.8 AB, LRG-like
    sigma = rng.uniform(2.0, 4.0, n)                   # pixels
    q = rng.uniform(0.6, 1.0, n)
    phi = rng.uniform(0, np.pi, n)
    xr = xx[None] * np.cos(phi)[:, None, None] + yy[None] * np.sin(phi)[:, None, None]
    yr = -xx[None] * np.sin(phi)[:, None, None] + yy[None] * np.cos(phi)[:, None, None]
    prof = np.exp(-0.5 * (q[:, None, None] * xr**2 + yr**2 / q[:, None, None]) / sigma[:, None, None] ** 2)
    prof /= prof.sum(axis=(1, 2), keepdims=True)
    return (flux_r[:, None, None, None] * HOST_COLOURS[None, :, None, None]) * prof[:, None]


def _arcs(rng: np.random.Generator, n: int, size: int, theta_e_pix: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """(n, 3, size, size) PSF-convolved arcs of unit matched-filter SNR in r (before scaling)."""
    c = (size - 1) / 2.0
    yy, xx = np.mgrid[:size, :size] - c
    r = np.hypot(xx, yy)
    phi = np.arctan2(yy, xx)
    phi0 = rng.uniform(-np.pi, np.pi, n)
    extent = rng.uniform(0.5, 1.5, n)                  # radians of arc half-length
    ring = np.exp(-0.5 * ((r[None] - theta_e_pix[:, None, None]) / 0.8) ** 2)
    dphi = np.angle(np.exp(1j * (phi[None] - phi0[:, None, None])))
    arc = ring * np.exp(-0.5 * (dphi / extent[:, None, None]) ** 2)
    arc = fftconvolve(arc, psf[None], mode="same", axes=(1, 2))
    arc = np.clip(arc, 0, None)
    snr_r = np.sqrt(((arc / SKY_SIGMA_NMGY[1]) ** 2).sum(axis=(1, 2)))
    return (arc / snr_r[:, None, None])[:, None] * ARC_COLOURS[None, :, None, None]


def make_synthetic_stamps(out_dir: str, n_hosts: int = 200, n_files: int = 4, size: int = 64,
                          snr_range: tuple[float, float] = (20.0, 40.0), splits=("train", "val", "test"),
                          split_probs=(0.7, 0.15, 0.15), reject_frac: float = 0.0, seed: int = 0,
                          hardneg: bool = False, theta_e_range: tuple[float, float] = (0.8, 2.5),
                          image_dictionary: bool = True) -> dict:
    """Write a stamps dataset: per host one injection (label 1) and its paired control (label 0).

    Parameters
    ----------
    out_dir : str
        Local directory; ``part-0000k.parquet`` files and ``_manifest.json`` go there.
    n_hosts : int
        Number of hosts (pairs); rows = 2 * n_hosts (3 * n_hosts with ``hardneg``).
    n_files : int
        Number of part files; hosts are dealt round-robin so each file holds whole pairs.
    size : int
        Stamp side, pixels.
    snr_range : (float, float)
        Uniform range of the arc's matched-filter SNR in r (``arc_snr`` column).
    splits, split_probs : sequences
        Split names and their probabilities per host (a pair never straddles splits).
    reject_frac : float
        Fraction of rows written with ``cutout_ok = 0`` (and NaN pixels, as a bad cutout would be).
    seed : int
        Seed of everything.
    hardneg : bool
        Also write a ``hardneg_shuffle`` row per host (control + the arc's pixels shuffled).
    theta_e_range : (float, float)
        Uniform range of the Einstein radius, arcsec.
    image_dictionary : bool
        Let Parquet try dictionary encoding on the ``image``/``invvar`` columns (pyarrow's default,
        what ``jobs.stage`` writes today); False writes them PLAIN (the bench compares both).

    Returns
    -------
    dict
        ``counts[(split, kind)]`` of rows with cutout_ok = 1, ``n_rows``, ``n_rejected``, ``files``,
        ``rows``: (task_id, pair_id, split, kind, cutout_ok) of every row written.
    """
    rng = np.random.default_rng(seed)
    psf = gaussian_kernel(1.3, PIXSCALE_DR10_ARCSEC)
    hosts = _host(rng, n_hosts, size)
    theta_e_arcsec = rng.uniform(*theta_e_range, n_hosts)
    snr = rng.uniform(*snr_range, n_hosts)
    arcs = _arcs(rng, n_hosts, size, theta_e_arcsec / PIXSCALE_DR10_ARCSEC, psf) * snr[:, None, None, None]
    noise = rng.normal(size=hosts.shape) * SKY_SIGMA_NMGY[None, :, None, None]
    controls = (hosts + noise).astype(np.float32)
    host_split = rng.choice(len(splits), size=n_hosts, p=np.asarray(split_probs) / np.sum(split_probs))
    rows = []
    for i in range(n_hosts):
        variants = [("injection", 1, controls[i] + arcs[i].astype(np.float32)), ("control", 0, controls[i])]
        if hardneg:
            shuffled = arcs[i].reshape(3, -1)[:, rng.permutation(size * size)].reshape(arcs[i].shape)
            variants.append(("hardneg_shuffle", 0, controls[i] + shuffled.astype(np.float32)))
        for kind, label, img in variants:
            rows.append((i, kind, label, img))
    reject = rng.random(len(rows)) < reject_frac
    counts: dict = {}
    written = []
    parts: list[list[dict]] = [[] for _ in range(n_files)]
    for j, (i, kind, label, img) in enumerate(rows):
        split = splits[host_split[i]]
        ok = 0 if reject[j] else 1
        written.append((f"h{i:06d}-{kind}", f"p{i:06d}", split, kind, ok))
        if ok:
            counts[(split, kind)] = counts.get((split, kind), 0) + 1
        else:
            img = np.full_like(img, np.nan)
        parts[i % n_files].append({
            "task_id": f"h{i:06d}-{kind}", "host_id": f"h{i:06d}", "pair_id": f"p{i:06d}", "kind": kind,
            "label": label, "is_control": kind != "injection", "split": split, "brickname": f"b{i % n_files:04d}",
            "source_mode": "sersic", "artifact_profile": "none",
            "theta_e_arcsec": float(theta_e_arcsec[i]), "arc_snr": float(snr[i]) if label else 0.0,
            "psf_fwhm_r_arcsec": 1.3, "psfdepth_r_nmgy": 5 * SKY_SIGMA_NMGY[1] * 7.5,
            "image": encode_image(img), "image_shape": list(img.shape), "bands": "grz",
            "pixscale_arcsec": PIXSCALE_DR10_ARCSEC, "cutout_ok": ok, "reject_reason": None if ok else "nan_pixels",
        })
    os.makedirs(out_dir, exist_ok=True)
    names = []
    for k, part in enumerate(parts):
        name = f"part-{k:05d}.parquet"
        table = pa.Table.from_pylist(part, schema=STAMP_SCHEMA)
        dictionary = True if image_dictionary else [c for c in STAMP_SCHEMA.names if c not in ("image", "invvar")]
        pq.write_table(table, os.path.join(out_dir, name), compression="zstd", row_group_size=256,
                       use_dictionary=dictionary)
        names.append(name)
    with open(os.path.join(out_dir, "_manifest.json"), "w") as f:
        json.dump({"stage": "synthetic-stamps", "files": names, "rows": len(rows)}, f)
    return {"counts": counts, "n_rows": len(rows), "n_rejected": int(reject.sum()), "files": names, "rows": written}


def _rate(fn, n_items: int, repeats: int = 3) -> float:
    """Items/s of ``fn()`` (one warm-up call, then ``repeats`` timed calls)."""
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return repeats * n_items / (time.perf_counter() - t0)


def bench_reader(uri: str, batch_size: int = 256, repeats: int = 3) -> float:
    """Reader stamps/s in this process (decode + normalise + augment + core dropout, no model)."""
    from jobs.reader import StampStream

    ds = StampStream(uri, split=None, batch_size=batch_size, shuffle_buffer=1024, seed=0, augment=True,
                     core_dropout_p=0.5, core_radius_pix=5)
    n, t0 = 0, time.perf_counter()
    for epoch in range(repeats):
        ds.set_epoch(epoch)
        for b in ds:
            n += len(b["label"])
    return n / (time.perf_counter() - t0)


def bench_reader_stages(uri: str) -> dict:
    """Stamps/s of each reader stage alone: Parquet read + decode, normalise, augment + core dropout."""
    from jobs.reader import (
        _decode_images,
        _iter_file_batches,
        augment_dihedral,
        core_mask,
        dataset_files,
        normalize_stamps,
    )

    files = dataset_files(uri)
    cols = ["image", "image_shape", "label", "split", "cutout_ok"]

    def read():
        return [_decode_images(b.column("image"), b.column("image_shape"))
                for f in files for b in _iter_file_batches(f, cols, 1024)]

    arrays = read()
    n = sum(len(a) for a in arrays)
    x = np.concatenate(arrays[:2])
    rng = np.random.default_rng(0)
    disc = core_mask(x.shape[-2], x.shape[-1], 5.0)

    def augment():
        y = x.copy()  # the batch copy the reader's buffer makes
        augment_dihedral(y, rng.integers(0, 8, len(y)))
        rows = np.flatnonzero(rng.random(len(y)) < 0.5)
        y[rows[:, None, None], np.arange(y.shape[1])[None, :, None], *np.nonzero(disc)] = 0.0

    return {"read+decode": _rate(read, n), "normalise": _rate(lambda: normalize_stamps(x), len(x)),
            "augment+dropout": _rate(augment, len(x))}


def bench_training(uri: str, batch_size: int = 64, steps: int = 20) -> tuple[float, float]:
    """(steps/s, stamps/s) of resnet_small training steps on batches already in memory."""
    import torch

    from jobs.model import ModelConfig, build_model
    from jobs.reader import StampStream

    torch.manual_seed(0)
    batches = []
    for b in StampStream(uri, split=None, batch_size=batch_size, shuffle_buffer=0):
        if len(b["label"]) == batch_size:
            batches.append(b)
    model = build_model(ModelConfig(arch="resnet_small"))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    model.train()

    def step(b):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(b["image"]), b["label"])
        loss.backward()
        opt.step()

    step(batches[0])  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    dt = time.perf_counter() - t0
    return steps / dt, steps * batch_size / dt


def _recompress_images(src_dir: str, dst_dir: str, codec: str) -> str:
    """A copy of a stamps dataset whose image/invvar columns use ``codec`` (the rest stays zstd)."""
    import shutil

    os.makedirs(dst_dir, exist_ok=True)
    for name in sorted(os.listdir(src_dir)):
        if name.endswith(".parquet"):
            table = pq.read_table(os.path.join(src_dir, name))
            codecs = {c: codec if c in ("image", "invvar") else "zstd" for c in table.column_names}
            pq.write_table(table, os.path.join(dst_dir, name), compression=codecs, row_group_size=256,
                           use_dictionary=[c for c in table.column_names if c not in ("image", "invvar")])
        else:
            shutil.copy(os.path.join(src_dir, name), dst_dir)
    return dst_dir


def run() -> None:
    """Print the benchmark lines (< 60 s on 2 CPU cores)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="dhs-bench-train-") as tmp:
        t0 = time.perf_counter()
        default_dir, plain_dir = os.path.join(tmp, "default"), os.path.join(tmp, "plain")
        info = make_synthetic_stamps(default_dir, n_hosts=1024, n_files=4, seed=1)
        make_synthetic_stamps(plain_dir, n_hosts=1024, n_files=4, seed=1, image_dictionary=False)
        print(f"training: synthetic stamps {info['n_rows']} rows 3x64x64 float32, zstd, 256-row groups, "
              f"{time.perf_counter() - t0:.1f} s")
        for label, d in (("image dictionary on (pyarrow default)", default_dir), ("image PLAIN", plain_dir)):
            stages = bench_reader_stages(d)
            parts = ", ".join(f"{k} {v:,.0f}" for k, v in stages.items())
            print(f"training: reader stages alone [{label}]: {parts} stamps/s")
        lz4_dir = _recompress_images(plain_dir, os.path.join(tmp, "lz4"), "lz4")
        rates = {label: bench_reader(d) for label, d in (("dictionary", default_dir), ("plain", plain_dir),
                                                         ("lz4", lz4_dir))}
        print(f"training: reader end-to-end, 1 process (read+decode+normalise+shuffle+augment+core dropout): "
              f"{rates['dictionary']:,.0f} stamps/s [image dictionary], {rates['plain']:,.0f} [image PLAIN, "
              f"as 4c writes], {rates['lz4']:,.0f} [image PLAIN + lz4 instead of zstd] (target >= 20,000)")
        steps_s, train_rate = bench_training(default_dir)
        print(f"training: resnet_small CPU train step, batch 64, {torch.get_num_threads()} threads: "
              f"{steps_s:.2f} steps/s = {train_rate:,.0f} stamps/s")
        ratio = rates["dictionary"] / train_rate
        verdict = "not input-bound" if ratio > 1 else "INPUT-BOUND"
        print(f"training: reader/train ratio {ratio:.1f}x -> CPU training {verdict}; "
              f"a GPU at R stamps/s needs ~R/{rates['dictionary']:,.0f} reader workers")


if __name__ == "__main__":
    run()
