"""jobs.training.reader: streaming, normalised batches, filtering, determinism, augmentation, core dropout, pairs."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import jobs.training.reader as reader
from bench.training import make_synthetic_stamps
from jobs.runtime.schema import decode_image
from jobs.training.preprocess import dihedral_torch, normalize_stamps
from jobs.training.reader import StampStream, count_rows, make_loader
from jobs.training.shuffle_buffer import _ChunkBuffer

META = ("task_id", "split", "kind", "pair_id", "cutout_ok")


@pytest.fixture(scope="module")
def stamps(tmp_path_factory):
    """60 hosts x (injection, control, hardneg) over 4 files, 10% rejected rows, 32x32 stamps."""
    out = tmp_path_factory.mktemp("stamps")
    info = make_synthetic_stamps(str(out), n_hosts=60, n_files=4, size=32, reject_frac=0.1, seed=5,
                                 hardneg=True, theta_e_range=(0.8, 1.6))
    return str(out), info


def _expected_ids(info, split=None):
    return {t for t, _, s, _, ok in info["rows"] if ok and (split is None or s == split)}


def _all(stream):
    return list(stream)


# ---------------------------------------------------------------------------------------------
# streaming, filtering, counts


@pytest.mark.parametrize("split", [None, "train", "val", "test"])
def test_counts_and_filtering(stamps, split):
    uri, info = stamps
    # batch of 7 and record batches of 5 rows: many batches per file, none aligned with files.
    batches = _all(StampStream(uri, split=split, batch_size=7, shuffle_buffer=16, columns=META, read_batch_rows=5))
    ids = [t for b in batches for t in b["task_id"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == _expected_ids(info, split)
    for b in batches:
        assert 1 <= len(b["label"]) <= 7
        assert all(ok == 1 for ok in b["cutout_ok"].tolist())
        if split:
            assert set(b["split"]) == {split}
        assert b["image"].shape[1:] == (3, 32, 32) and b["image"].dtype.is_floating_point
        labels = b["label"].numpy()
        np.testing.assert_array_equal(labels, [k == "injection" for k in b["kind"]])
        assert np.isfinite(b["image"].numpy()).all()  # rejected (NaN) rows never come through
    n_expected = len(_expected_ids(info, split))
    assert count_rows(uri, split)["n_ok"] == n_expected
    assert count_rows(uri, split)["n_rejected"] == sum(1 for r in info["rows"] if not r[4] and split in (None, r[2]))


def test_reader_never_holds_the_whole_dataset(stamps, monkeypatch):
    uri, info = stamps
    read_sizes, buffer_sizes = [], []
    real_iter, real_add = reader._iter_file_batches, _ChunkBuffer.add

    def spy_iter(u, cols, rows, **kw):
        for b in real_iter(u, cols, rows, **kw):
            read_sizes.append(b.num_rows)
            yield b

    def spy_add(self, cols, sizes):
        real_add(self, cols, sizes)
        buffer_sizes.append(self.n_held)
        assert self.n_held == sum(len(c["image"]) for c in self.chunks)

    monkeypatch.setattr(reader, "_iter_file_batches", spy_iter)
    monkeypatch.setattr(_ChunkBuffer, "add", spy_add)
    n = sum(len(b["label"]) for b in StampStream(uri, split=None, batch_size=8, shuffle_buffer=20,
                                                 read_batch_rows=6))
    assert n == len(_expected_ids(info))
    assert max(read_sizes) <= 6
    # Rows held (drawn rows of partly drawn chunks included): below one buffer of live rows plus
    # one record batch plus one buffer of drawn rows, far below the 180 rows.
    assert max(buffer_sizes) <= 2 * 20 + 6
    assert max(buffer_sizes) < len(info["rows"]) / 3


def test_mixed_stamp_sizes_name_the_file(stamps, tmp_path):
    from dhs_gen.errors import InvalidValueError

    uri, _ = stamps
    make_synthetic_stamps(str(tmp_path), n_hosts=4, n_files=1, size=24, seed=1)
    with pytest.raises(InvalidValueError, match="part-00000.parquet.*32, 32"):
        _all(StampStream([uri, str(tmp_path)], split=None, shuffle_buffer=0))


def test_paired_drop_last_drops_only_the_final_rows(stamps):
    uri, info = stamps
    kw = dict(split=None, batch_size=16, shuffle_buffer=64, paired=True, seed=2)
    full = [len(b["label"]) for b in StampStream(uri, **kw)]
    dropped = [len(b["label"]) for b in StampStream(uri, drop_last=True, **kw)]
    assert sum(full) == len(_expected_ids(info))
    assert 14 <= min(full[:-1]) and max(full) <= 16  # groups of 3 rarely fill 16 exactly
    assert 0 <= sum(full) - sum(dropped) < 16  # only the rows left at the very end


def test_bad_image_rows_name_the_file(tmp_path):
    import pyarrow as pa

    from dhs_gen.errors import InvalidValueError

    make_synthetic_stamps(str(tmp_path), n_hosts=6, n_files=1, size=16, seed=3)
    part = tmp_path / "part-00000.parquet"
    table = pq.read_table(part)
    flat = pa.array([[16, 16]] * table.num_rows, type=table.schema.field("image_shape").type)
    pq.write_table(table.set_column(table.schema.get_field_index("image_shape"), "image_shape", flat), part)
    with pytest.raises(InvalidValueError, match=r"part-00000.parquet.*must be \(bands, H, W\)"):
        _all(StampStream(str(tmp_path), split=None, shuffle_buffer=0))


def test_single_file_uri_and_list_of_uris(stamps):
    uri, info = stamps
    files = [f"{uri}/{f}" for f in info["files"]]
    a = sum(len(b["label"]) for b in StampStream(files[:2], split=None, shuffle_buffer=0))
    b = sum(len(b["label"]) for b in StampStream(files[0], split=None, shuffle_buffer=0))
    c = sum(len(b["label"]) for b in StampStream(files[1], split=None, shuffle_buffer=0))
    assert a == b + c > 0


def _raw_images(uri, info):
    """task_id -> raw stamp, read with pyarrow and the checked per-row decoder (the oracle)."""
    out = {}
    for f in info["files"]:
        t = pq.read_table(f"{uri}/{f}", columns=["task_id", "image", "image_shape"]).to_pylist()
        out.update({r["task_id"]: decode_image(r["image"], tuple(r["image_shape"])) for r in t})
    return out


def test_batches_hold_exactly_the_normalised_stamps(stamps):
    uri, info = stamps
    raw = _raw_images(uri, info)
    for shuffle in (0, 32):
        for b in StampStream(uri, split=None, batch_size=16, shuffle_buffer=shuffle, seed=7, columns=("task_id",)):
            want = normalize_stamps(np.stack([raw[t] for t in b["task_id"]]))
            np.testing.assert_array_equal(b["image"].numpy().view(np.uint32), want.view(np.uint32))


def test_row_groups_of_other_splits_are_not_read(stamps):
    uri, info = stamps
    cols = ["task_id", "split", "cutout_ok"]
    for split in ("train", "val", "test"):
        got = [b for f in info["files"] for b in reader._iter_file_batches(f"{uri}/{f}", cols, 1024, split=split)]
        assert all(set(b.column("split").to_pylist()) == {split} for b in got)
        assert sum(b.num_rows for b in got) == sum(1 for r in info["rows"] if r[2] == split)
    assert sum(b.num_rows for b in reader._iter_file_batches(f"{uri}/{info['files'][0]}", cols, 1024)) > 0


def test_chunk_buffer_draws_every_row_once_and_bounds_what_it_holds():
    rng = np.random.default_rng(0)
    buf, seen, held, next_row = _ChunkBuffer(dead_limit=40), [], [], 0
    while next_row < 2000 or buf.n_rows:
        if next_row < 2000:
            n = min(int(rng.integers(1, 30)), 2000 - next_row)
            rows = np.arange(next_row, next_row + n)
            next_row += n
            buf.add({"label": rows.astype(np.float32), "row": rows}, np.ones(n, dtype=np.int64))
            held.append(buf.n_held)
        while buf.n_rows >= 40 or (next_row >= 2000 and buf.n_rows):
            parts = buf.pop(16, rng)
            got = np.concatenate([c["row"][r] for c, r in parts])
            assert 1 <= len(got) <= 16
            seen.extend(got.tolist())
            assert buf.n_held == sum(len(c["row"]) for c in buf.chunks)
            assert buf.n_held - buf.n_rows <= 40  # drawn rows still held: compacted away past the limit
    assert sorted(seen) == list(range(2000))
    assert seen != sorted(seen)  # drawn at random
    assert max(held) <= 40 + 29 + 40


def test_deferred_dihedral_on_the_device_equals_the_reader_applying_it(stamps):
    uri, _ = stamps
    kw = dict(split=None, batch_size=16, shuffle_buffer=32, seed=3, augment=True, core_dropout_p=0.5,
              columns=("task_id",))
    now, later = _all(StampStream(uri, **kw)), _all(StampStream(uri, defer_dihedral=True, **kw))
    assert _ids(now) == _ids(later)
    for a, b in zip(now, later, strict=True):
        assert "dihedral_op" not in a and b["dihedral_op"].dtype == torch.int64
        np.testing.assert_array_equal(a["core_dropped"].numpy(), b["core_dropped"].numpy())
        np.testing.assert_array_equal(a["image"].numpy(), dihedral_torch(b["image"], b["dihedral_op"]).numpy())


# ---------------------------------------------------------------------------------------------
# determinism and workers


def _ids(batches):
    return [tuple(b["task_id"]) for b in batches]


def test_same_seed_same_batches_other_seed_or_epoch_differs(stamps):
    uri, _ = stamps
    kw = dict(split=None, batch_size=8, shuffle_buffer=32, augment=True, core_dropout_p=0.5, columns=("task_id",))
    a, b = _all(StampStream(uri, seed=1, **kw)), _all(StampStream(uri, seed=1, **kw))
    assert _ids(a) == _ids(b)
    for x, y in zip(a[:3], b[:3], strict=True):
        assert np.array_equal(x["image"].numpy(), y["image"].numpy())
    assert _ids(_all(StampStream(uri, seed=2, **kw))) != _ids(a)
    s = StampStream(uri, seed=1, **kw)
    s.set_epoch(1)
    assert _ids(_all(s)) != _ids(a)
    assert sorted(sum(_ids(_all(s)), ())) == sorted(sum(_ids(a), ()))


def test_workers_shard_files_deterministically(stamps):
    uri, info = stamps
    kw = dict(split="train", batch_size=8, shuffle_buffer=16, seed=3, num_workers=2, columns=("task_id",))
    a = _ids(make_loader(uri, **kw))
    b = _ids(make_loader(uri, **kw))
    assert a == b
    ids = [t for batch in a for t in batch]
    assert len(ids) == len(set(ids)) and set(ids) == _expected_ids(info, "train")


# ---------------------------------------------------------------------------------------------
# augmentation and core dropout


def _dihedral(img):
    out = []
    for k in range(4):
        r = np.rot90(img, k, axes=(-2, -1))
        out += [r, r[..., ::-1]]
    return out


def test_augment_is_a_dihedral_map_preserving_flux(stamps):
    uri, _ = stamps
    plain = _all(StampStream(uri, split=None, batch_size=16, shuffle_buffer=0, columns=("task_id",)))
    aug = _all(StampStream(uri, split=None, batch_size=16, shuffle_buffer=0, augment=True, columns=("task_id",)))
    assert _ids(plain) == _ids(aug)  # no shuffling: same rows, same order
    changed = 0
    for p, a in zip(plain, aug, strict=True):
        for x, y in zip(p["image"].numpy(), a["image"].numpy(), strict=True):
            # Flux per stamp and band is preserved (float32 sums in another order: 1e-4 relative).
            np.testing.assert_allclose(y.sum(axis=(1, 2)), x.sum(axis=(1, 2)), rtol=1e-4, atol=1e-3)
            assert any(np.array_equal(y, t) for t in _dihedral(x))  # exactly one of the 8 symmetries
            changed += not np.array_equal(x, y)
    # Each op is drawn uniformly from 8: ~7/8 of the 162 stamps change.
    assert changed > 100


@pytest.mark.parametrize("radius", [3.0, 5.0])
def test_core_dropout_masks_exactly_the_disc(stamps, radius):
    uri, _ = stamps
    plain = _all(StampStream(uri, split=None, batch_size=16, shuffle_buffer=0))
    masked = _all(StampStream(uri, split=None, batch_size=16, shuffle_buffer=0, core_dropout_p=1.0,
                              core_radius_pix=radius))
    yy, xx = np.mgrid[:32, :32]
    disc = np.hypot(yy - 15.5, xx - 15.5) <= radius  # pixel centres within radius of the stamp centre
    assert disc.sum() == {3.0: 32, 5.0: 80}[radius]  # counted by hand: lattice points of the half-grid
    for p, m in zip(plain, masked, strict=True):
        x, y = p["image"].numpy(), m["image"].numpy()
        assert m["core_dropped"].all()
        assert np.all(y[:, :, disc] == 0)
        np.testing.assert_array_equal(y[:, :, ~disc], x[:, :, ~disc])


def test_core_dropout_probability(stamps):
    uri, _ = stamps
    flags = np.concatenate([b["core_dropped"].numpy() for b in StampStream(uri, split=None, batch_size=16,
                                                                           shuffle_buffer=0, core_dropout_p=0.5)])
    # 162 Bernoulli(0.5) draws: sigma = 6.4; 4 sigma = 26.
    assert abs(flags.sum() - len(flags) / 2) < 26


# ---------------------------------------------------------------------------------------------
# paired batches


@pytest.mark.parametrize("read_rows", [4, 64])
def test_paired_batches_keep_groups_together(stamps, read_rows):
    uri, info = stamps
    batches = _all(StampStream(uri, split=None, batch_size=9, shuffle_buffer=30, paired=True, seed=4,
                               columns=("task_id", "pair_id"), read_batch_rows=read_rows))
    seen: dict = {}
    for i, b in enumerate(batches):
        assert len(b["label"]) <= 9
        for pid in b["pair_id"]:
            assert seen.setdefault(pid, i) == i, f"pair {pid} split over batches"
    ids = [t for b in batches for t in b["task_id"]]
    assert len(ids) == len(set(ids)) and set(ids) == _expected_ids(info)
    # Complete groups: each pair_id's kept rows all arrived (same count as the writer's).
    expected_per_pair: dict = {}
    for _, pid, _, _, ok in info["rows"]:
        expected_per_pair[pid] = expected_per_pair.get(pid, 0) + ok
    got: dict = {}
    for b in batches:
        for pid in b["pair_id"]:
            got[pid] = got.get(pid, 0) + 1
    assert got == {k: v for k, v in expected_per_pair.items() if v}
    # Shuffled: pairs do not come out in file order.
    assert [b["pair_id"][0] for b in batches] != sorted(b["pair_id"][0] for b in batches)


@pytest.mark.parametrize("paired", [False, True])
def test_nan_stamps_are_left_out_and_counted_like_scoring_rejects_them(tmp_path, paired):
    import pyarrow as pa

    make_synthetic_stamps(str(tmp_path), n_hosts=6, n_files=1, size=16, split_probs=(1.0, 0.0, 0.0), seed=3)
    part = tmp_path / "part-00000.parquet"
    table = pq.read_table(part)
    rows = table.to_pylist()
    bad = np.frombuffer(rows[2]["image"], np.float32).copy()
    bad[5] = np.nan
    rows[2]["image"] = bad.tobytes()
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
    stream = StampStream(str(tmp_path), split="train", batch_size=4, shuffle_buffer=0, paired=paired,
                         columns=("task_id",))
    ids = [t for b in _all(stream) for t in b["task_id"]]
    assert stream.n_nonfinite == 1 and rows[2]["task_id"] not in ids
    assert len(ids) == len(rows) - 1 and all(bool(torch.isfinite(b["image"]).all()) for b in _all(stream))
