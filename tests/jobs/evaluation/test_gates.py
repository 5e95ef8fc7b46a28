"""The anchor gate (jobs.evaluation.gates): limits inclusive, each criterion by hand, not computable is not a pass."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from dhs_gen.errors import InvalidValueError
from jobs.evaluation.gates import compute_anchor_metrics


def _anchor(pos, neg):
    return np.r_[pos, neg], np.r_[np.ones(len(pos), int), np.zeros(len(neg), int)]


def test_anchor_gate_passes_exactly_at_the_limits():
    # 10 lenses, 7 at/above 0.5 (recovery 0.70); 20 negatives, 3 at/above 0.5 (contamination 0.15)
    pos = [0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1, 0.1, 0.1]
    neg = [0.5, 0.5, 0.5] + [0.1] * 17
    s, y = _anchor(pos, neg)
    m = compute_anchor_metrics(s, y)
    assert (m.n_known_lenses, m.n_recovered_at_0p5, m.recovery_rate_0p5) == (10, 7, 0.7)
    assert (m.n_hard_negatives, m.n_contaminated_at_0p5, m.contamination_rate_0p5) == (20, 3, 0.15)
    assert m.score_separation == pytest.approx(0.8)  # median 0.9 - median 0.1
    assert m.auroc_anchor == pytest.approx(skm.roc_auc_score(y, s))
    assert m.gate_criteria == {"recovery": True, "contamination": True, "separation": True, "auroc": True}
    assert m.passes_anchor_gate


def test_anchor_gate_fails_just_past_each_limit():
    pos = [0.5, 0.9, 0.9, 0.9, 0.9, 0.9, 0.49, 0.1, 0.1, 0.1]  # 6/10 recovered
    neg = [0.5, 0.5, 0.5, 0.5] + [0.1] * 16  # 4/20 = 0.20 contamination
    m = compute_anchor_metrics(*_anchor(pos, neg))
    assert m.gate_criteria["recovery"] is False and m.gate_criteria["contamination"] is False
    assert not m.passes_anchor_gate
    # separation limit: medians 0.5 vs 0.1 = 0.4 passes at 0.4, fails at 0.41
    s, y = _anchor([0.5, 0.5, 0.5], [0.1, 0.1, 0.1])
    assert compute_anchor_metrics(s, y, thresholds={"min_score_separation": 0.4}).gate_criteria["separation"]
    assert not compute_anchor_metrics(s, y, thresholds={"min_score_separation": 0.41}).gate_criteria["separation"]


def test_anchor_gate_without_hard_negatives_is_not_computable_not_pass():
    m = compute_anchor_metrics([0.9, 0.8, 0.7], [1, 1, 1])
    assert m.recovery_rate_0p5 == 1.0 and m.gate_criteria["recovery"] is True
    assert m.gate_criteria["contamination"] is None and m.gate_criteria["auroc"] is None
    assert set(m.not_computable) == {"contamination", "separation", "auroc"}
    assert m.passes_anchor_gate is False
    d = m.as_dict()
    assert d["contamination_rate_0p5"] is None and d["auroc_anchor"] is None
    with pytest.raises(InvalidValueError, match="thresholds"):
        compute_anchor_metrics([0.9], [1], thresholds={"min_recall": 0.5})
