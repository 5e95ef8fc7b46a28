"""The evaluation report: stamps the checks need, plots (matplotlib Agg) and one self-contained HTML page.

Everything is written through ``jobs.runtime.storage`` (a local directory or ``s3://``): ``metrics.json``,
one PNG per plot and ``report.html``, which embeds the PNGs (base64) and links each file beside it.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dhs_gen.json_values import json_safe
from dhs_gen.metrics import roc_curve
from jobs.evaluation.gates import VERDICT, CentralPixels, central_pixel_features, leakage_sample
from jobs.runtime import storage
from jobs.runtime.schema import decode_image

PLOT_FILES = {
    "roc": "roc_by_source_mode.png",
    "hist": "score_hist_by_kind.png",
    "theta_e": "recall_vs_theta_e.png",
    "snr": "recall_vs_arc_snr.png",
    "gal_neg": "gallery_top_negatives.png",
    "gal_pos": "gallery_low_positives.png",
}


@dataclass
class StampInputs:
    """What ``dhs evaluate`` reads from the stamps: central pixels, masked scores, gallery images."""

    central: object = None  # jobs.evaluation.evaluate.CentralPixels
    core_only: pd.DataFrame | None = None
    core_masked: pd.DataFrame | None = None
    gallery: dict = field(default_factory=dict)  # name -> list of (task_id, score, kind, image (B, H, W) nmgy)


def collect_stamps(stamps_uri: str, df: pd.DataFrame, cfg, gallery_size: int = 16, checkpoint: str | None = None,
                   want_masked: bool = True, batch_size: int = 256) -> StampInputs:
    """One pass over the stamps: gallery images, central pixels and (with a checkpoint) masked scores.

    Parameters
    ----------
    stamps_uri : str
        Stamps dataset that was scored.
    df : pandas.DataFrame
        Evaluated score rows (``task_id``, ``score``, ``label``, ``kind``, ``pair_id``).
    cfg : jobs.evaluation.evaluate.EvalConfig
        ``core_radius_pix`` (pixels) and ``leakage_max_rows``.
    gallery_size : int
        Stamps per gallery (highest-scoring negatives, lowest-scoring positives).
    checkpoint : str, optional
        Model used to score the leakage sample with the outskirts / the core masked.
    """
    from jobs.evaluation.score import _open_parquet, predict_proba
    from jobs.runtime.outputs import dataset_files
    from jobs.training.preprocess import normalize_stamps

    gallery_ids = {
        "gal_neg": df[df["label"] == 0].nlargest(gallery_size, "score")["task_id"].tolist(),
        "gal_pos": df[df["label"] == 1].nsmallest(gallery_size, "score")["task_id"].tolist(),
    }
    leak_ids = leakage_sample(df, cfg.leakage_max_rows)
    meta = df.set_index("task_id")
    model, temperature = None, None
    if checkpoint and want_masked:
        from jobs.evaluation.score import load_model, model_temperature

        model, temperature = load_model(checkpoint)[0], model_temperature(checkpoint)
    gallery_set = set(gallery_ids["gal_neg"]) | set(gallery_ids["gal_pos"])
    wanted = leak_ids | gallery_set
    images, feats, rows, masked = {}, [], [], {"outer": [], "core": []}
    columns = ["task_id", "image", "image_shape"]
    for uri in dataset_files(stamps_uri):
        for batch in _open_parquet(uri).iter_batches(batch_size=batch_size, columns=columns):
            ids = batch.column("task_id").to_pylist()
            keep = [i for i, t in enumerate(ids) if t in wanted]
            if not keep:
                continue
            blobs, shapes = batch.column("image").to_pylist(), batch.column("image_shape").to_pylist()
            arrs = {ids[i]: decode_image(blobs[i], shapes[i]) for i in keep}
            images.update({t: a for t, a in arrs.items() if t in gallery_set})
            leak = [t for t in arrs if t in leak_ids]
            if leak:
                stack = np.stack([arrs[t] for t in leak])
                feats.append(central_pixel_features(np.asarray(normalize_stamps(stack)), cfg.core_radius_pix))
                rows += leak
                if model is not None:
                    for m in masked:
                        masked[m].append(predict_proba(model, stack, m, cfg.core_radius_pix,
                                                       temperature=temperature))
    out = StampInputs()
    if rows:
        sub = meta.loc[rows]
        if "kind" in sub.columns:  # the core question is injection vs its own host without the arc
            sel = sub["kind"].isin(["injection", "control"]).to_numpy()
        else:
            sel = np.ones(len(rows), bool)
        theta_e = sub["theta_e_arcsec"].to_numpy(float)[sel] if "theta_e_arcsec" in sub.columns else None
        out.central = CentralPixels(np.concatenate(feats)[sel], sub["label"].to_numpy(int)[sel],
                                    sub.get("pair_id", sub.index.to_series()).astype(str).to_numpy()[sel], theta_e)
        if model is not None:
            base = pd.DataFrame({"task_id": rows, "label": sub["label"].to_numpy(int)})
            if "theta_e_arcsec" in sub.columns:  # the core gates keep only arcs clear of the core
                base["theta_e_arcsec"] = sub["theta_e_arcsec"].to_numpy(float)
            out.core_only = base.assign(score=np.concatenate(masked["outer"]))
            out.core_masked = base.assign(score=np.concatenate(masked["core"]))
    for name, ids in gallery_ids.items():
        out.gallery[name] = [(t, float(meta.at[t, "score"]), str(meta.at[t, "kind"]) if "kind" in meta else "",
                              images[t]) for t in ids if t in images]
    return out


# --------------------------------------------------------------------------- plots


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_roc(df: pd.DataFrame) -> bytes:
    """ROC curves (log FPR) overall and per source_mode, negatives chosen as in ``stratified_blocks``."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    neg_all = df[df["label"] == 0]
    groups = [("all", df)]
    if "source_mode" in df.columns:
        groups += [(str(v), df[df["source_mode"] == v]) for v in sorted(df["source_mode"].dropna().unique())]
    for name, sub in groups:
        pos, neg = sub[sub["label"] == 1], sub[sub["label"] == 0]
        rows = pd.concat([pos, neg if len(neg) else neg_all])
        if rows["label"].nunique() < 2:
            continue
        fpr, tpr, _ = roc_curve(rows["score"], rows["label"])
        ax.step(np.maximum(fpr, 1e-5), tpr, where="post", label=f"{name} ({len(pos)} pos)", lw=2 if name == "all" else 1)
    ax.set(xscale="log", xlim=(1e-5, 1), ylim=(0, 1.02), xlabel="false-positive rate", ylabel="true-positive rate",
           title="ROC by source mode")
    ax.legend(fontsize=8, loc="lower right")
    return _figure_bytes(fig)


