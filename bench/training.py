"""Training benchmark: is CPU training input-bound? (reader stamps/s vs model stamps/s).

``run()`` writes a small synthetic stamps dataset (the stamps Parquet layout of
``jobs.runtime.schema.STAMP_SCHEMA``: part files + ``_manifest.json``), then measures on the same data

* the reader alone, as ``dhs train`` reads (train split, decode, border statistics, shuffle,
  normalisation, core dropout; the flips/rotations are drawn and applied on the training
  device), stamps/s in one process (DESIGN.md target: >= 20k stamps/s at 3x64x64), next to the
  same reader with the image column at zstd's default level, with the flips/rotations in numpy,
  and on row groups of mixed splits, and each reader stage alone;
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
from dhs_gen.physics.psf import gaussian_kernel
from jobs.runtime.schema import STAMP_SCHEMA, encode_image
from jobs.runtime.storage import stamp_parquet_options

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
                          image_zstd_level: int | None = None, one_split_row_groups: bool = True) -> dict:
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
    image_zstd_level : int, optional
        Compress the ``image`` column with zstd at this level; None: as stage 4c writes it
        (``jobs.runtime.storage.IMAGE_COMPRESSION``).
    one_split_row_groups : bool
        Like 4c, sort each file by split and cut it into row groups (<= 256 rows) of one split;
        False: 256-row groups in host order, splits mixed (no row group can be skipped).

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
    options = stamp_parquet_options(STAMP_SCHEMA)
    if image_zstd_level is not None:
        options["compression"]["image"] = "zstd"
        options["compression_level"] = {"image": image_zstd_level}
    for k, part in enumerate(parts):
        name = f"part-{k:05d}.parquet"
        if one_split_row_groups:
            part = sorted(part, key=lambda r: splits.index(r["split"]))  # stable: pairs stay adjacent
        with pq.ParquetWriter(os.path.join(out_dir, name), STAMP_SCHEMA, **options) as writer:
            start = 0
            while start < len(part):
                end = start + 1
                while end < len(part) and end - start < 256 and (
                        part[end]["split"] == part[start]["split"] or not one_split_row_groups):
                    end += 1
                writer.write_table(pa.Table.from_pylist(part[start:end], schema=STAMP_SCHEMA))
                start = end
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


def _reader(uri, split: str | None = "train", defer_dihedral: bool = True, batch_size: int = 256):
    """The reader as ``dhs train`` reads: the ``split`` rows, decoded, normalised, shuffled,
    augmented (drawn only with ``defer_dihedral``) and core-dropped."""
    from jobs.training.reader import StampStream

    return StampStream(uri, split=split, batch_size=batch_size, shuffle_buffer=1024, seed=0, augment=True,
                       core_dropout_p=0.5, core_radius_pix=5, defer_dihedral=defer_dihedral)


def bench_readers(streams: dict, rounds: int) -> dict:
    """Stamps/s per epoch of each stream, epochs interleaved round-robin (``rounds`` each, after
    one warm-up epoch each) so that a slow spell of a shared machine hits every variant alike."""
    rates: dict = {k: [] for k in streams}
    for epoch in range(rounds + 1):
        for name, ds in streams.items():
            ds.set_epoch(epoch)
            n, t0 = 0, time.perf_counter()
            for b in ds:
                n += len(b["label"])
            if epoch:
                rates[name].append(n / (time.perf_counter() - t0))
    return rates


def bench_reader_stages(uri: str) -> dict:
    """Stamps/s of each reader stage alone: Parquet read + decode, border statistics, normalisation
    of a gathered batch, dihedral maps in numpy (reader) and in torch (training device, here CPU)."""
    import torch

    from jobs.runtime.outputs import dataset_files
    from jobs.training.preprocess import apply_stats_, augment_dihedral, border_stats, dihedral_torch
    from jobs.training.reader import _decode_images, _iter_file_batches

    files = dataset_files(uri)
    cols = ["image", "image_shape", "label", "split", "cutout_ok"]

    def read():
        return [_decode_images(b.column("image"), b.column("image_shape"))
                for f in files for b in _iter_file_batches(f, cols, 1024)]

    arrays = read()
    n = sum(len(a) for a in arrays)
    x = np.concatenate(arrays[:2])
    med, inv = border_stats(x)
    rng = np.random.default_rng(0)
    ops = rng.integers(0, 8, len(x))
    xt, ops_t = torch.from_numpy(x), torch.from_numpy(ops)
    return {"read+decode": _rate(read, n), "border stats": _rate(lambda: border_stats(x), len(x)),
            "normalise": _rate(lambda: apply_stats_(x.copy(), med, inv), len(x)),
            "dihedral numpy": _rate(lambda: augment_dihedral(x.copy(), ops), len(x)),
            "dihedral torch": _rate(lambda: dihedral_torch(xt, ops_t), len(x))}


def bench_training(uri: str, batch_size: int = 64, steps: int = 20) -> tuple[float, float]:
    """(steps/s, stamps/s) of resnet_small training steps on batches already in memory."""
    import torch

    from jobs.training.model import ModelConfig, build_model
    from jobs.training.reader import StampStream

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


def _image_column_bytes(directory: str) -> tuple[int, int]:
    """(compressed, uncompressed) bytes of the ``image`` column over a dataset's part files."""
    comp = raw = 0
    for name in sorted(os.listdir(directory)):
        if name.endswith(".parquet"):
            md = pq.ParquetFile(os.path.join(directory, name)).metadata
            for i in range(md.num_row_groups):
                for j in range(md.num_columns):
                    col = md.row_group(i).column(j)
                    if col.path_in_schema == "image":
                        comp, raw = comp + col.total_compressed_size, raw + col.total_uncompressed_size
    return comp, raw


