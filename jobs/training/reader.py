"""Streaming training reader: stamps Parquet -> normalised, augmented torch batches.

The dataset is never loaded whole: each worker streams Arrow record batches from its share of
the part files (skipping row groups of other splits), keeps only rows of the wanted ``split``
with ``cutout_ok == 1`` and views the ``image`` bytes in place; those record batches themselves
are the shuffle buffer (:class:`jobs.training.shuffle_buffer._ChunkBuffer`, no copy in). A batch is
gathered from them 32 stamps at a time, each piece measured (border statistics) and normalised
while in cache: the values of :func:`jobs.training.preprocess.normalize_stamps`, the one preprocessing
shared with scoring. The flips/rotations are applied here or, with ``defer_dihedral``, on the
training device. Memory per worker is at most ~2x ``shuffle_buffer`` stamps (~49 kB each at
3x64x64 float32) plus one record batch, whatever the dataset size.

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

from dhs_gen.augmentation.negatives import core_mask
from dhs_gen.errors import InvalidValueError, check_range
from jobs.runtime.outputs import dataset_files
from jobs.runtime.schema import decode_image
from jobs.runtime.storage import open_for_read
from jobs.training.preprocess import apply_stats_, augment_dihedral, border_stats
from jobs.training.shuffle_buffer import _ChunkBuffer, _split_complete_groups, gather_rows

SPLITS = ("train", "val", "test")
# Columns the reader always needs; metadata columns come on top.
_BASE_COLUMNS = ("image", "image_shape", "label", "split", "cutout_ok")
# Stamps copied out of the shuffle buffer and normalised at a time: ~0.8 MB at 3x64x64, so the
# normalisation passes run in cache.
_GATHER_CHUNK = 32


def _may_hold_split(row_group: pq.RowGroupMetaData, split: str | None) -> bool:
    """False only when the row group's ``split`` statistics exclude ``split`` (then it is skipped)."""
    if split is None:
        return True
    for j in range(row_group.num_columns):
        col = row_group.column(j)
        if col.path_in_schema == "split":
            st = col.statistics
            return st is None or not st.has_min_max or st.min <= split <= st.max
    return True


def _iter_file_batches(uri: str, columns: Sequence[str], batch_rows: int, split: str | None = None
                       ) -> Iterator[pa.RecordBatch]:
    """Record batches of one Parquet file, at most ``batch_rows`` rows each.

    Row groups whose ``split`` statistics rule out ``split`` are not read at all: stage 4c sorts
    a partition by split then brick, so most row groups hold one split, and training does not
    decode the validation and test stamps. Batches never span row groups (a row group larger
    than ``batch_rows`` is cut): a batch that spans two row groups costs a concatenation
    copy, which halves the read rate (measured: 27k vs 15k stamps/s for 256-row groups read as
    256- vs 512-row batches).
    """
    with open_for_read(uri) as f:
        pf = pq.ParquetFile(f)
        groups = [i for i in range(pf.num_row_groups) if _may_hold_split(pf.metadata.row_group(i), split)]
        for i in groups:
            # One row group per call, so a batch never spans two (uneven groups: 4c cuts at split
            # changes); one thread: a loader worker is one process per core.
            yield from pf.iter_batches(batch_size=batch_rows, row_groups=[i], columns=list(columns),
                                       use_threads=False)