def plot_hist(df: pd.DataFrame) -> bytes:
    """Score histograms per row kind (log counts)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    col = "kind" if "kind" in df.columns else "label"
    bins = np.linspace(0, 1, 41)
    for value in sorted(df[col].dropna().unique(), key=str):
        ax.hist(np.clip(df.loc[df[col] == value, "score"], 0, 1), bins=bins, histtype="step", lw=1.5, label=str(value))
    ax.set(yscale="log", xlabel="score", ylabel="rows", title=f"score by {col}")
    ax.legend(fontsize=8)
    return _figure_bytes(fig)


def plot_recall(rows: list[dict], xlabel: str, threshold: float | None, subtitle: str = "") -> bytes:
    """Recall per bin (``score >= threshold``) with exact binomial 95 % error bars; ``subtitle`` names the threshold."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if rows:
        x = np.array([r["center"] for r in rows])
        rec = np.array([r["recall"] for r in rows])
        lo = np.array([r["ci95"][0] for r in rows])
        hi = np.array([r["ci95"][1] for r in rows])
        ax.errorbar(x, rec, yerr=[rec - lo, hi - rec], fmt="o-", capsize=3)
        for xi, r in zip(x, rows, strict=True):
            ax.annotate(str(r["n"]), (xi, 0.02), ha="center", fontsize=7, color="grey")
    else:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    ylabel = "recall (no threshold)" if threshold is None else f"recall (score >= {threshold:.4g})"
    title = f"recall vs {xlabel} (n per bin in grey)" + (f"\n{subtitle}" if subtitle else "")
    ax.set(ylim=(0, 1.05), xlabel=xlabel, ylabel=ylabel, title=title)
    return _figure_bytes(fig)


