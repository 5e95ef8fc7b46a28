"""The ablation comparison: ``comparison.json`` and ``comparison.html`` of a ``dhs ablate`` suite.

Reads what :mod:`jobs.experiments.ablate` left in the suite folder (every model's scores on every variant's
test split and on the anchors, each variant's ``eval/metrics.json``) and computes:

* ``metrics``: per variant, from its own evaluation: AUC (95 % CI), TPR at FPR 1e-2/1e-3/1e-4,
  TPR0, TPR10, anchor metrics, leakage-gate results, per source_mode / artifact_profile stratum;
* ``matrix``: AUC of each model (rows) on each test set (columns: the variants' test splits, and
  the real anchors as AUROC);
* ``deltas``: per non-baseline variant and per test set (and the anchors), ``metric(variant) -
  metric(baseline)`` with a paired-bootstrap 95 % CI (:func:`dhs_gen.metrics.paired_bootstrap_delta`):
  both models' scores on the same rows (joined on ``task_id`` / ``anchor_id``) are resampled
  together, so the row-to-row variance they share cancels.

Each variant's anchor AUROC carries a 95 % bootstrap CI (``metrics.<v>.anchor.auroc_ci95``): the
evidence :mod:`jobs.experiments.uber_weights` weighs the Uber mixture by.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from dhs_gen.errors import ConfigError
from dhs_gen.json_values import finite_float
from dhs_gen.metrics import (
    bootstrap_ci,
    paired_bootstrap_delta,
    roc_auc,
    tpr_at_fpr,
    tpr_at_n_false_positives,
)
from dhs_gen.utils import hash_uint64

ANCHORS = "anchors"


def _frac_above(s: np.ndarray, mask: np.ndarray, threshold: float = 0.5) -> float:
    return float(np.mean(s[mask] >= threshold)) if mask.any() else math.nan


#: Headline metrics on a synthetic test set: name -> (scores, labels) -> value (TPRs are fractions).
TEST_METRICS = {
    "auc": roc_auc,
    "tpr_at_fpr_0.01": lambda s, y: tpr_at_fpr(s, y, 1e-2).value,
    "tpr_at_fpr_0.001": lambda s, y: tpr_at_fpr(s, y, 1e-3).value,
    "tpr_at_fpr_0.0001": lambda s, y: tpr_at_fpr(s, y, 1e-4).value,
    "tpr0": lambda s, y: tpr_at_n_false_positives(s, y, 0).value,
    "tpr10": lambda s, y: tpr_at_n_false_positives(s, y, 10).value,
}
#: On the real anchors (known lenses vs real non-lenses); contamination: lower is better.
ANCHOR_METRICS = {
    "auroc": roc_auc,
    "recovery_rate_0p5": lambda s, y: _frac_above(s, y == 1),
    "contamination_rate_0p5": lambda s, y: _frac_above(s, y == 0),
    "tpr0": lambda s, y: tpr_at_n_false_positives(s, y, 0).value,
}


def read_scores(uri: Path, anchors: bool = False) -> pd.DataFrame:
    """``id``, ``score``, ``label`` of the evaluable rows of a score dataset (test split; scored rows)."""
    from jobs.evaluation.evaluate import read_dataset, select_rows

    id_col = "anchor_id" if anchors else "task_id"
    df = read_dataset(str(uri), [id_col, "score", "label", "split", "cutout_ok"]).to_pandas()
    df = df[df["score"].notna()] if anchors else select_rows(df, "test")[0]
    return df.rename(columns={id_col: "id"})[["id", "score", "label"]].sort_values("id").reset_index(drop=True)


def paired_rows(a: pd.DataFrame, b: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores_a, scores_b, labels) on the rows both frames scored, matched by id."""
    m = a.merge(b, on="id", suffixes=("_a", "_b"), validate="one_to_one")
    if not (m["label_a"] == m["label_b"]).all():
        raise ConfigError("labels", "differ between two score sets of one test set", "identical labels per id")
    return m["score_a"].to_numpy(float), m["score_b"].to_numpy(float), m["label_a"].to_numpy(int)


