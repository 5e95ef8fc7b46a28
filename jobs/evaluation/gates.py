"""The gates a lens finder must pass: Gen5-Prime leakage gates and the anchor gate (seed 004).

Leakage: can a finder tell injections from negatives without seeing an arc?

Gates, each reported with its value, limit and verdict (``None`` when not computable, never a
silent pass): model AUC with the core alone (``dhs score --mask outer``) and the AUC lost when the
core is masked (``--mask core``); a model-free logistic regression on the central pixels; and the
AUC of injections vs their azimuthal-shuffle hard negatives and vs their paired controls.
Used by :mod:`jobs.evaluation.evaluate` (``metrics.json``) and :mod:`jobs.evaluation.report` (the stamp sample).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from dhs_gen.augmentation.negatives import core_mask
from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.json_values import finite_or_none
from dhs_gen.metrics import _as_scores_labels, roc_auc
from dhs_gen.utils import uniform_from_hash
from jobs.runtime import storage

COMPARISONS = ("<=", ">=", "in")
VERDICT = {True: "PASS", False: "FAIL", None: "not computable"}


def gate(name: str, value, threshold, comparison: str, reason: str = "", **extra) -> dict:
    """The one record of every gate (leakage, anchor, realism): passes when ``value <comparison> threshold``.

    ``comparison`` is ``"<="``, ``">="`` or ``"in"`` (``threshold`` then a closed ``[lo, hi]``); a gate
    without a finite value is not computable (``pass`` None, never a silent pass). ``reason`` says what
    the gate measures or why it could not be computed; ``extra`` adds counts and context.
    """
    if comparison not in COMPARISONS:
        raise InvalidValueError("comparison", comparison, f"one of {COMPARISONS}")
    value = finite_or_none(value)
    if value is None:
        return {"name": name, "value": None, "threshold": threshold, "comparison": comparison, "pass": None,
                "reason": reason or "not computable", **extra}
    if comparison == "in":
        ok = threshold[0] <= value <= threshold[1]
    else:
        ok = value <= threshold if comparison == "<=" else value >= threshold
    return {"name": name, "value": float(value), "threshold": threshold, "comparison": comparison,
            "pass": bool(ok), "reason": reason, **extra}


def paired_kind_auc(df: pd.DataFrame, negative_kind: str) -> tuple[float, int]:
    """AUC of injections vs the ``negative_kind`` rows of the same pairs, and the number of pairs."""
    if "kind" not in df.columns or "pair_id" not in df.columns:
        return math.nan, 0
    inj, neg = df[df["kind"] == "injection"], df[df["kind"] == negative_kind]
    pairs = set(inj["pair_id"]) & set(neg["pair_id"])
    inj, neg = inj[inj["pair_id"].isin(pairs)], neg[neg["pair_id"].isin(pairs)]
    s = np.r_[inj["score"].to_numpy(float), neg["score"].to_numpy(float)]
    return roc_auc(s, np.r_[np.ones(len(inj)), np.zeros(len(neg))]), len(pairs)


@dataclass
class CentralPixels:
    """Normalised central pixels of stamps, for the model-free leakage check.

    ``features`` (N, bands * n_core_pixels) dimensionless; ``labels`` (N,) 0/1; ``groups`` (N,)
    pair ids (cross-validation folds never split a pair).
    """

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    theta_e_arcsec: np.ndarray | None = None   # of each row's pair; None when unknown


# An arc of Einstein radius theta_E puts real, physical light inside a core of radius R when
# theta_E < R + FWHM/2 (its PSF-blurred ridge reaches the core). The core gates ask whether the core
# separates the classes when *no* arc light is expected there, so they use only rows whose arcs are
# clear of it; the rule and the row count are reported with each gate.
ARC_CLEAR_MARGIN_ARCSEC = 0.65   # half the DR10 r-band PSF FWHM


def arc_clear_theta_e(core_radius_pix: float) -> float:
    """Smallest theta_E (arcsec) whose arc stays outside a core of ``core_radius_pix`` pixels."""
    return core_radius_pix * PIXSCALE_DR10_ARCSEC + ARC_CLEAR_MARGIN_ARCSEC


def _arc_clear(theta_e, core_radius_pix: float) -> np.ndarray:
    t = np.asarray(theta_e, dtype=float)
    return ~(t < arc_clear_theta_e(core_radius_pix))  # unknown theta_E (NaN) is kept


def central_pixel_features(images_normalised: np.ndarray, radius_pix: float) -> np.ndarray:
    """(N, B, H, W) normalised stamps -> (N, B * n) values of the n pixels within ``radius_pix`` of the centre."""
    inside = core_mask(images_normalised.shape[-2], images_normalised.shape[-1], radius_pix)
    return images_normalised[..., inside].reshape(len(images_normalised), -1)


def central_logreg_auc(central: CentralPixels, n_splits: int = 5, seed: int = 0) -> float:
    """Cross-validated AUC of a logistic regression on the central pixels (grouped by pair).

    High AUC means the injections differ from their controls inside the core, where the arc
    should not be: a shortcut a CNN can learn without seeing any arc.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(central.labels, dtype=int)
    n_min = min(int(y.sum()), int((y == 0).sum()), len(np.unique(central.groups)))
    if n_min < 2:
        return math.nan
    cv = StratifiedGroupKFold(n_splits=min(n_splits, n_min), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    pred = cross_val_predict(model, central.features, y, groups=central.groups, cv=cv, method="decision_function")
    return roc_auc(pred, y)


def leakage_gates(df: pd.DataFrame, cfg, full_auc: float | None, core_only: pd.DataFrame | None,
                  core_masked: pd.DataFrame | None, central: CentralPixels | None) -> dict:
    """The Gen5-Prime gates; a gate whose input is missing is reported as not computable, never as a pass.

    ``cfg`` is a :class:`jobs.evaluation.evaluate.EvalConfig` (its ``core_radius_pix``, ``seed`` and gate limits).
    """
    gates = []
    clear_rule = f"rows with theta_E >= {arc_clear_theta_e(cfg.core_radius_pix):.2f} arcsec (arcs clear of the core)"
    if core_only is not None and "theta_e_arcsec" in core_only.columns:
        core_only = core_only[_arc_clear(core_only["theta_e_arcsec"], cfg.core_radius_pix)]
    if central is not None and central.theta_e_arcsec is not None:
        keep = _arc_clear(central.theta_e_arcsec, cfg.core_radius_pix)
        central = CentralPixels(central.features[keep], central.labels[keep], central.groups[keep],
                                central.theta_e_arcsec[keep])
    if core_only is not None and len(core_only):
        v = roc_auc(core_only["score"], core_only["label"])
        gates.append(gate("core_only_auc", v, cfg.max_core_only_auc, "<=", n=len(core_only), rows=clear_rule))
    else:
        gates.append(gate("core_only_auc", None, cfg.max_core_only_auc, "<=",
                          "no core-only scores (run `dhs score --mask outer`, or give --stamps and --checkpoint)"))
    if core_masked is not None and len(core_masked) and full_auc is not None:
        masked = roc_auc(core_masked["score"], core_masked["label"])
        gates.append(gate("core_masked_auc_drop", full_auc - masked, cfg.max_core_masked_auc_drop, "<=",
                          core_masked_auc=finite_or_none(masked), n=len(core_masked)))
    else:
        gates.append(gate("core_masked_auc_drop", None, cfg.max_core_masked_auc_drop, "<=",
                          "no core-masked scores (run `dhs score --mask core`, or give --stamps and --checkpoint)"))
    if central is not None and len(central.labels):
        gates.append(gate("central_pixels_logreg_auc", central_logreg_auc(central, seed=cfg.seed),
                          cfg.max_central_logreg_auc, "<=", n=len(central.labels), rows=clear_rule))
    else:
        gates.append(gate("central_pixels_logreg_auc", None, cfg.max_central_logreg_auc, "<=",
                          "no stamps given (--stamps) for the model-free central-pixel check"))
    for kind, limit in (("hardneg_shuffle", cfg.min_injection_vs_shuffle_auc),
                        ("control", cfg.min_injection_vs_control_auc)):
        v, n_pairs = paired_kind_auc(df, kind)
        gates.append(gate(f"injection_vs_{kind}_auc", v, limit, ">=",
                          "" if n_pairs else f"no pairs with both an injection and a {kind} row", n_pairs=n_pairs))
    verdicts = [g["pass"] for g in gates]
    return {"passes": bool(all(v is True for v in verdicts)),
            "not_computable": [g["name"] for g in gates if g["pass"] is None], "gates": gates}


def leakage_sample(df: pd.DataFrame, max_rows: int) -> set:
    """Task ids of a deterministic, pair-preserving subsample of at most ~``max_rows`` rows."""
    frac = min(1.0, max_rows / max(1, len(df)))
    key = df["pair_id"] if "pair_id" in df.columns else df["task_id"]
    keep = key.map(lambda p: uniform_from_hash(str(p), "leakage") < frac)
    return set(df.loc[keep, "task_id"])


# --------------------------------------------------------------------------- anchor gate (seed 004)
# Recovery, contamination, score separation and AUROC of a finder's scores on a real anchor set (known
# lenses vs real hard negatives), each checked against a limit; the gate passes only when every
# criterion is computable and met.

DEFAULT_ANCHOR_GATE = {
    "min_recovery_rate": 0.70,       # known lenses recovered at the score threshold
    "max_contamination_rate": 0.15,  # real hard negatives above the score threshold
    "min_score_separation": 0.4,     # median(score | lens) - median(score | hard negative)
    "min_auroc": 0.8,
}


@dataclass(frozen=True)
class AnchorMetrics:
    """Metrics of a finder on a real anchor set (known lenses vs real hard negatives).

    Rates are fractions; scores are the finder's probabilities. ``gates`` holds one :func:`gate`
    record per criterion (recovery, contamination, separation, auroc); a criterion that cannot be
    computed (e.g. no hard negatives) has ``pass`` None and is listed in ``not_computable``; the
    anchor gate then does not pass.
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
    gates: list = field(default_factory=list)
    not_computable: tuple = ()
    threshold: float = 0.5
    gate_thresholds: dict = field(default_factory=lambda: dict(DEFAULT_ANCHOR_GATE))

    def as_dict(self) -> dict:
        """JSON-ready dict (NaN -> None)."""
        d = asdict(self)
        d["not_computable"] = list(self.not_computable)
        return {k: finite_or_none(v) for k, v in d.items()}

    @property
    def gate_criteria(self) -> dict:
        """``{criterion: pass}`` (True, False, or None when not computable), read from :attr:`gates`."""
        return {g["name"]: g["pass"] for g in self.gates}


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
    gates = [
        gate("recovery", recovery, limits["min_recovery_rate"], ">=",
             "" if pos.size else "no known lenses", what=f"known lenses scoring >= {threshold:g}"),
        gate("contamination", contamination, limits["max_contamination_rate"], "<=",
             "" if neg.size else "no hard negatives", what=f"real hard negatives scoring >= {threshold:g}"),
        gate("separation", separation, limits["min_score_separation"], ">=",
             "" if pos.size and neg.size else "needs lenses and hard negatives",
             what="median score of lenses - median score of hard negatives"),
        gate("auroc", auroc, limits["min_auroc"], ">=",
             "" if pos.size and neg.size else "needs lenses and hard negatives", what="AUROC lenses vs hard negatives"),
    ]
    missing = tuple(g["name"] for g in gates if g["pass"] is None)
    passes = not missing and all(g["pass"] for g in gates)
    return AnchorMetrics(pos.size, n_rec, recovery, neg.size, n_con, contamination, separation, auroc,
                         passes, gates, missing, threshold, limits)


def anchor_metrics(scored: pa.Table, threshold: float = 0.5, thresholds: dict | None = None) -> dict:
    """``compute_anchor_metrics`` on ``dhs score`` output of an anchor set, plus per-class counts.

    Rows with a null score are counted (``n_unscored``) and left out of the metrics.
    """
    d = scored.select([c for c in ("score", "label", "class") if c in scored.column_names]).to_pylist()
    ok = [r for r in d if r["score"] is not None]
    m = compute_anchor_metrics([r["score"] for r in ok], [r["label"] for r in ok], threshold, thresholds)
    per_class = {}
    for r in ok:
        c = per_class.setdefault(r.get("class") or "unknown", {"n": 0, "n_at_or_above_threshold": 0})
        c["n"] += 1
        c["n_at_or_above_threshold"] += int(r["score"] >= threshold)
    return {**m.as_dict(), "n_unscored": len(d) - len(ok), "per_class": per_class}


def anchor_metrics_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dhs anchors metrics``: the anchor gate on ``dhs score`` output of an anchor set."""
    p = argparse.ArgumentParser(prog="dhs anchors metrics", description="anchor gate on `dhs score` output")
    p.add_argument("--scores", required=True, help="dhs score output of an anchor set")
    p.add_argument("--threshold", type=float, default=0.5, help="score at or above which an anchor counts as found")
    args = p.parse_args(argv)
    print(json.dumps(anchor_metrics(storage.read_parquet(args.scores), args.threshold), indent=2, default=str))
    return 0
