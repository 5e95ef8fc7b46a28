"""jobs.reader: normalisation, streaming, filtering, determinism, augmentation, core dropout, pairs."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.stats import mad_std

import jobs.reader as reader
from bench.training import make_synthetic_stamps
from jobs.preprocess import normalize_stamps
from jobs.reader import StampStream, count_rows, make_loader

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
# normalize_stamps


def _frame(x, w=4):
    m = np.ones(x.shape[-2:], bool)
    m[w:-w, w:-w] = False
    return x[..., m]


def test_normalised_sky_has_zero_median_and_unit_sigma():
    rng = np.random.default_rng(0)
    sigma = np.array([0.006, 0.01, 0.02])
    sky = np.array([0.1, -0.05, 0.3])
    x = (sky[None, :, None, None] + sigma[None, :, None, None] * rng.normal(size=(50, 3, 64, 64))).astype(np.float32)
    y = normalize_stamps(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    # Oracle: astropy's MAD-based sigma of each whole normalised band. The border uses 480 samples,
    # so the per-stamp scale scatters by 1.17/sqrt(480) = 5.3%; 4 sigma = 21%. Mean over 50 stamps: 3%.
    s = mad_std(y.reshape(50, 3, -1), axis=-1)
    assert np.all(np.abs(s - 1) < 0.21)
    assert abs(s.mean() - 1) < 0.03
    # Median of the sky scatters by 1.25/sqrt(480) = 0.057 sigma; 5 sigma = 0.29.
    assert np.all(np.abs(np.median(y.reshape(50, 3, -1), axis=-1)) < 0.29)


def test_normalisation_ignores_the_host_and_a_bright_outlier():
    rng = np.random.default_rng(1)
    x = (0.01 * rng.normal(size=(3, 64, 64))).astype(np.float32)
    yy, xx = np.mgrid[:64, :64] - 31.5
    bright = x + 50.0 * np.exp(-0.5 * (xx**2 + yy**2) / 3.0**2)[None].astype(np.float32)  # bright host
    bright[:, 1, 1] = 1e6  # a saturated star / cosmic ray in the border
    bright[:, 62, 5] = -1e4  # and a hole
    a, b = normalize_stamps(x), normalize_stamps(bright)
    diff = np.abs(a - b)[:, 10:20, 40:60]  # sky pixels away from host and outliers
    # Two samples out of 480 move the median/MAD by <= 2 order statistics: ~1% of sigma.
    assert diff.max() < 0.02
    assert np.isfinite(b).all()


def test_single_stamp_and_input_untouched():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 16, 16)).astype(np.float32)
    keep = x.copy()
    y = normalize_stamps(x)
    assert y.shape == (3, 16, 16)
    np.testing.assert_array_equal(x, keep)
    np.testing.assert_array_equal(y, normalize_stamps(x[None])[0])


def test_mad_zero_guard_and_non_finite_pixels():
    rng = np.random.default_rng(3)
    x = np.zeros((2, 3, 64, 64), np.float32)
    x[0, :, 4:60, 4:60] = rng.normal(size=(3, 56, 56))  # zero-padded border (stamp off a brick edge)
    x[1, 1, 5, 5] = np.nan                               # stamp 1: constant (zero) bands and a NaN
    y = normalize_stamps(x)
    assert np.isfinite(y).all()
    # Stamp 0: border MAD is 0, so the scale falls back to the whole-band MAD (astropy oracle; it
    # averages the two middle order statistics where the reader takes one: 1/(n pdf) ~ 3e-4 apart).
    whole = mad_std(x[0].reshape(3, -1), axis=-1)
    np.testing.assert_allclose(y[0, :, 32, 32], x[0, :, 32, 32] / whole, rtol=2e-3)
    assert np.all(y[1] == 0)


def test_bad_shapes_raise():
    from dhs_gen.errors import InvalidValueError, RangeError

    with pytest.raises(InvalidValueError):
        normalize_stamps(np.zeros((32, 32), np.float32))
    with pytest.raises(RangeError):
        normalize_stamps(np.zeros((1, 3, 8, 8), np.float32), border_pix=4)


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
    real_iter, real_grow = reader._iter_file_batches, reader._GroupBuffer._grow

    def spy_iter(u, cols, rows, **kw):
        for b in real_iter(u, cols, rows, **kw):
            read_sizes.append(b.num_rows)
            yield b

    def spy_grow(self, cols, need):
        real_grow(self, cols, need)
        buffer_sizes.append(len(self.group))

    monkeypatch.setattr(reader, "_iter_file_batches", spy_iter)
    monkeypatch.setattr(reader._GroupBuffer, "_grow", spy_grow)
    n = sum(len(b["label"]) for b in StampStream(uri, split=None, batch_size=8, shuffle_buffer=20,
                                                 read_batch_rows=6))
    assert n == len(_expected_ids(info))
    assert max(read_sizes) <= 6
    # Buffer slots: shuffle buffer plus one record batch at most, far below the 180 rows.
    assert max(buffer_sizes) <= 2 * (20 + 6)
    assert max(buffer_sizes) < len(info["rows"]) / 3


def test_single_file_uri_and_list_of_uris(stamps):
    uri, info = stamps
    files = [f"{uri}/{f}" for f in info["files"]]
    a = sum(len(b["label"]) for b in StampStream(files[:2], split=None, shuffle_buffer=0))
    b = sum(len(b["label"]) for b in StampStream(files[0], split=None, shuffle_buffer=0))
    c = sum(len(b["label"]) for b in StampStream(files[1], split=None, shuffle_buffer=0))
    assert a == b + c > 0


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