def delta_block(metric_fns: dict, a: pd.DataFrame, b: pd.DataFrame, n_boot: int, seed_key: str) -> dict:
    """Per metric: baseline value, variant value, delta = variant - baseline, paired-bootstrap 95 % CI."""
    sa, sb, y = paired_rows(a, b)
    out = {}
    for name, fn in metric_fns.items():
        if not (0 < y.sum() < len(y)):
            out[name] = {"baseline": None, "variant": None, "delta": None, "ci95": None, "n_rows": int(len(y))}
            continue
        d = paired_bootstrap_delta(fn, sa, sb, y, n_boot=n_boot, seed=hash_uint64(f"{seed_key}|{name}", "ablate"))
        out[name] = {"baseline": finite_float(d.metric_a), "variant": finite_float(d.metric_b), "delta": finite_float(d.delta),
                     "ci95": [finite_float(d.lo), finite_float(d.hi)] if finite_float(d.lo) is not None else None,
                     "frac_delta_le_0": finite_float(d.frac_delta_le_0), "n_valid": d.n_valid, "n_rows": int(len(y))}
    return out


def summarize_metrics(m: dict) -> dict:
    """The comparison's view of one variant's ``metrics.json`` (headline, anchors, gates, strata)."""
    def tprs(block):
        return {k: {"value": v.get("value"), "ci95": v.get("ci95")} for k, v in (block.get("tpr_at_fpr") or {}).items()}

    def strata(blocks):
        return {k: {"auc": b.get("auc"), "auc_ci95": b.get("auc_ci95"), "n_pos": b.get("n_pos"), "n_neg": b.get("n_neg"),
                    "negatives_from": b.get("negatives_from"),
                    "tpr_at_fpr": {f: t.get("value") for f, t in (b.get("tpr_at_fpr") or {}).items()}}
                for k, b in (blocks or {}).items()}

    a = m.get("anchor_gate") or {}
    anchor = {"available": bool(a.get("available"))}
    if anchor["available"]:
        anchor.update({k: a.get(k) for k in ("auroc_anchor", "recovery_rate_0p5", "contamination_rate_0p5",
                                             "score_separation", "passes_anchor_gate", "n_known_lenses",
                                             "n_hard_negatives")})
        anchor.update(tpr0=(a.get("tpr0") or {}).get("value"), tpr10=(a.get("tpr10") or {}).get("value"))
    else:
        anchor["reason"] = a.get("reason")
    lg = m.get("leakage_gates") or {}
    return {"auc": m.get("auc"), "auc_ci95": m.get("auc_ci95"), "n_pos": m.get("n_pos"), "n_neg": m.get("n_neg"),
            "tpr_at_fpr": tprs(m), "tpr0": (m.get("tpr0") or {}).get("value"),
            "tpr10": (m.get("tpr10") or {}).get("value"), "anchor": anchor,
            "leakage_gates": {"passes": lg.get("passes"), "not_computable": lg.get("not_computable"),
                              "gates": {g["name"]: {"value": g.get("value"), "pass": g.get("pass")}
                                        for g in lg.get("gates", [])}},
            "by_source_mode": strata(m.get("by_source_mode")),
            "by_artifact_profile": strata(m.get("by_artifact_profile"))}


