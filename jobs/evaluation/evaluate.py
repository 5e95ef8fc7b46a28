"""Evaluate a lens finder from its scores: metrics.json, leakage gates, anchor gate, report.

    dhs evaluate --scores SCORES [--anchor-scores ANCHORS] [--stamps STAMPS] [--checkpoint CKPT]
                 [--core-only-scores S1] [--core-masked-scores S2] [--recall-threshold T]
                 [--anchor-threshold T] --out DIR

``SCORES`` is the output of ``dhs score`` on a stamps dataset. Only the ``--split`` rows
(``test`` by default) are used; rows with ``cutout_ok = 0`` or no score are skipped and counted.
Metrics (:mod:`dhs_gen.metrics`): AUC and TPR at FPR 1e-2 / 1e-3 / 1e-4 with stratified
bootstrap 95 % CIs, overall and per ``source_mode`` / ``artifact_profile``; recall vs theta_E
and arc SNR at the operating threshold. The operating threshold
(:func:`dhs_gen.metrics.operating_threshold`) is the score at which the false-positive rate on
the negatives of the evaluated split (label 0: paired controls and hard negatives) is 1e-3 where
they resolve it (>= 1000 negatives), else 1e-2; a stamp counts as found when ``score >=``
it. ``--recall-threshold`` / ``--anchor-threshold`` override it; metrics.json says which was used.
Gen5-Prime leakage gates: model AUC with the core alone (``dhs score --mask
outer``) and with the core masked (``--mask core``), given as score datasets or computed here
from ``--stamps`` with ``--checkpoint``; a model-free logistic regression on the central
pixels (needs ``--stamps``); injections vs their azimuthal-shuffle hard negatives and vs their
paired controls. Anchor gate (seed 004) on real lenses and real hard negatives.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

from dhs_gen.errors import ConfigError
from dhs_gen.json_values import finite_or_none
from dhs_gen.metrics import (
    DEFAULT_OPERATING_FPRS,
    binomial_ci,
    bootstrap_ci,
    operating_threshold,
    recall_at_fpr,
    roc_auc,
    tpr_at_fpr,
    tpr_at_n_false_positives,
)
from dhs_gen.utils import hash_uint64
from jobs.evaluation.gates import CentralPixels, compute_anchor_metrics, leakage_gates
from jobs.evaluation.score import DEFAULT_CORE_RADIUS_PIX

STRATA = ("source_mode", "artifact_profile")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation settings (validated on construction; saved in metrics.json).

    FPRs are fractions; radii in pixels; AUC limits are AUC values in [0, 1].
    """

    fprs: tuple = (1e-2, 1e-3, 1e-4)
    n_boot: int = 1000
    seed: int = 0
    alpha: float = 0.05
    split: str = "test"  # "all" uses every row
    # score at or above which an injection counts as recovered; None: the operating threshold
    recall_threshold: float | None = None
    operating_fprs: tuple = DEFAULT_OPERATING_FPRS  # smallest one the negatives resolve sets the threshold
    core_radius_pix: float = DEFAULT_CORE_RADIUS_PIX
    max_core_only_auc: float = 0.70  # the seed's shortcut: AUC 0.90 from the central pixels alone
    max_core_masked_auc_drop: float = 0.10
    max_central_logreg_auc: float = 0.70
    min_injection_vs_shuffle_auc: float = 0.70
    min_injection_vs_control_auc: float = 0.70
    # score at or above which an anchor counts as found; None: the operating threshold of the synthetic negatives
    anchor_threshold: float | None = None
    anchor_gate: dict = field(default_factory=dict)  # overrides of dhs_gen.metrics.DEFAULT_ANCHOR_GATE
    leakage_max_rows: int = 20000  # cap on stamps read for the model-free and masked checks
    n_recall_bins: int = 8

    def __post_init__(self):
        object.__setattr__(self, "fprs", tuple(float(f) for f in self.fprs))
        if not self.fprs or any(not (0.0 < f <= 1.0) for f in self.fprs):
            raise ConfigError("fprs", self.fprs, "must be a non-empty list of fractions in (0, 1]")
        object.__setattr__(self, "operating_fprs", tuple(float(f) for f in self.operating_fprs))
        if not self.operating_fprs or any(not (0.0 < f < 1.0) for f in self.operating_fprs):
            raise ConfigError("operating_fprs", self.operating_fprs, "must be a non-empty list of fractions in (0, 1)")
        for name in ("recall_threshold", "anchor_threshold"):
            value = getattr(self, name)
            if value is not None and not np.isfinite(value):
                raise ConfigError(name, value, "must be a finite score, or None for the operating threshold")
        for name in ("n_boot", "leakage_max_rows", "n_recall_bins"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(name, getattr(self, name), "must be an integer >= 1")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError("alpha", self.alpha, "must be in (0, 1)")
        if self.split not in ("train", "val", "test", "all"):
            raise ConfigError("split", self.split, "must be one of ['train', 'val', 'test', 'all']")
        if not self.core_radius_pix > 0:
            raise ConfigError("core_radius_pix", self.core_radius_pix, "must be > 0 pixels")
        for name in ("max_core_only_auc", "max_core_masked_auc_drop", "max_central_logreg_auc",
                     "min_injection_vs_shuffle_auc", "min_injection_vs_control_auc"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(name, getattr(self, name), "must be in [0, 1]")


def fpr_key(fpr: float) -> str:
    """Key of an FPR in metrics.json: ``1e-3 -> "0.001"``."""
    return f"{fpr:g}"


# --------------------------------------------------------------------------- operating threshold


def _fpr_text(fpr: float) -> str:
    """``0.01 -> "1e-2"``, ``0.005 -> "5e-3"``."""
    mantissa, exponent = f"{fpr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _score_text(t: float) -> str:
    """A threshold with enough digits to tell it from 1 (over-confident scores crowd just below 1)."""
    digits = 2 if t >= 1.0 or t <= 0.0 else max(2, int(np.ceil(-np.log10(1.0 - t))) + 1)
    return f"{t:.{digits}f}" if 0.0 < t < 1.0 else f"{t:.4g}"


def operating_point_json(op: dict, negatives: str) -> dict:
    """:func:`dhs_gen.metrics.operating_threshold` as stored in metrics.json (NaN / inf -> None)."""
    return {**{k: finite_or_none(v) for k, v in op.items()}, "negatives": negatives}


def threshold_choice(explicit: float | None, op: dict) -> dict:
    """The threshold a block uses: the explicit one if given, else the operating point's.

    Parameters
    ----------
    explicit : float or None
        A score threshold the user gave (``--recall-threshold`` / ``--anchor-threshold``).
    op : dict or None
        :func:`operating_point_json` of the negatives (needed only when ``explicit`` is None).

    Returns
    -------
    dict
        ``threshold`` (score; None when neither exists), ``source`` (``"explicit"`` or
        ``"operating_point"``) and ``text``, the line the report prints above the numbers.
    """
    if explicit is not None:
        return {"threshold": float(explicit), "source": "explicit",
                "text": f"threshold {float(explicit):g} (given explicitly, not the operating point)"}
    t, n = op["threshold"], op["n_negatives"]
    if t is None or not np.isfinite(t):
        return {"threshold": None, "source": "operating_point",
                "text": f"no operating threshold: {op.get('reason') or 'no negatives'}"}
    if op["resolved"]:
        text = f"operating threshold {_score_text(t)} (FPR {_fpr_text(op['fpr_target'])} on {n:,} negatives)"
    else:
        text = (f"operating threshold {_score_text(t)} (just above all {n:,} negatives: too few to resolve "
                f"FPR {_fpr_text(op['fpr_target'])})")
    return {"threshold": float(t), "source": "operating_point", "text": text}


# --------------------------------------------------------------------------- data selection


def select_rows(df: pd.DataFrame, split: str) -> tuple[pd.DataFrame, dict]:
    """Rows of ``split`` that can be evaluated, and the counts of those skipped (never silently)."""
    if split != "all" and "split" in df.columns:
        df = df[df["split"] == split]
    n = len(df)
    not_ok = (df["cutout_ok"].fillna(1).astype(int) == 0) if "cutout_ok" in df.columns else pd.Series(False, df.index)
    no_score = df["score"].isna() & ~not_ok
    counts = {"n_rows": n, "n_skipped_cutout_not_ok": int(not_ok.sum()), "n_skipped_no_score": int(no_score.sum())}
    kept = df[~not_ok & ~no_score]
    counts["n_evaluated"] = len(kept)
    return kept, counts


def _seed_for(cfg: EvalConfig, name: str) -> int:
    """A stable resampling seed per stratum, so strata do not share resamples."""
    return hash_uint64(name, f"evaluate:{cfg.seed}") % (2**63)


def metric_block(scores, labels, cfg: EvalConfig, name: str) -> dict:
    """AUC and TPR at each FPR with bootstrap CIs, plus TPR0 / TPR10, for one set of rows."""
    s = np.asarray(scores, dtype=float)
    y = np.asarray(labels, dtype=np.int8)
    n_pos, n_neg = int(y.sum()), int((y == 0).sum())
    out = {"n_pos": n_pos, "n_neg": n_neg, "auc": None, "auc_ci95": None, "tpr_at_fpr": {}}
    both = n_pos > 0 and n_neg > 0
    if both:
        ci = bootstrap_ci(roc_auc, s, y, cfg.n_boot, _seed_for(cfg, name + ":auc"), cfg.alpha)
        out.update(auc=ci.estimate, auc_ci95=[finite_or_none(ci.lo), finite_or_none(ci.hi)])
    for fpr in cfg.fprs:
        op = tpr_at_fpr(s, y, fpr)
        entry = {"value": finite_or_none(op.value), "ci95": None, "resolved": op.resolved,
                 "too_few_negatives": op.n_neg * fpr < 1, "reason": op.reason or None,
                 "threshold": finite_or_none(op.threshold), "achieved_fpr": finite_or_none(op.achieved_fpr)}
        if op.resolved:
            ci = bootstrap_ci(lambda a, b, f=fpr: tpr_at_fpr(a, b, f).value, s, y, cfg.n_boot,
                              _seed_for(cfg, f"{name}:tpr:{fpr}"), cfg.alpha)
            entry["ci95"] = [finite_or_none(ci.lo), finite_or_none(ci.hi)]
        out["tpr_at_fpr"][fpr_key(fpr)] = entry
    for n_fp in (0, 10):
        out[f"tpr{n_fp}"] = tpr_at_n_false_positives(s, y, n_fp).as_dict() if both else None
    return out


def stratified_blocks(df: pd.DataFrame, column: str, cfg: EvalConfig) -> dict:
    """:func:`metric_block` per value of ``column``.

    Positives are the stratum's positives. Negatives are the stratum's own negatives when it has
    any (``negatives_from = "stratum"``); otherwise (e.g. controls carry no source mode) all
    negatives (``"all"``), which asks "at the global operating point, how many of these are found".
    """
    if column not in df.columns:
        return {}
    neg_all = df[df["label"] == 0]
    out = {}
    for value in sorted(df[column].dropna().unique()):
        sub = df[df[column] == value]
        pos, neg = sub[sub["label"] == 1], sub[sub["label"] == 0]
        source = "stratum" if len(neg) else "all"
        rows = pd.concat([pos, neg if len(neg) else neg_all])
        block = metric_block(rows["score"], rows["label"], cfg, f"{column}={value}")
        out[str(value)] = {"negatives_from": source, **block}
    return out


def _bin_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """One bin per value on a discrete grid (<= n_bins distinct values), else quantile edges."""
    uniq = np.unique(values)
    if uniq.size <= n_bins:
        mids = (uniq[1:] + uniq[:-1]) / 2
        return np.r_[uniq[0] - 0.5 * (mids[0] - uniq[0]) if mids.size else uniq[0] - 0.5, mids,
                     uniq[-1] + 0.5 * (uniq[-1] - mids[-1]) if mids.size else uniq[-1] + 0.5]
    return np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)))


