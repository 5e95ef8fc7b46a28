"""Temperature scaling: a known logit scaling is recovered, calibrated logits keep T = 1, bad input raises."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from scipy import special

from dhs_gen.errors import InvalidValueError, RangeError
from jobs.training.calibration import calibrated_proba, checkpoint_temperature, fit_temperature, mean_bce


def _calibrated_sample(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True log-odds z ~ N(0, 2) and labels drawn from sigmoid(z): z itself is perfectly calibrated."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, n)
    y = (rng.uniform(size=n) < special.expit(z)).astype(np.int8)
    return z, y


def test_recovers_a_known_over_confidence():
    z, y = _calibrated_sample(50_000, seed=11)
    # logits 3x too large: the fit must undo it. The MLE of 1/T over 5e4 rows has a relative
    # sd of ~1 %, so 4 % is about 4 sd.
    t = fit_temperature(3.0 * z, y)
    assert t == pytest.approx(3.0, rel=0.04)
    # an under-confident model (logits halved) gets T < 1
    assert fit_temperature(0.5 * z, y) == pytest.approx(0.5, rel=0.04)


def test_calibrated_logits_give_t_one_and_the_fit_is_a_minimum():
    z, y = _calibrated_sample(50_000, seed=12)
    t = fit_temperature(z, y)
    assert t == pytest.approx(1.0, rel=0.04)
    # deterministic, and no nearby temperature has a lower loss
    assert fit_temperature(z, y) == t
    assert mean_bce(z, y, t) <= min(mean_bce(z, y, t * 0.99), mean_bce(z, y, t * 1.01))


def test_calibrated_proba_is_a_stable_scaled_sigmoid():
    logits = np.array([-800.0, -3.0, 0.0, 3.0, 800.0])
    p = calibrated_proba(logits, 2.0)
    np.testing.assert_allclose(p[1:4], 1 / (1 + np.exp(-logits[1:4] / 2.0)), rtol=1e-15)
    assert 0.0 <= p[0] < 1e-170 and p[-1] == 1.0 and np.all(np.isfinite(p)) and p.dtype == np.float64
    # T = 1 is the plain sigmoid, bit for bit, and a monotone map keeps the ranking
    np.testing.assert_array_equal(calibrated_proba(logits, 1.0), special.expit(logits))
    assert np.all(np.diff(calibrated_proba(logits, 7.0)) >= 0)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(RangeError, match="temperature"):
            calibrated_proba(logits, bad)


@pytest.mark.parametrize(("logits", "labels", "match"), [
    ([], [], "at least one"),
    ([1.0, 2.0], [1, 1], "both classes"),
    ([1.0, 2.0], [0, 0], "both classes"),
    ([1.0, np.nan], [0, 1], "finite"),
    ([1.0, np.inf], [0, 1], "finite"),
    ([1.0, 2.0], [0, 2], "0 .negative. or 1"),
    ([1.0, 2.0, 3.0], [0, 1], "same length"),
])
def test_bad_input_raises(logits, labels, match):
    with pytest.raises(InvalidValueError, match=match) as exc:
        fit_temperature(logits, labels)
    assert isinstance(pickle.loads(pickle.dumps(exc.value)), InvalidValueError)  # survives Spark


def test_no_finite_optimum_raises_instead_of_clipping():
    # perfectly separated classes: the loss falls all the way to T -> 0
    with pytest.raises(InvalidValueError, match="no finite optimal temperature"):
        fit_temperature([-2.0, -1.0, 1.0, 2.0], [0, 0, 1, 1])
    # logits ranking negatives above positives: the best positive T is infinite
    with pytest.raises(InvalidValueError, match="no finite optimal temperature"):
        fit_temperature([-2.0, 1.0, -1.0, 2.0], [1, 0, 1, 0])


def test_checkpoint_temperature_reads_meta():
    assert checkpoint_temperature({"format": "x"}) is None
    assert checkpoint_temperature({"temperature": 2.5}) == 2.5
    with pytest.raises(RangeError):
        checkpoint_temperature({"temperature": -1.0})