def build_comparison(suite, root: Path, has_anchors: bool, n_boot: int, notes: dict, provenance: dict) -> dict:
    """comparison.json's content from the suite folder (see the module doc)."""
    root = Path(root)
    names = [v.name for v in suite.variants]
    base = suite.baseline
    scores = {(m, t): read_scores(root / m / "scores" / t) for m in names for t in names}
    anchor_scores = {m: read_scores(root / m / "anchor_scores", anchors=True) for m in names} if has_anchors else {}
    metrics = {v: summarize_metrics(json.loads((root / v / "eval" / "metrics.json").read_text())) for v in names}
    for v in anchor_scores:   # the CI of each arm's real-data AUROC: the evidence Uber weights are judged by
        a = anchor_scores[v]
        ci = bootstrap_ci(roc_auc, a["score"].to_numpy(float), a["label"].to_numpy(int), n_boot=n_boot,
                          seed=hash_uint64(f"{suite.seed}|{v}|{ANCHORS}|auroc", "ablate"))
        metrics[v]["anchor"]["auroc_ci95"] = ([finite_float(ci.lo), finite_float(ci.hi)]
                                              if finite_float(ci.lo) is not None else None)
    columns = names + ([ANCHORS] if has_anchors else [])
    auc = [[finite_float(roc_auc(scores[(m, t)]["score"], scores[(m, t)]["label"])) for t in names]
           + ([finite_float(roc_auc(anchor_scores[m]["score"], anchor_scores[m]["label"]))] if has_anchors else [])
           for m in names]
    deltas = {}
    for v in names:
        if v == base:
            continue
        deltas[v] = {"test_sets": {t: delta_block(TEST_METRICS, scores[(base, t)], scores[(v, t)], n_boot,
                                                  f"{suite.seed}|{v}|{t}") for t in names}}
        if has_anchors:
            deltas[v][ANCHORS] = delta_block(ANCHOR_METRICS, anchor_scores[base], anchor_scores[v], n_boot,
                                             f"{suite.seed}|{v}|{ANCHORS}")
    return {"suite": suite.name, "description": suite.description, "baseline": base, "seed": suite.seed,
            "variants": names, "presets": {v.name: v.preset for v in suite.variants}, "notes": notes,
            "metrics": metrics,
            "matrix": {"metric": "auc", "rows": "model (trained on variant)", "models": names, "test_sets": columns,
                       "auc": auc, "test_rows": {t: int(len(scores[(base, t)])) for t in names}},
            "deltas": deltas, "n_boot": n_boot, "provenance": provenance}