def recall_threshold(df: pd.DataFrame, cfg: EvalConfig) -> tuple[dict, dict]:
    """(operating point of the label-0 rows of ``df`` as JSON, :func:`threshold_choice` for the recall curves)."""
    op = operating_threshold(df["score"], df["label"], cfg.operating_fprs)
    op_json = operating_point_json(op, "label-0 rows of the evaluated split (controls and hard negatives)")
    return op_json, threshold_choice(cfg.recall_threshold, op_json)


def recall_curve(df: pd.DataFrame, column: str, cfg: EvalConfig, threshold: float | None = None) -> list[dict]:
    """Recall of injections (``score >= threshold``) in bins of ``column``, with exact binomial 95 % CIs.

    ``threshold`` (score) defaults to :func:`recall_threshold` of ``df``: ``cfg.recall_threshold``
    if set, else the operating threshold of the negatives. Empty without any threshold.
    """
    if threshold is None:
        threshold = recall_threshold(df, cfg)[1]["threshold"]
    if column not in df.columns or threshold is None:
        return []
    pos = df[(df["label"] == 1) & df[column].notna()]
    vals = pos[column].to_numpy(float)
    vals_ok = np.isfinite(vals)
    pos, vals = pos[vals_ok], vals[vals_ok]
    if not len(vals):
        return []
    edges = _bin_edges(vals, cfg.n_recall_bins)
    idx = np.clip(np.searchsorted(edges, vals, side="right") - 1, 0, len(edges) - 2)
    found = pos["score"].to_numpy(float) >= threshold
    rows = []
    for b in range(len(edges) - 1):
        sel = idx == b
        n, k = int(sel.sum()), int(found[sel].sum())
        if n == 0:
            continue
        lo, hi = binomial_ci(k, n, cfg.alpha)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "center": float(np.median(vals[sel])),
                     "n": n, "k": k, "recall": k / n, "ci95": [lo, hi]})
    return rows


