"""Detection metrics for lens finders: ROC, TPR at fixed FPR, bootstrap CIs.

Conventions (every function here)
    ``scores`` are real numbers, larger = more lens-like (a sigmoid probability in [0, 1] in
    this project, but nothing here assumes a range); ``labels`` are 0 / 1 (1 = lens or
    injection). A row is *selected* at threshold ``t`` when ``score >= t``.

Operating points on the negatives (``tpr_at_n_false_positives``, ``tpr_at_fpr``)
    With the negative scores sorted in decreasing order ``s_(1) >= s_(2) >= ...``, "at most
    ``k`` false positives" uses the threshold *just above* ``s_(k+1)``: a positive counts as
    found only when its score is strictly greater than ``s_(k+1)``. There is no
    interpolation between ROC points: ties with ``s_(k+1)`` are not found, so the reported
    TPR never overstates what a threshold could achieve with <= k false positives.
    ``tpr_at_fpr(fpr)`` is that rule with ``k = floor(fpr * n_neg)``; when ``k < 1`` the test
    set cannot resolve that FPR (its resolution is ``1 / n_neg``) and the value is NaN with
    ``resolved = False``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from dhs_gen.errors import InvalidValueError, RangeError, check_range
from dhs_gen.json_values import finite_or_none

__all__ = [
    "BootstrapCI", "BootstrapDelta", "OperatingPoint",
    "roc_auc", "roc_curve", "tpr_at_n_false_positives", "tpr_at_fpr", "recall_at_fpr",
    "DEFAULT_OPERATING_FPRS", "operating_threshold",
    "bootstrap_ci", "paired_bootstrap_delta", "binomial_ci",
]

# float slack when turning fpr * n_neg into a count: 1e-3 * 1000 must give exactly 1
_COUNT_EPS = 1e-9

# The survey's operating point: FPR 1e-3 on the negatives where they resolve it, else 1e-2.
DEFAULT_OPERATING_FPRS = (1e-3, 1e-2)


def _as_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Validate and return (scores float64 (N,), labels bool (N,))."""
    s = np.asarray(scores, dtype=float).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise InvalidValueError("labels", y, f"must have the same length as scores ({s.size}), got {y.size}")
    if not np.all(np.isfinite(s)):
        raise InvalidValueError("scores", s, "must all be finite (drop rows without a score before calling)")
    if y.size and not np.all(np.isin(y, (0, 1))):
        raise InvalidValueError("labels", y, "must be 0 (negative) or 1 (positive)")
    return s, y.astype(bool)


def roc_auc(scores, labels) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos * n_neg)), ties counted as 1/2.

    Parameters
    ----------
    scores : array-like (N,)
        Classifier scores (any unit; larger = more lens-like).
    labels : array-like (N,)
        1 for positives, 0 for negatives.

    Returns
    -------
    float
        Probability that a random positive scores above a random negative (ties 1/2), in
        [0, 1]; NaN when either class is empty (not computable).
    """
    s, y = _as_scores_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = stats.rankdata(s, method="average")  # average ranks give ties exactly 1/2
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve at every distinct score.

    Returns
    -------
    fpr, tpr : ndarray (M + 1,)
        False- and true-positive rates (fractions) for the thresholds below, starting at
        (0, 0) for the threshold +inf and ending at (1, 1).
    thresholds : ndarray (M + 1,)
        ``[+inf, distinct scores in decreasing order]``; a row is selected when
        ``score >= threshold``. Rates are NaN for a class that is empty.
    """
    s, y = _as_scores_labels(scores, labels)
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # the last index of each run of equal scores: all tied rows switch on together
    last_of_run = np.r_[np.nonzero(np.diff(s_sorted))[0], s_sorted.size - 1] if s.size else np.array([], int)
    tp = np.cumsum(y_sorted)[last_of_run]
    fp = np.cumsum(~y_sorted)[last_of_run]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = np.r_[0.0, tp / n_pos] if n_pos else np.full(tp.size + 1, np.nan)
        fpr = np.r_[0.0, fp / n_neg] if n_neg else np.full(fp.size + 1, np.nan)
    return fpr, tpr, np.r_[np.inf, s_sorted[last_of_run]]