def grz_composite(image: np.ndarray, stretch: float, q: float = 8.0) -> np.ndarray:
    """(3, H, W) grz nanomaggies -> (H, W, 3) uint8 Lupton asinh composite (R=z, G=r, B=g), fixed stretch."""
    from astropy.visualization import make_lupton_rgb

    g, r, z = (np.asarray(image[i], dtype=float) for i in range(3))
    return make_lupton_rgb(z, r, g, minimum=0.0, stretch=stretch, Q=q)


def common_stretch(images: list[np.ndarray]) -> float:
    """One Lupton stretch (nanomaggies) for a set of stamps: the 95th percentile of their r pixels.

    Low enough that arcs a few times the sky noise show, while asinh keeps the host cores unsaturated.
    """
    if not images:
        return 1.0
    value = float(np.percentile(np.concatenate([np.ravel(im[1]) for im in images]), 95.0))
    return value if value > 0 else 1.0


def plot_gallery(items: list, stretch: float, title: str) -> bytes:
    """Grid of grz composites with task id, kind and score."""
    plt = _plt()
    n = max(1, len(items))
    ncol = min(8, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.6 * ncol, 1.8 * nrow + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (task_id, score, kind, image) in zip(axes.ravel(), items, strict=False):
        ax.imshow(grz_composite(image, stretch), origin="lower")
        ax.set_title(f"{kind} {score:.3f}\n{str(task_id)[-14:]}", fontsize=6)
    fig.suptitle(f"{title} (same Lupton stretch {stretch:.3g} nmgy)", fontsize=9)
    return _figure_bytes(fig)


# --------------------------------------------------------------------------- HTML


def _fmt(v, ci=None) -> str:
    if v is None:
        return "n/a"
    text = f"{v:.4f}" if isinstance(v, float) else str(v)
    if ci and ci[0] is not None:
        text += f" [{ci[0]:.4f}, {ci[1]:.4f}]"
    return text


def _metric_rows(name: str, block: dict) -> str:
    cells = [html.escape(name), str(block["n_pos"]), str(block["n_neg"]), _fmt(block["auc"], block["auc_ci95"])]
    for entry in block["tpr_at_fpr"].values():
        cells.append(_fmt(entry["value"], entry["ci95"]) if entry["resolved"] else
                     f'<span class="na" title="{html.escape(entry["reason"] or "")}">too few negatives</span>')
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _gate_rows(gates: list[dict]) -> str:
    out = []
    for g in gates:
        cls = {True: "pass", False: "fail", None: "na"}[g["pass"]]
        word = VERDICT[g["pass"]]
        limit = html.escape(f"{g['comparison']} {g['threshold']}")
        out.append(f'<tr class="{cls}"><td>{html.escape(g["name"])}</td><td>{_fmt(g["value"])}</td>'
                   f'<td>{limit}</td><td>{word}</td>'
                   f'<td>{html.escape(g.get("reason") or "")}</td></tr>')
    return "".join(out)


def render_html(metrics: dict, pngs: dict[str, bytes]) -> str:
    """One self-contained page: metrics tables, gates coloured by pass/fail, the plots (embedded)."""
    fprs = list(metrics["tpr_at_fpr"])
    head = "".join(f"<th>TPR@FPR {f}</th>" for f in fprs)
    table = [f"<table><tr><th>set</th><th>n pos</th><th>n neg</th><th>AUC [95% CI]</th>{head}</tr>",
             _metric_rows("all", metrics)]
    for group in ("by_source_mode", "by_artifact_profile"):
        for name, block in metrics[group].items():
            table.append(_metric_rows(f"{group[3:]}={name}", block))
    table.append("</table>")
    anchor = metrics["anchor_gate"]
    if anchor.get("available"):
        anchor_thr = html.escape(anchor.get("threshold_text") or f"threshold {anchor['threshold']:g}")
        anchor_html = (f'<p class="thr">{anchor_thr}: found = score at or above it</p>'
                       f"<p>known lenses {anchor['n_known_lenses']}, recovered {anchor['n_recovered_at_0p5']}; "
                       f"hard negatives {anchor['n_hard_negatives']}, contaminated {anchor['n_contaminated_at_0p5']}; "
                       f"AUROC {_fmt(anchor['auroc_anchor'])}; overall "
                       f"<b>{'PASS' if anchor['passes_anchor_gate'] else 'FAIL'}</b></p>"
                       f"<table><tr><th>criterion</th><th>value</th><th>limit</th><th>verdict</th><th>note</th></tr>"
                       f"{_gate_rows(anchor['gates'])}</table>")
    else:
        anchor_html = f'<p class="na">not available: {html.escape(anchor.get("reason", ""))}</p>'
    figs = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'
        f'<figcaption><a href="{name}">{name}</a></figcaption></figure>' for name, data in pngs.items())
    rows = metrics["rows"]
    lg = metrics["leakage_gates"]
    recall_thr = html.escape(metrics["recall_threshold"]["text"])
    return f"""<!DOCTYPE html><html><head><meta charset="utf-8"><title>Dark Halo Scope evaluation</title>
<style>body{{font-family:sans-serif;margin:1.5em}} table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px}} .pass{{background:#c8f0c8}}
.fail{{background:#f5b5b5}} .na{{color:#777;background:#eee}} figure{{display:inline-block;margin:.5em}}
.thr{{font-weight:bold}}</style>
</head><body><h1>Dark Halo Scope evaluation</h1>
<p>split <b>{html.escape(str(metrics['config']['split']))}</b>: {rows['n_evaluated']} rows evaluated;
skipped {rows['n_skipped_cutout_not_ok']} with cutout_ok=0 and {rows['n_skipped_no_score']} without a score.</p>
<h2>Metrics (bootstrap {metrics['config']['n_boot']} resamples, 95% CI)</h2>{''.join(table)}
<h2>Leakage gates: {'PASS' if lg['passes'] else 'NOT PASSED'}</h2>
<table><tr><th>gate</th><th>value</th><th>limit</th><th>verdict</th><th>note</th></tr>{_gate_rows(lg['gates'])}</table>
<h2>Anchor gate (real lenses vs real hard negatives)</h2>{anchor_html}
<h2>Plots</h2><p class="thr">recall curves: {recall_thr}; recovered = score at or above it</p>{figs}</body></html>"""