def real_cutout_compression() -> dict | None:
    """Compression ratio of the ``image`` column on the real DR10 cutouts of the shared data
    (non-overlapping 50x50 grz tiles, so no tile repeats another's pixels) per codec; None when
    the shared data is absent."""
    import io

    from jobs.evaluation.realism import _npz_lens_anchors
    from jobs.runtime.config import shared_data_dir

    shared = shared_data_dir()
    cutouts = _npz_lens_anchors(shared) if (shared / "dr10" / "cutouts").is_dir() else []
    if not cutouts:
        return None
    tiles = []
    for row in cutouts:
        cut = row["image"]  # (grz, H, W) float32
        for y in range(0, cut.shape[1] - 49, 50):
            for x in range(0, cut.shape[2] - 49, 50):
                tiles.append(np.ascontiguousarray(cut[:, y:y + 50, x:x + 50]).tobytes())
    table = pa.table({"image": tiles})
    ratios = {}
    for name, kw in (("zstd level -1", {"compression": "zstd", "compression_level": -1}),
                     ("zstd level 1", {"compression": "zstd", "compression_level": 1}), ("lz4", {"compression": "lz4"})):
        buf = io.BytesIO()
        pq.write_table(table, buf, use_dictionary=False, **kw)
        md = pq.ParquetFile(io.BytesIO(buf.getvalue())).metadata.row_group(0).column(0)
        ratios[name] = md.total_uncompressed_size / md.total_compressed_size
    return {"tiles": len(tiles), "files": len(cutouts), "ratios": ratios}


def run() -> None:
    """Print the benchmark lines (< 60 s on 2 CPU cores)."""
    import torch

    with tempfile.TemporaryDirectory(prefix="dhs-bench-train-") as tmp:
        t0 = time.perf_counter()
        fast_dir, default_dir, mixed_dir = (os.path.join(tmp, d) for d in ("fast", "default", "mixed"))
        info = make_synthetic_stamps(fast_dir, n_hosts=1536, n_files=4, seed=1)
        make_synthetic_stamps(default_dir, n_hosts=1536, n_files=4, seed=1, image_zstd_level=1)
        make_synthetic_stamps(mixed_dir, n_hosts=1536, n_files=4, seed=1, one_split_row_groups=False)
        n_train = sum(v for (split, _), v in info["counts"].items() if split == "train")
        print(f"training: synthetic stamps {info['n_rows']} rows ({n_train} train) 3x64x64 float32, image "
              f"uncompressed, row groups of one split (as stage 4c writes), {time.perf_counter() - t0:.1f} s")
        real = real_cutout_compression()
        if real is None:
            print("training: image compression on real DR10 cutouts: skipped (no shared data at $DHS_SHARED_DATA)")
        else:
            ratios = ", ".join(f"{k} {v:.2f}x" for k, v in real["ratios"].items())
            print(f"training: image compression on real DR10 cutouts ({real['tiles']} 3x50x50 tiles of "
                  f"{real['files']} cutouts): {ratios} (why stage 4c stores the column uncompressed)")
        comp, raw = _image_column_bytes(default_dir)
        print(f"training: image compression on these synthetic stamps (more compressible than real): "
              f"zstd level 1 {raw / comp:.2f}x")
        for label, d in (("image uncompressed, as 4c writes", fast_dir), ("image at zstd level 1", default_dir)):
            stages = bench_reader_stages(d)
            parts = ", ".join(f"{k} {v:,.0f}" for k, v in stages.items())
            print(f"training: reader stages alone [{label}]: {parts} stamps/s")
        # An epoch over 32 part files (the 4 written, each listed 8 times: ~17k train stamps), so the
        # per-epoch costs (buffer fill, file opens) weigh as little as in a survey-scale epoch.
        fast, default, mixed = [fast_dir] * 8, [default_dir] * 8, [mixed_dir] * 8
        runs = bench_readers({"train": _reader(fast), "numpy": _reader(fast, defer_dihedral=False),
                              "level1": _reader(default), "mixed": _reader(mixed)}, rounds=5)
        rates = {k: float(np.median(v)) for k, v in runs.items()}
        spread = f"{min(runs['train']):,.0f}-{max(runs['train']):,.0f}"
        print(f"training: reader end-to-end, 1 process, as dhs train reads (train split; read, decode, shuffle, "
              f"border stats, normalise, core dropout; flips/rotations drawn, applied on the training device), "
              f"median of {len(runs['train'])} epochs interleaved with the variants below: "
              f"{rates['train']:,.0f} stamps/s (epochs {spread}; target >= 20,000)")
        print(f"training: same reader with flips/rotations applied in numpy {rates['numpy']:,.0f} = "
              f"{rates['numpy'] / rates['train']:.2f}x; image at zstd level 1 {rates['level1']:,.0f} = "
              f"{rates['level1'] / rates['train']:.2f}x; row groups of mixed splits (none skipped) "
              f"{rates['mixed']:,.0f} = {rates['mixed'] / rates['train']:.2f}x")
        steps_s, train_rate = bench_training(fast_dir)
        print(f"training: resnet_small CPU train step, batch 64, {torch.get_num_threads()} threads: "
              f"{steps_s:.2f} steps/s = {train_rate:,.0f} stamps/s")
        ratio = rates["train"] / train_rate
        verdict = "not input-bound" if ratio > 1 else "INPUT-BOUND"
        print(f"training: reader/train ratio {ratio:.1f}x -> CPU training {verdict}; "
              f"a GPU at R stamps/s needs ~R/{rates['train']:,.0f} reader workers")


if __name__ == "__main__":
    run()
