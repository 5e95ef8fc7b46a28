"""The anchor gate (seed 004): does a finder recover real lenses and reject real hard negatives?

Recovery, contamination, score separation and AUROC of a finder's scores on a real anchor set
(known lenses vs real hard negatives), each checked against a limit; the gate passes only when
every criterion is computable and met. Scores and labels follow :mod:`dhs_gen.metrics`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.metrics import _as_scores_labels, _json_number, roc_auc

__all__ = ["AnchorMetrics", "DEFAULT_ANCHOR_GATE", "compute_anchor_metrics"]

DEFAULT_ANCHOR_GATE = {
    "min_recovery_rate": 0.70,       # known lenses recovered at the score threshold
    "max_contamination_rate": 0.15,  # real hard negatives above the score threshold
    "min_score_separation": 0.4,     # median(score | lens) - median(score | hard negative)
    "min_auroc": 0.8,
}


@dataclass(frozen=True)
class AnchorMetrics:
    """Metrics of a finder on a real anchor set (known lenses vs real hard negatives).

    Rates are fractions; scores are the finder's probabilities. A criterion that cannot be
    computed (e.g. no hard negatives) is ``None`` in ``gate_criteria`` and listed in
    ``not_computable``; the gate then does not pass.
    """

    n_known_lenses: int
    n_recovered_at_0p5: int
    recovery_rate_0p5: float
    n_hard_negatives: int
    n_contaminated_at_0p5: int
    contamination_rate_0p5: float
    score_separation: float
    auroc_anchor: float
    passes_anchor_gate: bool
    gate_criteria: dict = field(default_factory=dict)
    not_computable: tuple = ()
    threshold: float = 0.5
    gate_thresholds: dict = field(default_factory=lambda: dict(DEFAULT_ANCHOR_GATE))

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN -> None)."""
        d = asdict(self)
        d["not_computable"] = list(self.not_computable)
        return {k: _json_number(v) for k, v in d.items()}


def compute_anchor_metrics(scores, labels, threshold: float = 0.5, thresholds: dict | None = None) -> AnchorMetrics:
    """Recovery, contamination, separation and AUROC on an anchor set, and the anchor gate.

    Parameters
    ----------
    scores : array-like (N,)
        Finder probabilities in [0, 1].
    labels : array-like (N,)
        1 known lens, 0 real hard negative.
    threshold : float
        Score at or above which an object counts as found (the ``_0p5`` fields use it; 0.5
        by default, as in the seed).
    thresholds : dict, optional
        Gate limits, keys of :data:`DEFAULT_ANCHOR_GATE` (missing keys take the defaults).

    Returns
    -------
    AnchorMetrics
        Passes only when every criterion is computable and met (limits inclusive).
    """
    threshold = check_range("threshold", threshold, -np.inf, np.inf)
    limits = dict(DEFAULT_ANCHOR_GATE)
    for key, value in (thresholds or {}).items():
        if key not in DEFAULT_ANCHOR_GATE:
            raise InvalidValueError("thresholds", key, f"keys must be among {sorted(DEFAULT_ANCHOR_GATE)}")
        limits[key] = check_range(f"thresholds[{key!r}]", value)
    s, y = _as_scores_labels(scores, labels)
    pos, neg = s[y], s[~y]
    n_rec, n_con = int(np.sum(pos >= threshold)), int(np.sum(neg >= threshold))
    recovery = n_rec / pos.size if pos.size else math.nan
    contamination = n_con / neg.size if neg.size else math.nan
    separation = float(np.median(pos) - np.median(neg)) if pos.size and neg.size else math.nan
    auroc = roc_auc(s, y)
    checks = {
        "recovery": (recovery, lambda v: v >= limits["min_recovery_rate"]),
        "contamination": (contamination, lambda v: v <= limits["max_contamination_rate"]),
        "separation": (separation, lambda v: v >= limits["min_score_separation"]),
        "auroc": (auroc, lambda v: v >= limits["min_auroc"]),
    }
    criteria = {name: (None if math.isnan(v) else bool(ok(v))) for name, (v, ok) in checks.items()}
    missing = tuple(name for name, v in criteria.items() if v is None)
    passes = not missing and all(criteria.values())
    return AnchorMetrics(pos.size, n_rec, recovery, neg.size, n_con, contamination, separation, auroc,
                         passes, criteria, missing, threshold, limits)
