"""Metrics against hand counts, analytic values and sklearn / scipy as independent oracles."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics as skm

from dhs_gen.errors import InvalidValueError, RangeError
from dhs_gen.metrics import (
    binomial_ci,
    bootstrap_ci,
    operating_threshold,
    paired_bootstrap_delta,
    recall_at_fpr,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    tpr_at_n_false_positives,
)

# ----------------------------------------------------------------------------- AUC


def test_auc_hand_built_lists():
    assert roc_auc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert roc_auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5


def test_auc_known_3x3_case():
    # positives {3, 5, 7} vs negatives {1, 4, 6}: pairs won = (3>1) + (5>1,5>4) + (7>1,7>4,7>6) = 6 of 9
    assert roc_auc([3, 5, 7, 1, 4, 6], [1, 1, 1, 0, 0, 0]) == pytest.approx(6 / 9, abs=1e-15)
    # a tie counts 1/2: positives {3, 5, 6} vs {1, 4, 6} -> 1 + 2 + 2.5 = 5.5 of 9
    assert roc_auc([3, 5, 6, 1, 4, 6], [1, 1, 1, 0, 0, 0]) == pytest.approx(5.5 / 9, abs=1e-15)


def test_auc_matches_sklearn_on_random_data_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    s = np.round(rng.normal(y * 0.7, 1.0), 1)  # rounding makes many ties
    # both are exact rational computations: agreement to float round-off (1e-12)
    assert roc_auc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_auc_one_class_is_nan_and_bad_input_raises():
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    with pytest.raises(InvalidValueError, match="labels"):
        roc_auc([0.1, 0.2], [1, 2])
    with pytest.raises(InvalidValueError, match="scores"):
        roc_auc([0.1, np.nan], [1, 0])
    with pytest.raises(InvalidValueError, match="same length"):
        roc_auc([0.1, 0.2, 0.3], [1, 0])
    err = pickle.loads(pickle.dumps(InvalidValueError("labels", [1, 2], "0 or 1")))
    assert err.name == "labels"


def test_roc_curve_matches_sklearn():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(y, 1.0), 1)
    fpr, tpr, thr = roc_curve(s, y)
    f2, t2, th2 = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2, atol=1e-15)
    np.testing.assert_allclose(tpr, t2, atol=1e-15)
    np.testing.assert_array_equal(thr[1:], th2[1:])
    assert np.trapezoid(tpr, fpr) == pytest.approx(roc_auc(s, y), abs=1e-12)


# ----------------------------------------------------------------------------- operating points

NEG = [0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1]  # 10 negatives
POS = [0.99, 0.93, 0.85, 0.75, 0.65, 0.55, 0.45, 0.35]  # 8 positives


def _sl(pos, neg):
    return np.r_[pos, neg], np.r_[np.ones(len(pos)), np.zeros(len(neg))]


def test_tpr0_and_tpr_n_by_hand():
    s, y = _sl(POS, NEG)
    # TPR0: above the highest negative 0.95 -> only 0.99 -> 1/8
    op = tpr_at_n_false_positives(s, y, 0)
    assert (op.value, op.threshold, op.achieved_fpr, op.resolved) == (1 / 8, 0.95, 0.0, True)
    # 2 FPs allowed: above the 3rd highest negative 0.8 -> 0.99, 0.93, 0.85 -> 3/8
    assert tpr_at_n_false_positives(s, y, 2).value == 3 / 8
    # TPR10 needs more than 10 negatives
    op10 = tpr_at_n_false_positives(s, y, 10)
    assert not op10.resolved and math.isnan(op10.value) and "10 negatives" in op10.reason
    s11, y11 = _sl(POS, NEG + [0.05])
    assert tpr_at_n_false_positives(s11, y11, 10).value == 1.0  # above 0.05: all 8


def test_tie_at_threshold_is_not_counted():
    s, y = _sl([0.9, 0.8], [0.9, 0.1])
    # a positive tied with the highest negative could only be found by also passing that negative
    assert tpr_at_n_false_positives(s, y, 0).value == 0.0


def test_tpr_at_fpr_counted_by_hand():
    s, y = _sl(POS, NEG)
    # FPR 0.2 of 10 negatives -> 2 allowed -> threshold 0.8 -> 3/8, achieved FPR 0.2
    op = tpr_at_fpr(s, y, 0.2)
    assert (op.value, op.n_false_positives_allowed, op.achieved_fpr) == (3 / 8, 2, 0.2)
    # FPR 0.25 -> floor(2.5) = 2: "at most" the requested FPR, no interpolation
    assert tpr_at_fpr(s, y, 0.25).value == 3 / 8
    # FPR 0.05 < 1/10 cannot be resolved by 10 negatives
    op = tpr_at_fpr(s, y, 0.05)
    assert not op.resolved and math.isnan(op.value) and "need >= 20" in op.reason
    with pytest.raises(RangeError, match="fpr"):
        tpr_at_fpr(s, y, 0.0)


def test_tpr_at_fpr_exact_resolution_edge():
    # exactly 1/fpr negatives resolves the FPR (1e-3 * 1000 must count as 1, not 0.999...)
    rng = np.random.default_rng(3)
    neg = rng.uniform(0, 1, 1000)
    s, y = _sl([2.0], neg)
    assert tpr_at_fpr(s, y, 1e-3).resolved
    assert not tpr_at_fpr(s[:-1], y[:-1], 1e-3).resolved


def test_recall_at_fpr_with_reference_negatives():
    # lenses scored 0.5..0.9; threshold from 100 reference negatives 0.00..0.99: FPR 0.05 -> above 0.94
    ref = np.arange(100) / 100
    s, y = _sl([0.5, 0.95, 0.96, 0.3], [])
    op = recall_at_fpr(s, y, 0.05, reference_negative_scores=ref)
    assert op.threshold == 0.94 and op.value == 0.5


def test_operating_threshold_200_negatives_uses_fpr_1e2():
    # 200 negatives scored 0.000 .. 0.995 (step 0.005), shuffled, and positives that must not matter
    rng = np.random.default_rng(7)
    neg = rng.permutation(np.arange(200) * 0.005)
    s, y = _sl([0.99, 0.9925, 2.0], neg)
    op = operating_threshold(s, y)
    # 1e-3 needs 1000 negatives; 1e-2 of 200 allows k = 2: the two highest negatives, 0.995 and 0.99
    assert (op["fpr_target"], op["n_negatives"], op["n_false_positives_allowed"]) == (1e-2, 200, 2)
    assert op["resolved"] and op["reason"] == "" and op["achieved_fpr"] == 2 / 200
    assert op["negative_score_cut"] == 0.985  # the third-highest negative
    assert int(np.sum(neg >= op["threshold"])) == 2  # exactly 2 negatives at or above it
    assert 0.985 < op["threshold"] <= 0.99
    # it selects the same rows as tpr_at_fpr: positives strictly above the third-highest negative
    assert np.mean(np.array([0.99, 0.9925, 2.0]) >= op["threshold"]) == tpr_at_fpr(s, y, 1e-2).value == 1.0


def test_operating_threshold_uses_1e3_when_resolvable():
    neg = np.arange(1000) / 1000  # 0.000 .. 0.999
    op = operating_threshold(neg, np.zeros(1000, int))
    assert (op["fpr_target"], op["n_false_positives_allowed"], op["resolved"]) == (1e-3, 1, True)
    assert int(np.sum(neg >= op["threshold"])) == 1 and op["negative_score_cut"] == 0.998
    # one negative fewer: 1e-3 is not resolvable, 1e-2 allows floor(9.99) = 9
    op = operating_threshold(neg[:-1], np.zeros(999, int))
    assert (op["fpr_target"], op["n_false_positives_allowed"]) == (1e-2, 9)
    assert int(np.sum(neg[:-1] >= op["threshold"])) == 9


def test_operating_threshold_ties_and_too_few_negatives():
    # ties at the cut are not selected: achieved FPR falls below the target rather than above it
    neg = np.r_[np.full(3, 0.9), np.linspace(0.0, 0.5, 97)]
    op = operating_threshold(neg, np.zeros(100, int))
    assert op["n_false_positives_allowed"] == 1 and op["threshold"] > 0.9 and op["achieved_fpr"] == 0.0
    # 50 negatives resolve neither 1e-3 nor 1e-2: the threshold sits just above the highest negative
    op = operating_threshold(np.linspace(0, 0.7, 50), np.zeros(50, int))
    assert not op["resolved"] and op["fpr_target"] == 1e-2 and op["n_false_positives_allowed"] == 0
    assert 0.7 < op["threshold"] < 0.7 + 1e-12 and op["achieved_fpr"] == 0.0 and "need >= 100" in op["reason"]
    op = operating_threshold([0.3, 0.4], [1, 1])
    assert math.isnan(op["threshold"]) and not op["resolved"] and op["n_negatives"] == 0
    with pytest.raises(RangeError, match="fprs"):
        operating_threshold([0.1], [0], fprs=(0.0,))
    with pytest.raises(InvalidValueError, match="fprs"):
        operating_threshold([0.1], [0], fprs=())


def test_binomial_ci_matches_scipy_exact():
    for k, n in [(0, 10), (3, 10), (10, 10), (47, 200)]:
        ref = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
        assert binomial_ci(k, n) == pytest.approx((ref.low, ref.high), abs=1e-10)
    assert all(math.isnan(v) for v in binomial_ci(0, 0))


# ----------------------------------------------------------------------------- bootstrap


def _binormal(rng, n_pos, n_neg, d):
    s = np.r_[rng.normal(d, 1, n_pos), rng.normal(0, 1, n_neg)]
    return s, np.r_[np.ones(n_pos), np.zeros(n_neg)]


def test_bootstrap_ci_coverage_binormal():
    # binormal scores, unit variances, mean shift d: AUC = Phi(d / sqrt(2)) exactly
    d = 1.0
    true_auc = stats.norm.cdf(d / math.sqrt(2))
    rng = np.random.default_rng(4)
    n_rep, covered = 200, 0
    for rep in range(n_rep):
        s, y = _binormal(rng, 60, 60, d)
        ci = bootstrap_ci(roc_auc, s, y, n_boot=200, seed=rep)
        covered += ci.lo <= true_auc <= ci.hi
    # nominal 95 %: the binomial sd of the coverage over 200 reps is sqrt(.95*.05/200) = 1.5 %;
    # accept 95 % +/- 3 sd. Too-wide intervals (coverage ~1) fail the upper bound.
    assert 0.905 <= covered / n_rep <= 0.995


def test_bootstrap_is_seeded_and_stratified():
    rng = np.random.default_rng(5)
    s, y = _binormal(rng, 30, 500, 1.5)
    a = bootstrap_ci(roc_auc, s, y, n_boot=50, seed=7)
    assert a == bootstrap_ci(roc_auc, s, y, n_boot=50, seed=7)
    assert a.estimate == roc_auc(s, y) and a.lo < a.estimate < a.hi and a.n_valid == 50
    # a metric that is NaN without both classes stays finite in every stratified resample of 1 positive
    one = bootstrap_ci(roc_auc, np.r_[s[:1], s[30:]], np.r_[y[:1], y[30:]], n_boot=20, seed=0, stratified=True)
    assert one.n_valid == 20
    with pytest.raises(RangeError, match="n_boot"):
        bootstrap_ci(roc_auc, s, y, n_boot=0)


def test_paired_bootstrap_delta_detects_a_real_improvement_only():
    rng = np.random.default_rng(6)
    n = 400
    y = np.r_[np.ones(n), np.zeros(n)]
    shared = rng.normal(0, 1, 2 * n)
    a = shared + y * 0.5
    b = shared + y * 1.5  # same noise, larger separation: b better than a
    res = paired_bootstrap_delta(roc_auc, a, b, y, n_boot=200, seed=1)
    assert res.delta == pytest.approx(roc_auc(b, y) - roc_auc(a, y))
    assert res.lo > 0 and res.frac_delta_le_0 == 0.0
    same = paired_bootstrap_delta(roc_auc, a, a.copy(), y, n_boot=50, seed=1)
    assert same.delta == 0.0 and same.lo == 0.0 and same.hi == 0.0


# ----------------------------------------------------------------------------- anchor gate
