"""Azimuthal-shuffle hard negatives and core masking."""

import math
import pickle
from collections import Counter

import numpy as np
import pytest

from dhs_gen.augmentation.negatives import azimuthal_shuffle, core_dropout, core_mask
from dhs_gen.errors import InvalidValueError, RangeError


def _thin_arc(h=64, w=64, radius=14.0, width=0.8, span_rad=math.pi / 2):
    """Analytic arc: a Gaussian ring of `width` px at `radius` px, over `span_rad` of azimuth."""
    yy, xx = np.mgrid[:h, :w]
    dy, dx = yy - (h - 1) / 2.0, xx - (w - 1) / 2.0
    ring = np.exp(-0.5 * ((np.hypot(dy, dx) - radius) / width) ** 2)
    return ring * (np.abs(np.arctan2(dy, dx) - 0.3) < span_rad / 2)


def _annuli(h, w, width=1.0, center=None):
    """Independent annulus labels by brute force over pixels (pure Python)."""
    cy, cx = ((h - 1) / 2.0, (w - 1) / 2.0) if center is None else center
    return np.array([[int(math.hypot(i - cy, j - cx) // width) for j in range(w)] for i in range(h)])


def test_radial_profile_and_flux_preserved():
    arc = _thin_arc()
    out = azimuthal_shuffle(arc, "task-1")
    labels = _annuli(64, 64)
    for k in np.unique(labels):
        sel = labels == k
        # the same values, just moved: the multiset per annulus is identical (exact), the sum to
        # float rounding of a reordered summation (~1e-16 relative)
        assert np.array_equal(np.sort(out[sel]), np.sort(arc[sel]))
        assert out[sel].sum() == pytest.approx(arc[sel].sum(), rel=1e-12, abs=1e-15)
    assert out.sum() == pytest.approx(arc.sum(), rel=1e-12)
    # coarser profiles (2-pixel annuli: unions of 1-pixel ones) are preserved too
    coarse = _annuli(64, 64, width=2.0)
    for k in np.unique(coarse):
        assert out[coarse == k].sum() == pytest.approx(arc[coarse == k].sum(), rel=1e-12, abs=1e-15)


def test_morphology_destroyed():
    arc = _thin_arc()
    out = azimuthal_shuffle(arc, "task-1")
    corr = np.corrcoef(arc.ravel(), out.ravel())[0, 1]
    # a quarter arc spread over the full ring keeps ~1/4 of its pixels in place: corr ~ 0.25
    assert corr < 0.5
    # the light now covers all four quadrants around the centre
    h = 32
    quads = [out[:h, :h].sum(), out[:h, h:].sum(), out[h:, :h].sum(), out[h:, h:].sum()]
    assert min(quads) > 0.1 * out.sum()


def test_deterministic_per_key():
    arc = _thin_arc()
    a, b = azimuthal_shuffle(arc, "k1"), azimuthal_shuffle(arc, "k1")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, azimuthal_shuffle(arc, "k2"))


def test_bands_share_the_permutation_so_colours_stay_per_pixel():
    rng = np.random.default_rng(3)
    stamp = rng.normal(size=(3, 33, 40)).astype(np.float32)
    out = azimuthal_shuffle(stamp, "colour")
    assert out.shape == stamp.shape and out.dtype == np.float32
    # every output pixel carries the (g, r, z) triple of some input pixel in the same annulus
    labels = _annuli(33, 40)
    triples_in = Counter((labels[i, j], *stamp[:, i, j].tolist()) for i in range(33) for j in range(40))
    triples_out = Counter((labels[i, j], *out[:, i, j].tolist()) for i in range(33) for j in range(40))
    assert triples_in == triples_out
    assert not np.array_equal(out, stamp)


def test_custom_centre_and_bin_count():
    rng = np.random.default_rng(4)
    img = rng.random((30, 30))
    out = azimuthal_shuffle(img, "c", center=(10.0, 12.0))
    labels = _annuli(30, 30, center=(10.0, 12.0))
    for k in np.unique(labels):
        assert np.array_equal(np.sort(out[labels == k]), np.sort(img[labels == k]))
    # n_bins=1: one annulus covering everything, so any permutation of the whole stamp
    one = azimuthal_shuffle(img, "c", n_bins=1)
    assert np.array_equal(np.sort(one.ravel()), np.sort(img.ravel()))
    # centre pixel's own annulus with 1-pixel rings on an odd grid holds only it: it stays put
    odd = rng.random((31, 31))
    assert azimuthal_shuffle(odd, "x")[15, 15] == odd[15, 15]


def test_shuffle_rejects_bad_input():
    with pytest.raises(InvalidValueError, match="arc_image"):
        azimuthal_shuffle(np.ones(5), "k")
    with pytest.raises(InvalidValueError, match="n_bins"):
        azimuthal_shuffle(np.ones((5, 5)), "k", n_bins=0)


def _brute_disc(h, w, radius):
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    return np.array([[(i - cy) ** 2 + (j - cx) ** 2 <= radius**2 for j in range(w)] for i in range(h)])


@pytest.mark.parametrize("h, w, radius", [(64, 64, 5.0), (65, 65, 5.0), (31, 40, 3.3), (9, 9, 0.0)])
def test_core_mask_is_the_centred_disc(h, w, radius):
    m = core_mask(h, w, radius)
    assert m.dtype == bool and m.shape == (h, w)
    assert np.array_equal(m, _brute_disc(h, w, radius))


def test_core_mask_counts_lattice_points():
    # Gauss circle problem: N(5) = 81 integer points within radius 5 (odd grid, centre on a pixel)
    assert core_mask(65, 65, 5.0).sum() == 81
    # centre between pixels: half-integer points (i + 1/2)^2 + (j + 1/2)^2 <= 25 -> 4 x 20 = 80
    assert core_mask(64, 64, 5.0).sum() == 80


def test_core_dropout_masks_every_plane_and_leaves_input():
    rng = np.random.default_rng(5)
    batch = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    before = batch.copy()
    out = core_dropout(batch, 5.0, fill=-1.0)
    disc = _brute_disc(32, 32, 5.0)
    assert out.dtype == np.float32 and np.all(out[..., disc] == -1.0)
    assert np.array_equal(out[..., ~disc], batch[..., ~disc])
    assert np.array_equal(batch, before)
    assert np.array_equal(core_dropout(batch[0, 0], 5.0)[disc], np.zeros(disc.sum()))


def test_core_errors_name_the_argument():
    with pytest.raises(RangeError, match="radius_pix") as info:
        core_mask(10, 10, -1.0)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)
    with pytest.raises(InvalidValueError, match="H"):
        core_mask(0, 10, 1.0)
    with pytest.raises(InvalidValueError, match="image"):
        core_dropout(np.ones(4), 1.0)