# --------------------------------------------------------------------------- anchor gate


def anchor_block(anchor: pd.DataFrame | None, cfg: EvalConfig, synthetic_negatives: np.ndarray | None) -> dict:
    """AnchorMetrics plus TPR0, TPR10 and recall at FPR 1e-3 on the anchor set.

    The recovery / contamination threshold is ``cfg.anchor_threshold`` when given, else the
    operating threshold of ``synthetic_negatives`` (the synthetic test negatives): real lenses are
    judged at the threshold a survey would run the finder at. The ``*_0p5`` fields of
    :class:`~jobs.evaluation.gates.AnchorMetrics` keep their names and hold the counts at
    ``threshold``; ``n_recovered_at_threshold`` etc. repeat them under names that say so.
    """
    if anchor is None:
        return {"available": False, "reason": "no anchor set given (--anchor-scores): the anchor gate was not run"}
    counts = {"n_rows": len(anchor), "n_skipped_no_score": int(anchor["score"].isna().sum())}
    anchor = anchor[anchor["score"].notna()]
    if not len(anchor):
        return {"available": False, "reason": "the anchor set has no scored rows", **counts}
    neg = np.asarray(synthetic_negatives if synthetic_negatives is not None else [], dtype=float)
    op_json = None
    if cfg.anchor_threshold is None:
        op = operating_threshold(neg, np.zeros(neg.size, dtype=np.int8), cfg.operating_fprs)
        op_json = operating_point_json(op, "label-0 rows of the evaluated synthetic split")
    choice = threshold_choice(cfg.anchor_threshold, op_json)
    if choice["threshold"] is None:
        return {"available": False, "reason": "no synthetic negatives to set the anchor threshold on "
                                              "(give --anchor-threshold)", "operating_point": op_json, **counts}
    s, y = anchor["score"].to_numpy(float), anchor["label"].to_numpy(int)
    m = compute_anchor_metrics(s, y, choice["threshold"], cfg.anchor_gate)
    out = {"available": True, **counts, **m.as_dict(),
           "threshold_source": choice["source"], "threshold_text": choice["text"], "operating_point": op_json,
           "n_recovered_at_threshold": m.n_recovered_at_0p5, "recovery_rate": finite_or_none(m.recovery_rate_0p5),
           "n_contaminated_at_threshold": m.n_contaminated_at_0p5,
           "contamination_rate": finite_or_none(m.contamination_rate_0p5),
           "tpr0": tpr_at_n_false_positives(s, y, 0).as_dict(),
           "tpr10": tpr_at_n_false_positives(s, y, 10).as_dict(),
           "recall_at_fpr_0.001": recall_at_fpr(s, y, 1e-3).as_dict()}
    if synthetic_negatives is not None and len(synthetic_negatives):
        # the operating point a survey would actually use: FPR 1e-3 on the synthetic test negatives
        out["recall_at_synthetic_fpr_0.001"] = recall_at_fpr(s, y, 1e-3, synthetic_negatives).as_dict()
    return out