def _decode_images(col: pa.Array, shapes: pa.Array) -> np.ndarray:
    """Binary ``image`` column -> (N, B, H, W) float32 view of the Arrow buffer (no per-row copy)."""
    n = len(col)
    dims = np.asarray(shapes.flatten().to_numpy(zero_copy_only=False))
    if n == 0 or dims.size % n or not np.all(dims.reshape(n, -1) == dims[: dims.size // n]):
        rows = shapes.to_pylist()
        odd = [r for r in rows if r != rows[0]][:1]
        raise InvalidValueError("image_shape", rows[:1] + odd, "every stamp of a batch must have the same 3-D shape")
    shape = tuple(int(d) for d in dims[: dims.size // n])
    if len(shape) != 3:
        raise InvalidValueError("image_shape", list(shape), "must be (bands, H, W)")
    if col.null_count:
        raise InvalidValueError("image", None, f"{col.null_count} kept rows (cutout_ok = 1) have no image bytes")
    offsets = np.frombuffer(col.buffers()[1], dtype=np.int32)[col.offset:col.offset + n + 1]
    nbytes = 4 * int(np.prod(shape))
    if not np.all(np.diff(offsets) == nbytes):
        # Rows of the wrong length: the checked per-row decoder raises with the sizes.
        return np.stack([decode_image(b, shape) for b in col.to_pylist()])
    data = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0]:offsets[-1]]
    return data.view(np.float32).reshape((n, *shape))


class StampStream(IterableDataset):
    """Iterable of batches ``{"image": (N,B,H,W) float32 tensor, "label": (N,) float32 tensor, meta...}``.

    Batches also hold ``core_dropped`` (bool, with ``core_dropout_p > 0``), ``dihedral_op``
    (with ``defer_dihedral``) and ``pair_id`` (with ``paired``).

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
        Drop the rows left once fewer than ``batch_size`` remain at the end (training with
        BatchNorm; paired batches before that may still be a few rows short).
    defer_dihedral : bool
        With ``augment``: draw each stamp's flip/rotation but do not apply it; the batch carries
        it as ``dihedral_op`` (int64, see :func:`jobs.training.preprocess.dihedral_view`) for
        :func:`jobs.training.preprocess.dihedral_torch` on the training device. Same draws, same result
        (core dropout's disc is symmetric under the 8 maps), a third of the reader's CPU time.
    """

    def __init__(self, uris, split: str | None = "train", batch_size: int = 256, shuffle_buffer: int = 2048,
                 seed: int = 0, augment: bool = False, core_dropout_p: float = 0.0, core_radius_pix: float = 5.0,
                 paired: bool = False, columns: Sequence[str] = (), read_batch_rows: int = 1024,
                 drop_last: bool = False, defer_dihedral: bool = False):
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
        self.defer_dihedral = bool(defer_dihedral)
        self.epoch = 0
        self.n_nonfinite = 0   # rows left out for NaN / inf pixels, read by this process

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose draws the next iteration makes (call before iterating)."""
        self.epoch = int(epoch)

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (0, 1) if info is None else (info.id, info.num_workers)

    def _chunks(self, files: list[str]) -> Iterator[tuple[dict, np.ndarray]]:
        """(columns of kept rows, sizes of the row groups they form, in row order) per record batch."""
        read_cols = list(dict.fromkeys(_BASE_COLUMNS + (("pair_id",) if self.paired else ()) + self.columns))
        shape = None  # of the first stamps read: a batch stacks stamps, so all must match it
        for uri in files:
            counts = self._pair_counts(uri) if self.paired else {}
            carry: dict | None = None  # rows of groups not yet complete (paired mode)
            for batch in _iter_file_batches(uri, read_cols, self.read_batch_rows, split=self.split):
                keep = self._keep_mask(batch)
                n_keep = pc.sum(pc.cast(keep, pa.int64())).as_py() or 0
                if n_keep == 0:
                    continue
                if n_keep < batch.num_rows:
                    batch = batch.filter(keep)  # the one copy of kept rows; none when all are kept
                try:
                    images = _decode_images(batch.column("image"), batch.column("image_shape"))
                except ValueError as exc:
                    raise InvalidValueError("image", uri, f"unreadable stamps in this file: {exc}") from exc
                shape = shape or images.shape[1:]
                if images.shape[1:] != shape:
                    raise InvalidValueError("image_shape", list(images.shape[1:]),
                                            f"the stamps of one training stream must share one shape; {uri} "
                                            f"differs from the first stamps read, {list(shape)}")
                finite = np.isfinite(images).all(axis=(1, 2, 3))
                if not finite.all():
                    # as `dhs score` rejects them (nonfinite_pixels): left out and counted, never zero-filled
                    self.n_nonfinite += int((~finite).sum())
                    if self.paired:
                        for pid in np.asarray(batch.column("pair_id").to_pylist(), dtype=object)[~finite]:
                            counts[pid] -= 1
                    batch = batch.filter(pa.array(finite))
                    images = images[finite]
                    if batch.num_rows == 0:
                        continue
                cols = {"image": images,
                        "label": batch.column("label").to_numpy(zero_copy_only=False).astype(np.float32)}
                for c in self.columns:
                    arr = batch.column(c)
                    numeric = pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)
                    cols[c] = (arr.to_numpy(zero_copy_only=False).astype(np.float64) if numeric
                               else np.asarray(arr.to_pylist(), dtype=object))
                if not self.paired:
                    yield cols, np.ones(batch.num_rows, dtype=np.int64)
                    continue
                if batch.column("pair_id").null_count:
                    raise InvalidValueError("pair_id", None, f"paired training needs a pair_id on every kept row; "
                                                             f"{batch.column('pair_id').null_count} are null in {uri}")
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
        for b in _iter_file_batches(uri, ["pair_id", "split", "cutout_ok"], 65536, split=self.split):
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
        hold = max(self.shuffle_buffer, self.batch_size)
        buffer = _ChunkBuffer(dead_limit=hold)
        for cols, sizes in self._chunks(files):
            buffer.add(cols, sizes)
            while buffer.n_rows >= hold:
                yield self._batch(buffer.pop(self.batch_size, rng if shuffle else None), rng)
        while buffer.n_rows:
            if self.drop_last and buffer.n_rows < self.batch_size:
                break  # the final, incomplete batch (paired batches may be short throughout)
            yield self._batch(buffer.pop(self.batch_size, rng if shuffle else None), rng)

    def _batch(self, parts: list[tuple[dict, np.ndarray]], rng: np.random.Generator) -> dict:
        """Gather the drawn rows (``(chunk columns, rows)`` pairs): normalised, augmented and
        core-dropped images, then tensors."""
        n = sum(len(rows) for _, rows in parts)
        ops = rng.integers(0, 8, size=n) if self.augment else None
        images = np.empty((n, *parts[0][0]["image"].shape[1:]), dtype=np.float32)
        bounds = np.cumsum([0] + [len(rows) for _, rows in parts])
        for s in range(0, n, _GATHER_CHUNK):
            # Copy a few stamps out of the buffer, then measure and normalise them while they are
            # in cache (border statistics on the whole gathered batch ran ~2x slower, measured).
            e = min(s + _GATHER_CHUNK, n)
            for (cols, rows), lo, hi in zip(parts, bounds[:-1], bounds[1:], strict=True):
                if lo < e and hi > s:
                    a, b = max(lo, s), min(hi, e)
                    # mode="clip": with the default mode, take copies through a temporary (numpy docs).
                    np.take(cols["image"], rows[a - lo:b - lo], axis=0, out=images[a:b], mode="clip")
            apply_stats_(images[s:e], *border_stats(images[s:e]))
        out = {}
        if ops is not None:
            if self.defer_dihedral:
                out["dihedral_op"] = torch.from_numpy(ops)
            else:
                augment_dihedral(images, ops)
        _, _, h, w = images.shape
        if self.core_dropout_p > 0:
            drop = rng.random(n) < self.core_dropout_p
            if drop.any():
                # Index rows and pixels together: images[drop][..., disc] = 0 would write to a copy.
                rows = np.flatnonzero(drop)
                yy, xx = np.nonzero(core_mask(h, w, self.core_radius_pix))
                images[rows[:, None, None], np.arange(images.shape[1])[None, :, None], yy, xx] = 0.0
            out["core_dropped"] = torch.from_numpy(drop)
        out["image"] = torch.from_numpy(images)
        out["label"] = torch.from_numpy(gather_rows(parts, "label"))
        for c in self.columns:
            v = gather_rows(parts, c)
            out[c] = v.tolist() if v.dtype == object else torch.from_numpy(v)
        if self.paired:
            out["pair_id"] = gather_rows(parts, "_pair_id").tolist()
        return out


def make_loader(uris, split: str | None = "train", batch_size: int = 256, shuffle_buffer: int = 2048,
                seed: int = 0, num_workers: int = 0, augment: bool = False, core_dropout_p: float = 0.0,
                core_radius_pix: float = 5.0, paired: bool = False, columns: Sequence[str] = (),
                drop_last: bool = False, read_batch_rows: int = 1024, pin_memory: bool = False,
                defer_dihedral: bool = False) -> DataLoader:
    """A :class:`torch.utils.data.DataLoader` over a :class:`StampStream` (batches made by the stream).

    Parameters are those of :class:`StampStream`, plus ``num_workers`` (processes; part files are
    sharded across them) and ``pin_memory`` (for CUDA). Call ``loader.dataset.set_epoch(e)``
    before each epoch for new draws. Returns batches as dicts (see :class:`StampStream`).
    """
    ds = StampStream(uris, split=split, batch_size=batch_size, shuffle_buffer=shuffle_buffer, seed=seed,
                     augment=augment, core_dropout_p=core_dropout_p, core_radius_pix=core_radius_pix,
                     paired=paired, columns=columns, read_batch_rows=read_batch_rows, drop_last=drop_last,
                     defer_dihedral=defer_dihedral)
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
        what the reader yields), ``n_rejected`` (of those, cutout_ok != 1: skipped, counted) and
        ``n_label_1`` / ``n_label_0`` (the usable rows by class).
    """
    n_rows = n_split = n_ok = n_pos = 0
    for uri in dataset_files(uris):
        for b in _iter_file_batches(uri, ["split", "cutout_ok", "label"], 65536):
            n_rows += b.num_rows
            in_split = pc.fill_null(pc.equal(b.column("split"), split), False) if split else pa.array(
                np.ones(b.num_rows, bool))
            n_split += pc.sum(pc.cast(in_split, pa.int64())).as_py() or 0
            ok = pc.and_(in_split, pc.fill_null(pc.equal(b.column("cutout_ok"), 1), False))
            n_ok += pc.sum(pc.cast(ok, pa.int64())).as_py() or 0
            pos = pc.and_(ok, pc.fill_null(pc.equal(b.column("label"), 1), False))
            n_pos += pc.sum(pc.cast(pos, pa.int64())).as_py() or 0
    return {"n_rows": n_rows, "n_split": n_split, "n_ok": n_ok, "n_rejected": n_split - n_ok,
            "n_label_1": n_pos, "n_label_0": n_ok - n_pos}


def stamp_shape(uris) -> tuple:
    """``(bands, H, W)`` of the first usable stamp (cutout_ok == 1) of the dataset(s)."""
    for uri in dataset_files(uris):
        for b in _iter_file_batches(uri, ["image_shape", "cutout_ok"], 65536):
            for shape, ok in zip(b.column("image_shape").to_pylist(), b.column("cutout_ok").to_pylist(), strict=True):
                if ok == 1 and shape:
                    return tuple(int(s) for s in shape)
    raise InvalidValueError("stamps", str(uris), "has no usable stamp (cutout_ok = 1) to take the shape from")
