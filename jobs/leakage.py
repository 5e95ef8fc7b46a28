"""Gen5-Prime leakage gates: can a finder tell injections from negatives without seeing an arc?

Gates, each reported with its value, limit and verdict (``None`` when not computable, never a
silent pass): model AUC with the core alone (``dhs score --mask outer``) and the AUC lost when the
core is masked (``--mask core``); a model-free logistic regression on the central pixels; and the
AUC of injections vs their azimuthal-shuffle hard negatives and vs their paired controls.
Used by :mod:`jobs.evaluate` (``metrics.json``) and :mod:`jobs.report` (the stamp sample).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from dhs_gen.metrics import roc_auc
from dhs_gen.utils import uniform_from_hash
from jobs.score import core_mask

if TYPE_CHECKING:  # type hints only: jobs.evaluate imports this module
    from jobs.evaluate import EvalConfig


def finite_or_none(v):
    """``v``, or None when it is None or a non-finite float (JSON has no NaN / inf)."""
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


def gate(name: str, value, threshold: float, comparison: str, reason: str = "", **extra) -> dict:
    """One gate: passes when ``value <comparison> threshold``; None (not computable) without a value."""
    value = finite_or_none(value)
    if value is None:
        return {"name": name, "value": None, "threshold": threshold, "comparison": comparison, "pass": None,
                "reason": reason or "not computable", **extra}
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
PIXSCALE_ARCSEC = 0.262
ARC_CLEAR_MARGIN_ARCSEC = 0.65   # half the DR10 r-band PSF FWHM


def arc_clear_theta_e(core_radius_pix: float) -> float:
    """Smallest theta_E (arcsec) whose arc stays outside a core of ``core_radius_pix`` pixels."""
    return core_radius_pix * PIXSCALE_ARCSEC + ARC_CLEAR_MARGIN_ARCSEC


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


def leakage_gates(df: pd.DataFrame, cfg: EvalConfig, full_auc: float | None, core_only: pd.DataFrame | None,
                  core_masked: pd.DataFrame | None, central: CentralPixels | None) -> dict:
    """The Gen5-Prime gates; a gate whose input is missing is reported as not computable, never as a pass."""
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