# --------------------------------------------------------------------------- everything


def _frame(table) -> pd.DataFrame | None:
    return table.to_pandas() if isinstance(table, pa.Table) else table


def _prepare(table, split: str) -> pd.DataFrame | None:
    return None if table is None else select_rows(_frame(table), split)[0]


def compute_metrics(scores, cfg: EvalConfig | None = None, anchor_scores=None, core_only_scores=None,
                    core_masked_scores=None, central: CentralPixels | None = None) -> dict:
    """All metrics of metrics.json from score tables (pure; tests call it).

    Parameters
    ----------
    scores : pyarrow.Table or pandas.DataFrame
        Output of ``dhs score`` on stamps (``score``, ``label``, ``kind``, ``pair_id``, ``split``, ...).
    cfg : EvalConfig
    anchor_scores : table, optional
        ``dhs score`` output on an anchor set (``score``, ``label``).
    core_only_scores, core_masked_scores : table, optional
        ``dhs score --mask outer`` / ``--mask core`` outputs on the same stamps.
    central : CentralPixels, optional
        Central pixels of the evaluated stamps (model-free check).

    Returns
    -------
    dict (JSON-ready)
    """
    cfg = cfg or EvalConfig()
    df, counts = select_rows(_frame(scores), cfg.split)
    overall = metric_block(df["score"], df["label"], cfg, "overall")
    kinds = df["kind"].value_counts().to_dict() if "kind" in df.columns else {}
    neg = df.loc[df["label"] == 0, "score"].to_numpy(float)
    op_json, recall_thr = recall_threshold(df, cfg)
    return {
        "config": asdict(cfg), "rows": counts, "rows_by_kind": {str(k): int(v) for k, v in kinds.items()},
        **overall,
        "operating_point": op_json, "recall_threshold": recall_thr,
        "by_source_mode": stratified_blocks(df, "source_mode", cfg),
        "by_artifact_profile": stratified_blocks(df, "artifact_profile", cfg),
        "recall_vs_theta_e": recall_curve(df, "theta_e_arcsec", cfg, recall_thr["threshold"]),
        "recall_vs_arc_snr": recall_curve(df, "arc_snr", cfg, recall_thr["threshold"]),
        "leakage_gates": leakage_gates(df, cfg, overall["auc"], _prepare(core_only_scores, cfg.split),
                                       _prepare(core_masked_scores, cfg.split), central),
        "anchor_gate": anchor_block(_frame(anchor_scores), cfg, neg),
    }


