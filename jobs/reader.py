"""Streaming training reader: stamps Parquet -> normalised, augmented torch batches.

The dataset is never loaded whole: each worker streams Arrow record batches from its share of
the part files, keeps only rows of the wanted ``split`` with ``cutout_ok == 1``, decodes the
``image`` bytes without a per-row copy, normalises them (:func:`normalize_stamps`, the one
preprocessing shared with scoring) and passes them through a fixed-size shuffle buffer. Memory
per worker is one record batch plus the buffer (``shuffle_buffer`` stamps, ~49 kB each at
3x64x64 float32), whatever the dataset size.

Determinism: file order, buffer draws, augmentation and core dropout come from
``numpy.random.default_rng([seed, epoch, worker_id])``; the same seed, epoch and worker count
give the same batches. Paired mode (Gen5-Prime) shuffles *groups* of rows sharing a
``pair_id`` (injection, its control, its azimuthal-shuffle hard negative) so a group always
lands in one batch; a group is complete once all its rows in its part file were read (the
writer keeps one host's rows in one task file).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.negatives import core_mask  # one disc for hard negatives, core dropout and leakage gates
from jobs import outputs
from jobs.schema import decode_image
from jobs.shuffle_buffer import _GroupBuffer, _split_complete_groups
from jobs.storage import resolve

# Width (pixels) of the stamp border whose pixels set the background level and noise scale:
# 4 px (1.05") is 960 of 4096 pixels at 64x64, clear of arcs (theta_E <= 3" = 11.5 px from the
# centre, the frame starts 28 px out).
NORM_BORDER_PIX = 4
# Every other frame pixel: 480 samples per band at 64x64 (MAD to ~5%), and numpy's partition is
# ~4x faster per pixel below ~500 elements than at 960 (measured), the reader's hot spot.
NORM_SAMPLE_STRIDE = 2
_NORM_CHUNK = 64
MAD_TO_SIGMA = 1.4826  # sigma / MAD of a Gaussian
SPLITS = ("train", "val", "test")
# Columns the reader always needs; metadata columns come on top.
_BASE_COLUMNS = ("image", "image_shape", "label", "split", "cutout_ok")


def _border_pixels(images: np.ndarray, width: int) -> np.ndarray:
    """(N, B, H, W) -> (N, B, M) pixels of the outer frame of ``width`` pixels."""
    n, b, h, w = images.shape
    parts = [images[:, :, :width, :], images[:, :, h - width:, :],
             images[:, :, width:h - width, :width], images[:, :, width:h - width, w - width:]]
    return np.concatenate([p.reshape(n, b, -1) for p in parts], axis=-1)


def normalize_stamps(images: np.ndarray, border_pix: int = NORM_BORDER_PIX) -> np.ndarray:
    """Robust per-stamp, per-band normalisation: ``(x - median) / (1.4826 * MAD)`` of the border.

    The median and MAD come from the outer frame of ``border_pix`` pixels (mostly sky; every
    other pixel of it, see ``NORM_SAMPLE_STRIDE``), so the output is in units of the background
    noise sigma with the sky at 0, insensitive to the host, the arc or a bright outlier. Where the
    border MAD is 0 (a constant or zero-filled border) the whole band's MAD about its median is used, and where that
    is 0 too, the scale is 1. Non-finite pixels become 0 (the background level).

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
    x = np.asarray(images, dtype=np.float32)
    single = x.ndim == 3
    if single:
        x = x[None]
    if x.ndim != 4:
        raise InvalidValueError("images", x, "must have shape (N, bands, H, W) or (bands, H, W)")
    n, b, h, w = x.shape
    check_range("border_pix", border_pix, 1, (min(h, w) - 1) // 2)
    out = np.empty_like(x)
    # Chunks of _NORM_CHUNK stamps keep the working set in cache (1.5x faster than one pass).
    for s in range(0, n, _NORM_CHUNK):
        _normalize_chunk(x[s:s + _NORM_CHUNK], out[s:s + _NORM_CHUNK], int(border_pix))
    return out[0] if single else out


def _normalize_chunk(x: np.ndarray, out: np.ndarray, border_pix: int) -> None:
    frame = np.ascontiguousarray(_border_pixels(x, border_pix)[..., ::NORM_SAMPLE_STRIDE])
    k = frame.shape[-1] // 2  # the (M//2)-th order statistic: one in-place partition per statistic
    frame.partition(k, axis=-1)
    med = frame[..., k].copy()
    np.abs(np.subtract(frame, med[..., None], out=frame), out=frame)
    frame.partition(k, axis=-1)
    scale = MAD_TO_SIGMA * frame[..., k]
    bad = ~(scale > 0)
    if bad.any():
        # Guard MAD = 0: fall back to the whole band, then to 1 (never divide by zero).
        rows, bands = np.nonzero(bad)
        whole = x[rows, bands].reshape(len(rows), -1)
        kw = whole.shape[-1] // 2
        med_whole = np.partition(whole, kw, axis=-1)[:, kw]
        mad_whole = np.partition(np.abs(whole - med_whole[:, None]), kw, axis=-1)[:, kw]
        scale[rows, bands] = np.where(mad_whole > 0, MAD_TO_SIGMA * mad_whole, 1.0)
    np.subtract(x, med[..., None, None], out=out)
    np.multiply(out, (1.0 / scale)[..., None, None].astype(np.float32), out=out)
    if not np.isfinite(out).all():
        out[~np.isfinite(out)] = 0.0


def augment_dihedral(images: np.ndarray, ops: np.ndarray) -> np.ndarray:
    """Apply one of the 8 flips/90-degree rotations to each stamp, in place.

    Parameters
    ----------
    images : np.ndarray
        ``(N, B, H, W)`` with H == W (any unit; values are only moved).
    ops : np.ndarray
        ``(N,)`` ints in [0, 8): ``op % 4`` quarter turns, then a left-right flip if ``op >= 4``.

    Returns
    -------
    np.ndarray
        ``images``, transformed.
    """
    for op in range(1, 8):
        idx = np.flatnonzero(ops == op)
        if idx.size:
            t = np.rot90(images[idx], op % 4, axes=(-2, -1))
            images[idx] = t[..., ::-1] if op >= 4 else t
    return images


def dataset_files(uri_or_uris) -> list[str]:
    """Part-file URIs of a stage output (its ``_manifest.json`` ``files``), a file, or a list of either."""
    if isinstance(uri_or_uris, list | tuple):
        return [f for u in uri_or_uris for f in dataset_files(u)]
    uri = str(uri_or_uris)
    if uri.endswith(".parquet"):
        return [uri]
    return list(outputs.dataset_files(uri))


def _iter_file_batches(uri: str, columns: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Record batches of one Parquet file, at most ``batch_rows`` rows each.

    Batches follow the file's row groups when those are no larger than ``batch_rows``: a batch
    that spans two row groups costs a concatenation copy, which halves the read rate (measured:
    27k vs 15k stamps/s for 256-row groups read as 256- vs 512-row batches).
    """
    fs, path = resolve(uri)
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        group_rows = max((pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)), default=0)
        rows = group_rows if 0 < group_rows <= batch_rows else batch_rows
        yield from pf.iter_batches(batch_size=rows, columns=list(columns))


def _decode_images(col: pa.Array, shapes: pa.Array) -> np.ndarray:
    """Binary ``image`` column -> (N, B, H, W) float32 view of the Arrow buffer (no per-row copy)."""
    n = len(col)
    dims = np.asarray(shapes.flatten().to_numpy(zero_copy_only=False))
    if n == 0 or dims.size % n or not np.all(dims.reshape(n, -1) == dims[: dims.size // n]):
        rows = shapes.to_pylist()
        raise InvalidValueError("image_shape", rows[:4], "every stamp of a batch must have the same 3-D shape")
    shape = tuple(int(d) for d in dims[: dims.size // n])
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset:col.offset + n + 1]
    nbytes = 4 * int(np.prod(shape))
    if col.null_count or not np.all(np.diff(offsets) == nbytes):
        # Odd rows (nulls, wrong lengths): the checked per-row decoder raises with the sizes.
        return np.stack([decode_image(b, shape) for b in col.to_pylist()])
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return data.view(np.float32).reshape((n, *shape))


class StampStream(IterableDataset):
    """Iterable of batches ``{"image": (N,B,H,W) float32 tensor, "label": (N,) float32 tensor, meta...}``.

    Parameters
    ----------
    uris : str or list of str
        Stage output directories (with ``_manifest.json``) or part files; local or ``s3://``.
    split : str or None
        Keep rows of this split only (``train``/``val``/``test``); None keeps all.
    batch_size : int
        Stamps per batch (paired batches may be a little smaller: groups are never split).
    shuffle_buffer : int
        Stamps held for shuffling; 0 keeps file order (and no file shuffling): use for eval.
    seed : int
        Seed of every random draw; call :meth:`set_epoch` to change draws per epoch.
    augment : bool
        Random flips and 90-degree rotations (the 8 dihedral symmetries of the pixel grid).
    core_dropout_p : float
        Probability that a stamp's central disc is set to 0 (the background level) after
        normalisation (Gen5-Prime core dropout).
    core_radius_pix : float
        Radius of that disc, pixels.
    paired : bool
        Keep rows sharing ``pair_id`` in the same batch.
    columns : sequence of str
        Extra metadata columns returned per batch: numeric columns as float64 tensors, others as
        lists (e.g. ``task_id``, ``kind``, ``source_mode``, ``theta_e_arcsec``, ``arc_snr``).
    read_batch_rows : int
        Most rows per Arrow record batch read from Parquet (a file's row group when smaller).
    drop_last : bool
        Drop a final batch smaller than ``batch_size`` (training with BatchNorm).
    """

    def __init__(self, uris, split: str | None = "train", batch_size: int = 256, shuffle_buffer: int = 2048,
                 seed: int = 0, augment: bool = False, core_dropout_p: float = 0.0, core_radius_pix: float = 5.0,
                 paired: bool = False, columns: Sequence[str] = (), read_batch_rows: int = 1024,
                 drop_last: bool = False):
        super().__init__()
        self.files = dataset_files(uris)
        if split is not None and split not in SPLITS:
            raise InvalidValueError("split", split, f"must be one of {list(SPLITS)} or None")
        self.split = split
        self.batch_size = int(check_range("batch_size", batch_size, 1, 1 << 20))
        self.shuffle_buffer = int(check_range("shuffle_buffer", shuffle_buffer, 0, 1 << 24))
        self.seed = int(seed)
        self.augment = bool(augment)
        self.core_dropout_p = check_range("core_dropout_p", core_dropout_p, 0.0, 1.0)
        self.core_radius_pix = check_range("core_radius_pix", core_radius_pix, 0.0, 1e4)
        self.paired = bool(paired)
        self.columns = tuple(c for c in columns if c not in ("image", "label"))
        self.read_batch_rows = int(check_range("read_batch_rows", read_batch_rows, 1, 1 << 20))
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws the next iteration makes (call before iterating)."""
        self.epoch = int(epoch)

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _chunks(self, files: list[str]) -> Iterator[tuple[dict, np.ndarray]]:
        """(columns of kept rows, sizes of the row groups they form, in row order) per record batch."""
        read_cols = list(dict.fromkeys(_BASE_COLUMNS + (("pair_id",) if self.paired else ()) + self.columns))
        for uri in files:
            counts = self._pair_counts(uri) if self.paired else {}
            carry: dict | None = None  # rows of groups not yet complete (paired mode)
            for batch in _iter_file_batches(uri, read_cols, self.read_batch_rows):
                batch = batch.filter(self._keep_mask(batch))
                if batch.num_rows == 0:
                    continue
                cols = {"image": _decode_images(batch.column("image"), batch.column("image_shape")),
                        "label": batch.column("label").to_numpy(zero_copy_only=False).astype(np.float32)}
                for c in self.columns:
                    arr = batch.column(c)
                    numeric = pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)
                    cols[c] = (arr.to_numpy(zero_copy_only=False).astype(np.float64) if numeric
                               else np.asarray(arr.to_pylist(), dtype=object))
                if not self.paired:
                    yield cols, np.ones(batch.num_rows, dtype=np.int64)
                    continue
                cols["_pair_id"] = np.asarray(batch.column("pair_id").to_pylist(), dtype=object)
                if carry is not None:
                    cols = {k: np.concatenate([carry[k], v]) for k, v in cols.items()}
                done, sizes, carry = _split_complete_groups(cols, counts)
                if len(sizes):
                    yield done, sizes
            if carry is not None and len(carry["label"]):
                # Cannot happen when counts came from the same rows; loud on purpose.
                raise InvalidValueError("pair_id", sorted(set(carry["_pair_id"]))[:3], f"incomplete groups in {uri}")

    def _pair_counts(self, uri: str) -> dict:
        """pair_id -> number of kept rows in this file (reads three small columns)."""
        counts: dict = {}
        for b in _iter_file_batches(uri, ["pair_id", "split", "cutout_ok"], 65536):
            vc = pc.value_counts(b.filter(self._keep_mask(b)).column("pair_id"))
            for pid, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist(), strict=True):
                counts[pid] = counts.get(pid, 0) + n
        return counts

    def _keep_mask(self, batch) -> pa.Array:
        ok = pc.equal(batch.column("cutout_ok"), 1)
        if self.split is not None:
            ok = pc.and_(ok, pc.equal(batch.column("split"), self.split))
        return pc.fill_null(ok, False)

    def __iter__(self) -> Iterator[dict]:
        worker_id, n_workers = self._worker()
        files = list(self.files)
        shuffle = self.shuffle_buffer > 0
        if shuffle:
            # Same permutation in every worker (seed, epoch only), then disjoint shards.
            files = [files[i] for i in np.random.default_rng([self.seed, self.epoch]).permutation(len(files))]
        files = files[worker_id::n_workers]
        rng = np.random.default_rng([self.seed, self.epoch, worker_id])
        buffer = _GroupBuffer(max(self.shuffle_buffer, self.batch_size))
        for cols, sizes in self._chunks(files):
            cols["image"] = normalize_stamps(cols["image"])
            buffer.add(cols, sizes)
            while buffer.n_rows >= max(self.shuffle_buffer, self.batch_size):
                yield self._finish(buffer.pop(self.batch_size, rng if shuffle else None), rng)
        while buffer.n_rows:
            batch = buffer.pop(self.batch_size, rng if shuffle else None)
            if self.drop_last and len(batch["label"]) < self.batch_size:
                break
            yield self._finish(batch, rng)

    def _finish(self, batch: dict, rng: np.random.Generator) -> dict:
        """Augmentation and core dropout (in place on the batch's own copy), then tensors."""
        images = batch["image"]
        n, _, h, w = images.shape
        out = {}
        if self.augment:
            augment_dihedral(images, rng.integers(0, 8, size=n))
        if self.core_dropout_p > 0:
            drop = rng.random(n) < self.core_dropout_p
            if drop.any():
                # Index rows and pixels together: images[drop][..., disc] = 0 would write to a copy.
                rows = np.flatnonzero(drop)
                yy, xx = np.nonzero(core_mask(h, w, self.core_radius_pix))
                images[rows[:, None, None], np.arange(images.shape[1])[None, :, None], yy, xx] = 0.0
            out["core_dropped"] = torch.from_numpy(drop)
        out["image"] = torch.from_numpy(images)
        out["label"] = torch.from_numpy(batch["label"])
        for c in self.columns:
            v = batch[c]
            out[c] = v.tolist() if v.dtype == object else torch.from_numpy(v)
        if self.paired:
            out["pair_id"] = batch["_pair_id"].tolist()
        return out


def make_loader(uris, split: str | None = "train", batch_size: int = 256, shuffle_buffer: int = 2048,
                seed: int = 0, num_workers: int = 0, augment: bool = False, core_dropout_p: float = 0.0,
                core_radius_pix: float = 5.0, paired: bool = False, columns: Sequence[str] = (),
                drop_last: bool = False, read_batch_rows: int = 1024, pin_memory: bool = False) -> DataLoader:
    """A :class:`torch.utils.data.DataLoader` over a :class:`StampStream` (batches made by the stream).

    Parameters are those of :class:`StampStream`, plus ``num_workers`` (processes; part files are
    sharded across them) and ``pin_memory`` (for CUDA). Call ``loader.dataset.set_epoch(e)``
    before each epoch for new draws. Returns batches as dicts (see :class:`StampStream`).
    """
    ds = StampStream(uris, split=split, batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed,
                     augment=augment, core_dropout_p=core_dropout_p, core_radius_pix=core_radius_pix,
                     paired=paired, columns=columns, read_batch_rows=read_batch_rows, drop_last=drop_last)
    check_range("num_workers", num_workers, 0, 256)
    g = torch.Generator()
    g.manual_seed(int(seed))
    return DataLoader(ds, batch_size=None, num_workers=int(num_workers), pin_memory=pin_memory, generator=g,
                      persistent_workers=False)


def count_rows(uris, split: str | None = None) -> dict:
    """Row counts from the ``split`` and ``cutout_ok`` columns only (cheap).

    Returns
    -------
    dict
        ``n_rows`` (all rows), ``n_split`` (rows of ``split``), ``n_ok`` (of those, cutout_ok == 1:
        what the reader yields) and ``n_rejected`` (of those, cutout_ok != 1: skipped, counted).
    """
    n_rows = n_split = n_ok = 0
    for uri in dataset_files(uris):
        for b in _iter_file_batches(uri, ["split", "cutout_ok"], 65536):
            n_rows += b.num_rows
            in_split = pc.fill_null(pc.equal(b.column("split"), split), False) if split else pa.array(
                np.ones(b.num_rows, bool))
            n_split += pc.sum(pc.cast(in_split, pa.int64())).as_py() or 0
            ok = pc.and_(in_split, pc.fill_null(pc.equal(b.column("cutout_ok"), 1), False))
            n_ok += pc.sum(pc.cast(ok, pa.int64())).as_py() or 0
    return {"n_rows": n_rows, "n_split": n_split, "n_ok": n_ok, "n_rejected": n_split - n_ok}