def _write(uri: str, data: bytes) -> None:
    fs, path = storage.resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(data)


def write_report(out_dir: str, metrics: dict, df: pd.DataFrame, gallery: dict | None = None) -> str:
    """Write metrics.json, the PNGs and report.html under ``out_dir`` (local or s3://); returns the HTML URI."""
    out_dir = str(out_dir).rstrip("/")
    thr, thr_text = metrics["recall_threshold"]["threshold"], metrics["recall_threshold"]["text"]
    pngs = {PLOT_FILES["roc"]: plot_roc(df), PLOT_FILES["hist"]: plot_hist(df),
            PLOT_FILES["theta_e"]: plot_recall(metrics["recall_vs_theta_e"], "theta_E (arcsec)", thr, thr_text),
            PLOT_FILES["snr"]: plot_recall(metrics["recall_vs_arc_snr"], "arc SNR", thr, thr_text)}
    if gallery:
        stretch = common_stretch([it[3] for items in gallery.values() for it in items])
        titles = {"gal_neg": "highest-scoring negatives", "gal_pos": "lowest-scoring positives"}
        for key, items in gallery.items():
            if items:
                pngs[PLOT_FILES[key]] = plot_gallery(items, stretch, titles[key])
    metrics = json_safe({**metrics, "plots": sorted(pngs)})
    _write(f"{out_dir}/metrics.json", json.dumps(metrics, indent=2, sort_keys=True).encode())
    for name, data in pngs.items():
        _write(f"{out_dir}/{name}", data)
    _write(f"{out_dir}/report.html", render_html(metrics, pngs).encode())
    return f"{out_dir}/report.html"