def read_dataset(uri: str, columns=None) -> pa.Table:
    """All part files of a committed dataset as one table (only the ``columns`` that exist)."""
    from jobs.evaluation.score import _open_parquet
    from jobs.runtime import outputs

    tables = []
    for f in outputs.dataset_files(uri):
        pf = _open_parquet(f)
        cols = None if columns is None else [c for c in columns if c in pf.schema_arrow.names]
        tables.append(pf.read(columns=cols))
    return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs evaluate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--scores", required=True, help="`dhs score` output on the stamps")
    p.add_argument("--out", required=True, help="report directory (local): metrics.json, PNGs, report.html")
    p.add_argument("--anchor-scores", help="`dhs score` output on the anchor set (real lenses + hard negatives)")
    p.add_argument("--stamps", help="the scored stamps: gallery images, central-pixel check, masked re-scoring")
    p.add_argument("--checkpoint", help="model, to score the --stamps with the core / the outskirts masked")
    p.add_argument("--core-only-scores", help="`dhs score --mask outer` output (instead of --checkpoint)")
    p.add_argument("--core-masked-scores", help="`dhs score --mask core` output (instead of --checkpoint)")
    p.add_argument("--split", default="test", help="split to evaluate: train|val|test|all (default test)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap / cross-validation seed")
    p.add_argument("--core-radius-pix", type=float, default=DEFAULT_CORE_RADIUS_PIX, help="core radius, pixels")
    p.add_argument("--leakage-max-rows", type=int, default=20000, help="stamps read for the leakage checks")
    p.add_argument("--gallery-size", type=int, default=16, help="stamps per gallery")
    p.add_argument("--recall-threshold", type=float, default=None,
                   help="score at or above which an injection counts as recovered in the recall curves "
                        "(default: the operating threshold, FPR 1e-3 / 1e-2 on the negatives)")
    p.add_argument("--anchor-threshold", type=float, default=None,
                   help="score at or above which an anchor counts as found in the anchor gate "
                        "(default: the operating threshold of the synthetic negatives)")
    return p


