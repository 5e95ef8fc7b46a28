"""dhs_gen.utils: resampling against analytic Gaussians, unit conversion, hashing and seeding."""

import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from scipy import special
from support import REPO_ROOT

from dhs_gen.errors import InvalidValueError, RangeError
from dhs_gen.utils import (
    bilinear_resample,
    categorical_from_hash,
    hash_uint64,
    rng_for,
    to_surface_brightness,
    uniform_from_hash,
)


def _pixel_gaussian(n, pixscale, sigma, x0=0.0, y0=0.0):
    """Analytic flux per pixel of a unit-flux round Gaussian (arcsec) on an n x n DESIGN grid."""
    edges = (np.arange(n + 1) - n / 2.0) * pixscale

    def w(c0):
        return np.diff(special.erf((edges - c0) / (math.sqrt(2) * sigma))) / 2.0

    return np.outer(w(y0), w(x0))


def _centroid_arcsec(img, pixscale):
    n_y, n_x = img.shape
    y = (np.arange(n_y) - (n_y - 1) / 2.0) * pixscale
    x = (np.arange(n_x) - (n_x - 1) / 2.0) * pixscale
    return (img.sum(axis=0) * x).sum() / img.sum(), (img.sum(axis=1) * y).sum() / img.sum()


@pytest.mark.parametrize("n_src", [101, 100])
def test_bilinear_resample_conserves_flux_and_centre_of_a_gaussian(n_src):
    # an HST-like 0.1"/pix image of a sigma = 0.5" Gaussian offset by (+0.3", -0.2") -> 0.262"/pix
    src = _pixel_gaussian(n_src, 0.1, 0.5, 0.3, -0.2)
    out = bilinear_resample(src, 0.1, 0.262)
    assert out.shape == (round(n_src * 0.1 / 0.262),) * 2
    # total flux: a 0.262" sampling of a 0.5" Gaussian aliases at exp(-2 pi^2 (0.5/0.262)^2) ~ 1e-31;
    # bilinear interpolation errs pointwise by ~ h^2 f'' / 8 (h = 0.1"), ~1 % of the peak, but f''
    # integrates to ~0 over the plane (measured 4e-4 on the sum). Tolerance 2e-3.
    assert out.sum() == pytest.approx(1.0, rel=2e-3)
    # centre: a half-pixel grid error would move the centroid by 0.05" (input) or 0.131" (output)
    cx, cy = _centroid_arcsec(out, 0.262)
    assert cx == pytest.approx(0.3, abs=5e-3) and cy == pytest.approx(-0.2, abs=5e-3)


def test_bilinear_resample_matches_analytic_pixel_values():
    src = _pixel_gaussian(101, 0.1, 0.6)
    out = bilinear_resample(src, 0.1, 0.262)
    oracle = _pixel_gaussian(out.shape[0], 0.262, 0.6)
    # point sampling vs integrating over the 0.262" pixel differs by the pixel's own variance
    # 0.262^2 / 12 against sigma^2 = 0.36: ~1.6 % at the peak; tolerance 3 % of the peak
    np.testing.assert_allclose(out, oracle, atol=0.03 * oracle.max())


def test_bilinear_resample_identity_and_errors():
    img = np.random.default_rng(0).random((9, 7))
    np.testing.assert_allclose(bilinear_resample(img, 0.262, 0.262), img, rtol=1e-12)
    with pytest.raises(InvalidValueError, match="img"):
        bilinear_resample(np.ones(5), 0.1, 0.2)
    with pytest.raises(RangeError, match="dst_pixscale_arcsec"):
        bilinear_resample(img, 0.1, 0.0)


def test_to_surface_brightness():
    img = np.ones((3, 3))
    sb = to_surface_brightness(img, 0.262)
    np.testing.assert_allclose(sb, 1.0 / 0.068644, rtol=1e-12)  # 0.262^2 = 0.068644 arcsec^2
    # integrating SB over pixel areas gives back the flux
    assert (sb * 0.262**2).sum() == pytest.approx(img.sum(), rel=1e-12)
    for bad in (0.0, -0.262, float("nan")):
        with pytest.raises(RangeError, match="pixscale_arcsec"):
            to_surface_brightness(img, bad)


def test_categorical_from_hash_frequencies():
    probs = [0.2, 0.5, 0.0, 0.3]
    n = 20_000
    counts = np.bincount([categorical_from_hash(f"id{i}", probs, salt="t") for i in range(n)], minlength=4)
    assert counts[2] == 0  # zero weight never drawn
    for c, p in zip(counts, probs, strict=True):
        # binomial, 4 sigma: a correct implementation fails ~1e-4 of the time, a 1.5 pp bias fails
        assert abs(c - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1e-9
    # weights are normalised: scaling them changes nothing
    assert all(categorical_from_hash(f"id{i}", probs, "t") == categorical_from_hash(f"id{i}", [2, 5, 0, 3], "t")
               for i in range(300))


@pytest.mark.parametrize("bad", [[], [0, 0], [1, -1], [1, float("nan")], [[0.5, 0.5]]])
def test_categorical_from_hash_rejects_bad_weights(bad):
    with pytest.raises(InvalidValueError, match="probs"):
        categorical_from_hash("k", bad)


def test_rng_for_is_pinned_to_blake2b_of_salt_and_key():
    # the seeding spec of STYLE.md section 7: output must not change between versions
    digest = hashlib.blake2b(b"4c:task-42", digest_size=16).digest()
    expected = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32)).random(5)
    np.testing.assert_array_equal(rng_for("task-42", "4c").random(5), expected)
    assert not np.array_equal(rng_for("task-42", "4c").random(5), rng_for("task-42", "4d").random(5))
    assert not np.array_equal(rng_for("task-42", "4c").random(5), rng_for("task-43", "4c").random(5))


def test_hashes_do_not_depend_on_python_hash_seed():
    code = ("from dhs_gen.utils import rng_for, hash_uint64;"
            "print(hash_uint64('k', 's'), rng_for('k', 's').integers(1 << 62))")
    outs = set()
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.add(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                                cwd=REPO_ROOT, check=True).stdout)
    assert len(outs) == 1
    here = f"{hash_uint64('k', 's')} {rng_for('k', 's').integers(1 << 62)}\n"
    assert outs == {here}


def test_uniform_from_hash_range_and_mean():
    u = np.array([uniform_from_hash(f"u{i}", "s") for i in range(10_000)])
    assert u.min() >= 0.0 and u.max() < 1.0
    assert u.mean() == pytest.approx(0.5, abs=4 * math.sqrt(1 / 12 / 10_000))  # 4 sigma of the mean
    assert hash_uint64("a", "b") == int.from_bytes(hashlib.blake2b(b"b:a", digest_size=8).digest(), "little")
