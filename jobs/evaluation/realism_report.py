"""``realism.html``: real and injected lenses side by side, per-statistic histograms, the gates.

Every stamp in the gallery is shown with one fixed display stretch (``asinh`` of nanomaggies
with the same softening and the same maximum for every panel, RGB = z, r, g), so a brighter
arc looks brighter: the 100x-too-bright failure is obvious at a glance. Each real lens is paired
with the injected stamp closest in lens r magnitude (and theta_E where the real one is known).
The DR10 Tier-A thumbnails are display-only PNGs without flux calibration: they appear in their
own row, for morphology by eye, never in a photometric comparison.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.imaging.realism_stats import STAT_NAMES, azimuthal_median_residual, lens_shape
from jobs.evaluation.gates import VERDICT
from jobs.runtime import storage

#: Display stretch shared by every panel: asinh(x / SOFT) / asinh(MAX / SOFT), nanomaggies per pixel.
STRETCH_SOFT_NMGY = 0.01
STRETCH_MAX_NMGY = 0.3
N_THUMBS = 8
VERDICT_COLOUR = {True: "green", False: "red", None: "gray"}


def display_rgb(image: np.ndarray) -> np.ndarray:
    """(3, H, W) g, r, z nanomaggies -> (H, W, 3) RGB in [0, 1] with the fixed stretch (R = z, G = r, B = g)."""
    x = np.stack([image[2], image[1], image[0]], axis=-1).astype(float)
    return np.clip(np.arcsinh(x / STRETCH_SOFT_NMGY) / np.arcsinh(STRETCH_MAX_NMGY / STRETCH_SOFT_NMGY), 0, 1)


def match_injected(real_stats: list[dict], real_rows: list[dict], inj_stats: list[dict], inj_rows: list[dict]) -> list:
    """Index of the injected stamp closest to each real lens in lens r mag (and theta_E when known)."""
    mags = np.array([s["lens_mag_r"] for s in inj_stats], dtype=float)
    te = np.array([r.get("theta_e_arcsec") or np.nan for r in inj_rows], dtype=float)
    picks = []
    for s, r in zip(real_stats, real_rows, strict=True):
        d = np.abs(mags - s["lens_mag_r"])
        if r.get("theta_e_arcsec"):
            d = d + np.abs(te - float(r["theta_e_arcsec"])) / 0.3  # 0.3" of theta_E weighs like 1 mag
        d = np.where(np.isfinite(d), d, np.inf)
        for j in picks:
            d[j] = np.inf  # one injected stamp per real lens
        picks.append(int(np.argmin(d)) if np.isfinite(d).any() else 0)
    return picks


def _gallery(path: Path, real_rows, real_stats, inj_rows, inj_stats, thumbs: list[Path]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = match_injected(real_stats, real_rows, inj_stats, inj_rows)
    n = len(real_rows)
    rows = 4 + (1 if thumbs else 0)
    fig, ax = plt.subplots(rows, max(n, len(thumbs), 1), figsize=(2.1 * max(n, len(thumbs), 1), 2.3 * rows),
                           squeeze=False)
    for a in ax.ravel():
        a.axis("off")
    for i, (r, s, j) in enumerate(zip(real_rows, real_stats, picks, strict=True)):
        inj, si = inj_rows[j], inj_stats[j]
        for k, (img, c, title) in enumerate([
            (r["crop"], r["center_pix"], f"REAL {r.get('name', '')}\nr_lens={s['lens_mag_r']:.1f}"),
            (None, None, None),
            (inj["crop"], inj["center_pix"],
             f"INJ te={inj['theta_e_arcsec']:.1f}\" r_lens={si['lens_mag_r']:.1f}\n{inj['source_mode']}/"
             f"{inj['artifact_profile']}"),
            (None, None, None)]):
            if img is None:
                continue
            q, phi = lens_shape(img, c, PIXSCALE_DR10_ARCSEC)
            ax[k, i].imshow(display_rgb(img), origin="lower")
            ax[k, i].set_title(title, fontsize=7)
            ax[k + 1, i].imshow(display_rgb(azimuthal_median_residual(img, c, q, phi)), origin="lower")
            ax[k + 1, i].set_title("residual (lens light removed)", fontsize=6)
    for i, t in enumerate(thumbs):
        ax[rows - 1, i].imshow(plt.imread(str(t)))
        ax[rows - 1, i].set_title(f"Tier-A {t.stem}\n(display only)", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _histograms(path: Path, real_stats, inj_stats) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ncol = 4
    nrow = math.ceil(len(STAT_NAMES) / ncol)
    fig, ax = plt.subplots(nrow, ncol, figsize=(4 * ncol, 2.8 * nrow), squeeze=False)
    for a, name in zip(ax.ravel(), STAT_NAMES, strict=False):
        inj = np.array([s[name] for s in inj_stats], float)
        real = np.array([s[name] for s in real_stats], float)
        inj, real = inj[np.isfinite(inj)], real[np.isfinite(real)]
        both = np.r_[inj, real]
        if both.size:
            lo, hi = np.percentile(both, [1, 99])
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 30)
            a.hist(np.clip(inj, lo, hi), bins=bins, density=True, alpha=0.6, label=f"injected ({inj.size})")
            for v in real:
                a.axvline(np.clip(v, lo, hi), color="k", lw=1.2)
            a.plot([], [], color="k", label=f"real ({real.size})")
        a.set_title(name, fontsize=8)
        a.legend(fontsize=6)
    for a in ax.ravel()[len(STAT_NAMES):]:
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return html.escape(str(v))


def write_report(out_dir: str, result: dict, real_rows, real_stats, inj_rows, inj_stats, shared_data_dir=None) -> str:
    """Write ``realism_gallery.png``, ``realism_hist.png`` and ``realism.html`` into ``out_dir`` (local folder)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    thumbs = []
    if shared_data_dir is not None:
        thumbs = sorted((Path(shared_data_dir) / "dr10" / "tierA_lens_thumbs").glob("REAL_*.png"))[:N_THUMBS]
    _gallery(out / "realism_gallery.png", real_rows, real_stats, inj_rows, inj_stats, thumbs)
    _histograms(out / "realism_hist.png", real_stats, inj_stats)
    gate_rows = "".join(
        f"<tr><td>{_fmt(g['name'])}</td><td>{_fmt(g['value'])}</td><td>{_fmt(g['threshold'])}</td>"
        f"<td style='color:{VERDICT_COLOUR[g['pass']]}'><b>{VERDICT[g['pass']]}</b></td>"
        f"<td>{_fmt(g.get('what') or g['reason'])}</td></tr>" for g in result["gates"])
    stat_rows = "".join(
        f"<tr><td>{name}</td><td>{_fmt(c['all']['median_real'])}</td><td>{_fmt(c['all']['median_injected'])}</td>"
        f"<td>{_fmt(c['all']['median_diff_ci'])}</td><td>{_fmt(c['all']['ks_statistic'])}</td>"
        f"<td>{_fmt(c['all']['ks_pvalue'])}</td><td>{_fmt(result['univariate_auc'][name])}</td></tr>"
        for name, c in result["statistics"].items())
    lo, hi = result["domain_auc_ci"]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Dark Halo Scope realism</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{border:1px solid #ccc;padding:3px 6px;font-size:12px}}
table{{border-collapse:collapse}}</style></head><body>
<h1>Sim-to-real realism</h1>
<p><b>Domain AUC {_fmt(result['domain_auc'])}</b> (95% CI {_fmt(lo)}-{_fmt(hi)}; 0.5 = real and injected
indistinguishable) from {result['n_real']} real lenses and {result['n_injected']} injections.
All gates: <b>{'PASS' if result['all_pass'] else 'FAIL'}</b>.</p>
<table><tr><th>gate</th><th>value</th><th>threshold</th><th>verdict</th><th>what</th></tr>{gate_rows}</table>
<h2>Side by side (same display stretch for every panel)</h2>
<p>Rows: real lens, its residual, the injected stamp closest in lens magnitude, its residual;
last row: DR10 Tier-A lenses (display-only thumbnails, not calibrated).</p>
<img src="realism_gallery.png" style="max-width:100%">
<h2>Statistics (real = black lines, injected = histogram)</h2>
<img src="realism_hist.png" style="max-width:100%">
<table><tr><th>statistic</th><th>median real</th><th>median injected</th><th>diff 95% CI</th><th>KS D</th>
<th>KS p</th><th>univariate AUC</th></tr>{stat_rows}</table>
<p>Definitions: <code>dhs_gen.imaging.realism_stats</code>; gates: <code>jobs.evaluation.realism</code>; numbers: realism.json.</p>
</body></html>"""
    target = storage.join(str(out), "realism.html")
    storage.write_bytes(target, page.encode())
    return target