# --------------------------------------------------------------------------- outputs


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def plot_matrix(comparison: dict) -> bytes:
    """Heat map of the model x test-set AUC matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mx = comparison["matrix"]
    a = np.array([[np.nan if v is None else v for v in row] for row in mx["auc"]], dtype=float)
    fig, ax = plt.subplots(figsize=(1.3 * len(mx["test_sets"]) + 2, 0.6 * len(mx["models"]) + 1.5))
    im = ax.imshow(a, cmap="viridis", vmin=0.5, vmax=1.0)
    ax.set_xticks(range(len(mx["test_sets"])), mx["test_sets"], rotation=30, ha="right")
    ax.set_yticks(range(len(mx["models"])), mx["models"])
    ax.set_xlabel("test set")
    ax.set_ylabel("model trained on")
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            ax.text(j, i, "n/a" if np.isnan(a[i, j]) else f"{a[i, j]:.3f}", ha="center", va="center",
                    color="w" if not np.isnan(a[i, j]) and a[i, j] < 0.8 else "k", fontsize=9)
    fig.colorbar(im, ax=ax, label="AUC")
    return _png(fig)


def forest_rows(comparison: dict) -> list[tuple[str, float, float, float]]:
    """(label, delta, lo, hi) of the AUC deltas per variant and test set, and the anchor AUROC deltas."""
    rows = []
    for v, block in comparison["deltas"].items():
        for t, d in block["test_sets"].items():
            rows.append((f"{v} - {comparison['baseline']} | test {t} | AUC", d["auc"]))
        if ANCHORS in block:
            rows.append((f"{v} - {comparison['baseline']} | real anchors | AUROC", block[ANCHORS]["auroc"]))
    return [(lab, d["delta"], *(d["ci95"] or (None, None))) for lab, d in rows if d["delta"] is not None]


def plot_forest(comparison: dict) -> bytes:
    """Forest plot: each delta with its paired-bootstrap 95 % CI; zero marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = forest_rows(comparison)
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    for i, (_, d, lo, hi) in enumerate(rows):
        if lo is not None:
            ax.plot([lo, hi], [i, i], color="k", lw=1.5)
        ax.plot([d], [i], "o", color="C3")
    ax.axvline(0, color="grey", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("delta (variant - baseline), paired bootstrap 95% CI")
    return _png(fig)


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def render_html(c: dict, pngs: dict) -> str:
    """One self-contained page: metrics table, matrix heat map, forest plot, delta tables."""
    fprs = ("0.01", "0.001", "0.0001")
    head = ("<tr><th>variant</th><th>preset</th><th>AUC [95% CI]</th>" + "".join(f"<th>TPR@FPR {f}</th>" for f in fprs)
            + "<th>TPR0</th><th>TPR10</th><th>anchor AUROC</th><th>anchor recovery@0.5</th>"
            "<th>anchor contamination@0.5</th><th>leakage gates</th></tr>")
    body = []
    for v in c["variants"]:
        m, a = c["metrics"][v], c["metrics"][v]["anchor"]
        ci = m["auc_ci95"] or [None, None]
        gates = {True: "pass", False: "FAIL", None: "n/a"}[m["leakage_gates"]["passes"]]
        body.append(f"<tr><td><b>{html.escape(v)}</b>{' (baseline)' if v == c['baseline'] else ''}</td>"
                    f"<td>{html.escape(c['presets'][v])}</td><td>{_f(m['auc'])} [{_f(ci[0])}, {_f(ci[1])}]</td>"
                    + "".join(f"<td>{_f((m['tpr_at_fpr'].get(f) or {}).get('value'))}</td>" for f in fprs)
                    + f"<td>{_f(m['tpr0'])}</td><td>{_f(m['tpr10'])}</td><td>{_f(a.get('auroc_anchor'))}</td>"
                    f"<td>{_f(a.get('recovery_rate_0p5'))}</td><td>{_f(a.get('contamination_rate_0p5'))}</td>"
                    f"<td>{gates}</td></tr>")
    deltas = []
    for v, block in c["deltas"].items():
        sets = [(f"test {t}", d) for t, d in block["test_sets"].items()] + (
            [("real anchors", block[ANCHORS])] if ANCHORS in block else [])
        for label, d in sets:
            cells = "".join(f"<td>{html.escape(k)}: {_f(x['delta'])} [{_f((x['ci95'] or [None])[0])}, "
                            f"{_f((x['ci95'] or [None, None])[1])}]</td>" for k, x in d.items())
            deltas.append(f"<tr><td>{html.escape(v)} - {html.escape(c['baseline'])}</td><td>{label}</td>{cells}</tr>")
    notes = "".join(f"<li><b>{html.escape(k)}</b>: {html.escape(str(n))}</li>" for k, n in c["notes"].items())
    figs = "".join(f'<figure><img alt="{n}" src="data:image/png;base64,{base64.b64encode(d).decode()}">'
                   f"<figcaption>{n}</figcaption></figure>" for n, d in pngs.items())
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Ablation {html.escape(c['suite'])}</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px}} figure{{display:inline-block;margin:.5em}}</style>
</head><body><h1>Ablation suite {html.escape(c['suite'])}</h1><p>{html.escape(c['description'])}</p>
<p>Baseline <b>{html.escape(c['baseline'])}</b>; seed {c['seed']}; paired bootstrap {c['n_boot']} resamples.
Every model is scored on every variant's test split (same hosts, same bricks, same seed) and on the real anchors.</p>
<ul>{notes}</ul><h2>Metrics (each model on its own test split)</h2><table>{head}{''.join(body)}</table>
<h2>Cross-generation AUC matrix and deltas</h2>{figs}
<h2>Deltas vs baseline (variant - baseline [95% CI]; for contamination lower is better)</h2>
<table>{''.join(deltas)}</table></body></html>"""


def write_outputs(comparison: dict, root: Path) -> dict:
    """Write ``comparison.json`` and ``comparison.html`` (PNGs embedded) into ``root``; returns the paths."""
    root = Path(root)
    pngs = {"auc_matrix.png": plot_matrix(comparison)}
    if forest_rows(comparison):
        pngs["delta_forest.png"] = plot_forest(comparison)
    (root / "comparison.json").write_text(json.dumps(comparison, indent=2, sort_keys=True, allow_nan=False))
    (root / "comparison.html").write_text(render_html(comparison, pngs))
    return {"json": str(root / "comparison.json"), "html": str(root / "comparison.html")}