def main(argv: list[str] | None = None) -> int:
    from jobs.evaluation import report

    args = build_parser().parse_args(argv)
    try:
        cfg = EvalConfig(n_boot=args.n_boot, seed=args.seed, split=args.split, core_radius_pix=args.core_radius_pix,
                         leakage_max_rows=args.leakage_max_rows, recall_threshold=args.recall_threshold,
                         anchor_threshold=args.anchor_threshold)
    except ConfigError as err:
        print(f"dhs evaluate: {err}", file=sys.stderr)
        return 2
    scores = read_dataset(args.scores)
    anchors = read_dataset(args.anchor_scores) if args.anchor_scores else None
    core_only = read_dataset(args.core_only_scores) if args.core_only_scores else None
    core_masked = read_dataset(args.core_masked_scores) if args.core_masked_scores else None
    df, _ = select_rows(scores.to_pandas(), cfg.split)
    stamps = None
    if args.stamps:
        stamps = report.collect_stamps(args.stamps, df, cfg, args.gallery_size, args.checkpoint,
                                       want_masked=core_only is None or core_masked is None)
        core_only = core_only if core_only is not None else stamps.core_only
        core_masked = core_masked if core_masked is not None else stamps.core_masked
    metrics = compute_metrics(scores, cfg, anchors, core_only, core_masked, stamps.central if stamps else None)
    metrics["inputs"] = {k: getattr(args, k) for k in ("scores", "anchor_scores", "stamps", "checkpoint",
                                                      "core_only_scores", "core_masked_scores")}
    path = report.write_report(args.out, metrics, df, stamps.gallery if stamps else None)
    print(json.dumps({"report": path, "auc": metrics["auc"], "leakage_gates_pass": metrics["leakage_gates"]["passes"],
                      "anchor_gate": metrics["anchor_gate"].get("passes_anchor_gate")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