@dataclass(frozen=True)
class OperatingPoint:
    """TPR (recall) at a threshold set on the negatives.

    Attributes
    ----------
    value : float
        TPR, fraction of positives with score strictly above ``threshold``; NaN when not resolved.
    threshold : float
        Score a positive must exceed (the (k+1)-th highest negative score; -inf when every
        negative is allowed to pass).
    n_false_positives_allowed : int
        k, the number of negatives allowed above the threshold.
    achieved_fpr : float
        Fraction of negatives strictly above the threshold (<= k / n_neg because of ties).
    n_pos, n_neg : int
        Class sizes the value was computed from.
    resolved : bool
        False when the negatives are too few to resolve the requested operating point.
    reason : str
        Why it is not resolved ('' when it is).
    """

    value: float
    threshold: float
    n_false_positives_allowed: int
    achieved_fpr: float
    n_pos: int
    n_neg: int
    resolved: bool
    reason: str = ""

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN / inf -> None)."""
        return {k: finite_or_none(v) for k, v in asdict(self).items()}


def _operating_point(pos: np.ndarray, neg_desc: np.ndarray, k: int, resolved: bool, reason: str) -> OperatingPoint:
    """TPR of ``pos`` above the (k+1)-th highest of ``neg_desc`` (sorted decreasing)."""
    n_pos, n_neg = pos.size, neg_desc.size
    threshold = float(neg_desc[k]) if k < n_neg else -math.inf
    achieved = float(np.sum(neg_desc > threshold) / n_neg) if n_neg else math.nan
    if not resolved or n_pos == 0:
        reason = reason or "no positives"
        return OperatingPoint(math.nan, threshold, k, achieved, n_pos, n_neg, False, reason)
    return OperatingPoint(float(np.mean(pos > threshold)), threshold, k, achieved, n_pos, n_neg, True, "")


def tpr_at_n_false_positives(scores, labels, n_fp: int) -> OperatingPoint:
    """TPR when at most ``n_fp`` negatives are allowed above the threshold (TPR0, TPR10).

    The threshold is just above the (n_fp + 1)-th highest negative score (see module doc).
    Not resolved (NaN) when there are no more than ``n_fp`` negatives: then any threshold
    lets every negative through and the number says nothing about the finder.

    Parameters
    ----------
    scores, labels : array-like (N,)
        Scores (any unit) and 0/1 labels.
    n_fp : int
        Number of false positives allowed, >= 0 (0 for TPR0, 10 for TPR10).

    Returns
    -------
    OperatingPoint
    """
    n_fp_checked = check_range("n_fp", n_fp, 0, np.inf)
    if n_fp_checked != int(n_fp_checked):
        raise RangeError("n_fp", n_fp, 0, "inf (an integer)")
    s, y = _as_scores_labels(scores, labels)
    neg_desc = np.sort(s[~y])[::-1]
    k = int(n_fp_checked)
    resolved = neg_desc.size > k
    reason = "" if resolved else f"only {neg_desc.size} negatives: need more than n_fp={k}"
    return _operating_point(s[y], neg_desc, k, resolved, reason)


def tpr_at_fpr(scores, labels, fpr: float) -> OperatingPoint:
    """TPR at false-positive rate at most ``fpr``, with ``k = floor(fpr * n_neg)`` negatives allowed.

    Parameters
    ----------
    scores, labels : array-like (N,)
        Scores (any unit) and 0/1 labels.
    fpr : float
        Target false-positive rate, a fraction in (0, 1].

    Returns
    -------
    OperatingPoint
        ``resolved = False`` and ``value = NaN`` when ``fpr * n_neg < 1``: the test set
        holds fewer than ``1 / fpr`` negatives, so an FPR this small cannot be measured.
    """
    return recall_at_fpr(scores, labels, fpr)


def recall_at_fpr(scores, labels, fpr: float, reference_negative_scores=None) -> OperatingPoint:
    """Recall of the positives at the threshold giving FPR <= ``fpr`` on a set of negatives.

    Parameters
    ----------
    scores, labels : array-like (N,)
        Scores (any unit) and 0/1 labels; the positives are the ones whose recall is measured.
    fpr : float
        Target false-positive rate, a fraction in (0, 1].
    reference_negative_scores : array-like, optional
        Negatives that set the threshold instead of the label-0 rows of ``scores`` (e.g. the
        synthetic test controls, when measuring recall of real anchor lenses at the
        synthetic operating point). Default: the label-0 rows.

    Returns
    -------
    OperatingPoint
    """
    fpr = check_range("fpr", fpr, 0.0, 1.0, lo_open=True)
    s, y = _as_scores_labels(scores, labels)
    if reference_negative_scores is None:
        neg = s[~y]
    else:
        neg = np.asarray(reference_negative_scores, dtype=float).ravel()
        if not np.all(np.isfinite(neg)):
            raise InvalidValueError("reference_negative_scores", neg, "must all be finite")
    neg_desc = np.sort(neg)[::-1]
    k = int(math.floor(fpr * neg_desc.size + _COUNT_EPS))
    resolved = k >= 1
    reason = "" if resolved else (
        f"{neg_desc.size} negatives cannot resolve FPR={fpr:g} (resolution 1/n_neg; need >= {math.ceil(1 / fpr)})")
    return _operating_point(s[y], neg_desc, k, resolved, reason)


def operating_threshold(scores, labels, fprs=DEFAULT_OPERATING_FPRS) -> dict:
    """Score threshold of the operating point: the smallest FPR of ``fprs`` the negatives can resolve.

    The one rule for "which score counts as a lens" in reports and completeness tables. With
    the negative scores sorted ``s_(1) >= s_(2) >= ...``, the target FPR ``f`` allows
    ``k = floor(f * n_neg)`` false positives and the cut is ``s_(k+1)`` (module doc). The
    chosen ``f`` is the smallest of ``fprs`` with ``k >= 1`` (FPR 1e-3 needs >= 1000
    negatives, FPR 1e-2 >= 100). When none is resolvable the largest ``f`` is reported with
    ``k = 0`` (a threshold just above every negative) and ``resolved = False``.

    Parameters
    ----------
    scores, labels : array-like (N,)
        Scores (any unit) and 0/1 labels; only the label-0 rows (the negatives) set the threshold.
    fprs : sequence of float
        Candidate target false-positive rates, fractions in (0, 1].

    Returns
    -------
    dict
        ``threshold`` (score units): a row counts as selected when ``score >= threshold``; it is
        the smallest float above ``negative_score_cut``, so it selects exactly the rows strictly
        above the cut, the same rows as :func:`tpr_at_fpr` (NaN without negatives; -inf when
        every negative may pass). ``negative_score_cut``: ``s_(k+1)`` (score units).
        ``fpr_target`` (fraction), ``achieved_fpr`` (fraction of negatives selected, <= target;
        ties can make it smaller), ``n_negatives``, ``n_false_positives_allowed`` (k),
        ``resolved`` (bool) and ``reason`` ('' when resolved).
    """
    targets = sorted(check_range("fprs", f, 0.0, 1.0, lo_open=True) for f in fprs)
    if not targets:
        raise InvalidValueError("fprs", fprs, "must hold at least one false-positive rate")
    s, y = _as_scores_labels(scores, labels)
    neg_desc = np.sort(s[~y])[::-1]
    n_neg = int(neg_desc.size)
    base = {"n_negatives": n_neg}
    if n_neg == 0:
        return {"threshold": math.nan, "negative_score_cut": math.nan, "fpr_target": targets[0],
                "achieved_fpr": math.nan, **base, "n_false_positives_allowed": 0, "resolved": False,
                "reason": "no negatives (label-0 rows) to set the threshold on"}
    counts = [int(math.floor(f * n_neg + _COUNT_EPS)) for f in targets]
    chosen = next((i for i, k in enumerate(counts) if k >= 1), None)
    if chosen is None:
        fpr, k, resolved = targets[-1], 0, False
        reason = (f"{n_neg} negatives cannot resolve FPR={fpr:g} (need >= {math.ceil(1 / fpr)}): "
                  "threshold just above the highest negative")
    else:
        fpr, k, resolved, reason = targets[chosen], counts[chosen], True, ""
    cut = float(neg_desc[k]) if k < n_neg else -math.inf
    threshold = float(np.nextafter(cut, math.inf)) if math.isfinite(cut) else -math.inf
    return {"threshold": threshold, "negative_score_cut": cut, "fpr_target": fpr,
            "achieved_fpr": float(np.sum(neg_desc >= threshold) / n_neg), **base,
            "n_false_positives_allowed": k, "resolved": resolved, "reason": reason}


def binomial_ci(k, n, alpha: float = 0.05) -> tuple[float, float]:
    """Exact (Clopper-Pearson) two-sided confidence interval of a binomial proportion.

    Parameters
    ----------
    k, n : int
        Successes and trials (0 <= k <= n).
    alpha : float
        1 - confidence level (0.05 for 95 %).

    Returns
    -------
    (lo, hi) : float
        Bounds on the success fraction, (NaN, NaN) when ``n == 0``.
    """
    check_range("alpha", alpha, 0.0, 1.0, lo_open=True, hi_open=True)
    n = int(check_range("n", n, 0, np.inf))
    k = int(check_range("k", k, 0, n))
    if n == 0:
        return math.nan, math.nan
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class BootstrapCI:
    """Point estimate and percentile bootstrap interval of a metric (units of the metric)."""

    estimate: float
    lo: float
    hi: float
    alpha: float
    n_boot: int
    n_valid: int  # resamples where the metric was finite

    def as_dict(self) -> dict:
        return {k: finite_or_none(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class BootstrapDelta:
    """Paired bootstrap of ``metric(b) - metric(a)`` on the same resampled rows."""

    metric_a: float
    metric_b: float
    delta: float  # metric_b - metric_a
    lo: float
    hi: float
    frac_delta_le_0: float  # fraction of resamples with delta <= 0 (one-sided bootstrap p for b > a)
    alpha: float
    n_boot: int
    n_valid: int

    def as_dict(self) -> dict:
        return {k: finite_or_none(v) for k, v in asdict(self).items()}


def _resample_indices(y: np.ndarray, n_boot: int, rng: np.random.Generator, stratified: bool):
    """Yield ``n_boot`` index arrays; stratified keeps n_pos and n_neg fixed."""
    n = y.size
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    for _ in range(n_boot):
        if stratified:
            yield np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        else:
            yield rng.integers(0, n, n)


def _check_boot_args(n_boot, alpha, seed) -> tuple[int, float, np.random.Generator]:
    n_boot = int(check_range("n_boot", n_boot, 1, np.inf))
    alpha = check_range("alpha", alpha, 0.0, 1.0, lo_open=True, hi_open=True)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return n_boot, alpha, rng


def _percentiles(values: np.ndarray, alpha: float) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def bootstrap_ci(metric_fn: Callable[[np.ndarray, np.ndarray], float], scores, labels, n_boot: int = 1000,
                 seed=0, alpha: float = 0.05, stratified: bool = True) -> BootstrapCI:
    """Percentile bootstrap confidence interval of ``metric_fn(scores, labels)``.

    Parameters
    ----------
    metric_fn : callable (scores, labels) -> float
        The metric (e.g. :func:`roc_auc`); NaN results are left out of the percentiles.
    scores, labels : array-like (N,)
        Scores (any unit) and 0/1 labels.
    n_boot : int
        Number of resamples.
    seed : int or numpy.random.Generator
        Seed of the resampling generator (no global random state).
    alpha : float
        1 - confidence level: the interval is the [alpha/2, 1 - alpha/2] percentiles.
    stratified : bool
        Resample positives and negatives separately (class sizes fixed), the usual choice
        for ROC metrics whose denominators are the class sizes.

    Returns
    -------
    BootstrapCI
    """
    n_boot, alpha, rng = _check_boot_args(n_boot, alpha, seed)
    s, y = _as_scores_labels(scores, labels)
    estimate = float(metric_fn(s, y.astype(np.int8)))
    values = np.array([metric_fn(s[i], y[i].astype(np.int8)) for i in _resample_indices(y, n_boot, rng, stratified)],
                      dtype=float)
    lo, hi = _percentiles(values, alpha)
    return BootstrapCI(estimate, lo, hi, alpha, n_boot, int(np.isfinite(values).sum()))


def paired_bootstrap_delta(metric_fn: Callable[[np.ndarray, np.ndarray], float], scores_a, scores_b, labels,
                           n_boot: int = 1000, seed=0, alpha: float = 0.05,
                           stratified: bool = True) -> BootstrapDelta:
    """Bootstrap of ``metric(b) - metric(a)`` for two models scored on the same rows.

    Both models are evaluated on the same resampled rows in every resample, so the
    row-to-row variance they share cancels in the difference (the ablation comparison).

    Parameters
    ----------
    metric_fn : callable (scores, labels) -> float
    scores_a, scores_b : array-like (N,)
        Scores of model a (baseline) and model b on the same rows, same order.
    labels : array-like (N,)
        0/1 labels of those rows.
    n_boot, seed, alpha, stratified
        As in :func:`bootstrap_ci`.

    Returns
    -------
    BootstrapDelta
    """
    n_boot, alpha, rng = _check_boot_args(n_boot, alpha, seed)
    sa, y = _as_scores_labels(scores_a, labels)
    sb, _ = _as_scores_labels(scores_b, labels)
    yi = y.astype(np.int8)
    ma, mb = float(metric_fn(sa, yi)), float(metric_fn(sb, yi))
    deltas = np.array([metric_fn(sb[i], yi[i]) - metric_fn(sa[i], yi[i])
                       for i in _resample_indices(y, n_boot, rng, stratified)], dtype=float)
    lo, hi = _percentiles(deltas, alpha)
    finite = deltas[np.isfinite(deltas)]
    frac = float(np.mean(finite <= 0)) if finite.size else math.nan
    return BootstrapDelta(ma, mb, mb - ma, lo, hi, frac, alpha, n_boot, int(finite.size))


# --------------------------------------------------------------------------- anchor gate (seed 004)
