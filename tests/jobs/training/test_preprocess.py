"""jobs.training.preprocess: robust normalisation (astropy oracle), its two-step form, the dihedral maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from astropy.stats import mad_std

from jobs.training.preprocess import (
    apply_stats_,
    augment_dihedral,
    border_stats,
    dihedral_torch,
    dihedral_view,
    normalize_stamps,
)

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


def _awkward_stamps(rng):
    """Stamps with the cases the two-step path must treat like the one-step one: NaN, inf and
    zero-filled borders, a constant band, a bright host."""
    x = (0.01 * rng.normal(size=(6, 3, 32, 32))).astype(np.float32)
    x[0, :, 14:18, 14:18] += 40.0
    x[1, 0, 0, 3] = np.nan
    x[2, 1, 30, 30] = np.inf
    x[3, 2, 10, 10] = -np.inf
    x[4, :, :4, :] = 0.0
    x[4, :, -4:, :] = 0.0
    x[4, :, :, :4] = 0.0
    x[4, :, :, -4:] = 0.0
    x[5, 1] = 7.0
    return x


def test_border_stats_then_apply_is_bit_identical_to_normalize_stamps():
    x = _awkward_stamps(np.random.default_rng(4))
    want = normalize_stamps(x)
    for lo, hi in ((0, 6), (0, 1), (2, 5)):  # any batching of the stamps
        part = x[lo:hi].copy()
        got = apply_stats_(part, *border_stats(part))
        np.testing.assert_array_equal(got.view(np.uint32), want[lo:hi].view(np.uint32))
    assert np.isfinite(want).all()
    med, inv = border_stats(x)
    assert med.dtype == inv.dtype == np.float32 and med.shape == inv.shape == (6, 3)
    assert inv[5, 1] == 1.0  # constant band: MAD 0 on the border and over the band


def _rot90_maps(img):
    """The 8 maps in the ``op`` order of dihedral_view, from numpy's rot90 and flip (the oracle)."""
    return [np.flip(np.rot90(img, op % 4, axes=(-2, -1)), -1) if op >= 4 else np.rot90(img, op % 4, axes=(-2, -1))
            for op in range(8)]


def test_dihedral_view_matches_rot90_and_the_maps_are_distinct():
    img = np.arange(2 * 5 * 5, dtype=np.float32).reshape(2, 5, 5)
    maps = _rot90_maps(img)
    for op in range(8):
        np.testing.assert_array_equal(dihedral_view(img, op), maps[op])
    assert len({m.tobytes() for m in maps}) == 8


def test_numpy_and_torch_batched_maps_agree_with_the_view():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(40, 3, 8, 8)).astype(np.float32)
    ops = rng.integers(0, 8, 40)
    assert set(ops.tolist()) == set(range(8))
    want = np.stack([dihedral_view(s, op) for s, op in zip(x, ops, strict=True)])
    np.testing.assert_array_equal(augment_dihedral(x.copy(), ops), want)
    xt = torch.from_numpy(x)
    got = dihedral_torch(xt, torch.from_numpy(ops))
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(xt.numpy(), x)  # input untouched
