"""Sim-to-real realism gates: can injected lenses be told from real ones?

    dhs realism --stamps S [--anchors A] [--checkpoint CKPT] --out R

The statistics of :mod:`dhs_gen.imaging.realism_stats` are measured identically on the injected positives of
a 4c stamps dataset and on real lens cutouts (the anchor set's ``label = 1`` rows, centre-cropped
to the stamp size); their distributions are compared per statistic (KS test, difference of
medians with a bootstrap CI), overall and per ``source_mode`` / ``artifact_profile``. The
headline number is the cross-validated AUC of a *domain classifier* (logistic regression on
those statistics) telling real lenses from injections: 0.5 = indistinguishable; the earlier
failure of this design (arcs ~100x too bright) reached 0.996. Writes ``R/realism.json`` with
``gates`` (:func:`jobs.evaluation.gates.gate` records) and ``R/realism.html`` (:mod:`jobs.evaluation.realism_report`).

Real lenses: ``--anchors`` (ANCHOR_SCHEMA Parquet), else the default anchor set built from the
shared data folder (``$DHS_SHARED_DATA``, default ``../shared/data`` beside the repository).
Both sides use the default 0.8-2.5" annulus (real theta_E is unknown), so the measurement is the
same function with the same arguments on both sides.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError
from dhs_gen.imaging.realism_stats import (
    STAT_NAMES,
    center_crop,
    compare_samples,
    median_ratio,
    stamp_statistics,
)
from dhs_gen.metrics import bootstrap_ci, roc_auc
from dhs_gen.utils import uniform_from_hash
from jobs.cutouts.sources import des_lrg_host_cutouts
from jobs.evaluation.gates import VERDICT, gate
from jobs.runtime import outputs, storage
from jobs.runtime.config import shared_data_dir as default_shared_data_dir
from jobs.runtime.schema import decode_image

#: The photometric gate: median annulus residual g flux, injected / real, must lie in
#: [1/PHOTOMETRIC_FACTOR, PHOTOMETRIC_FACTOR]. g because arcs are blue and the red lens is faint
#: there, so the residual is least contaminated by imperfect lens-light removal. Real DR10 lens
#: arcs scatter among themselves in this statistic by 0.36 dex (factor 2.3; log10 std over the 6
#: real grade-B cutouts cropped from their npz files; 0.85 dex from the resampled default anchor
#: set, whose smallest positive value dominates; recomputed on every run as
#: ``photometric.log10_scatter_real``). With 6 real lenses their median is known to
#: ~1.25 * 0.36 / sqrt(6) = 0.18 dex, so a factor 3 (0.48 dex) is ~2.6 standard errors (a realistic
#: generation fails by chance ~1 % of the time) while the known failure, arcs 100x too bright
#: (2 dex), is ~11 standard errors out. Measured on the demo: 0.54 (orig), ~76-110 (x100), ~0.14 (/100).
PHOTOMETRIC_FACTOR = 3.0
PHOTOMETRIC_STAT = "resid_flux_g_nmgy"
#: Domain-classifier AUC above which injections are judged separable from real lenses: halfway
#: between chance (0.5) and the failed generation (0.996) is ~0.75; 0.9 leaves room for the wide
#: CI of a 6-lens real set (+-0.1 at n_real = 6) while still catching a gross mismatch.
DOMAIN_AUC_MAX = 0.9
ARC_STATS = ("resid_flux_g_nmgy", "resid_flux_r_nmgy", "resid_flux_z_nmgy", "resid_color_gr_mag",
             "resid_color_rz_mag", "arc_snr", "peak_resid_sb_r_nmgy_arcsec2", "tangential_extent_arcsec",
             "radial_extent_arcsec", "elongation")
MAX_INJECTED = 1000        # injected stamps measured (deterministic hash sample): runtime bound
_STAMP_COLUMNS = ["task_id", "pair_id", "kind", "label", "cutout_ok", "image", "invvar", "image_shape",
                  "pixscale_arcsec", "theta_e_arcsec", "source_mode", "artifact_profile", "arc_snr",
                  "arc_flux_r_nmgy", "psf_fwhm_r_arcsec"]


def load_injected(stamps_uri: str, max_rows: int = MAX_INJECTED) -> tuple[list[dict], list[dict]]:
    """Injections and controls (``cutout_ok = 1``) of a stamps dataset, images decoded.

    At most ``max_rows`` injections are kept, chosen by a hash of ``task_id`` (the same rows on
    every run), with their paired controls. Returns ``(injections, controls)``: dicts of the
    stamp columns with ``image`` / ``invvar`` as float32 (3, H, W) arrays (nanomaggies, 1/nmgy^2).
    """
    table = storage.read_parquet(outputs.dataset_files(stamps_uri), columns=_STAMP_COLUMNS)
    rows = [r for r in table.to_pylist() if r["cutout_ok"] == 1 and r["kind"] in ("injection", "control")]
    inj = [r for r in rows if r["kind"] == "injection"]
    if len(inj) > max_rows:
        inj = sorted(inj, key=lambda r: uniform_from_hash(r["task_id"], "realism_sample"))[:max_rows]
    pairs = {r["pair_id"] for r in inj}
    ctl = [r for r in rows if r["kind"] == "control" and r["pair_id"] in pairs]
    for r in inj + ctl:
        r["image"] = decode_image(r["image"], r["image_shape"])
        r["invvar"] = decode_image(r["invvar"], r["image_shape"]) if r["invvar"] is not None else None
    return inj, ctl


def _npz_lens_anchors(shared: Path) -> list[dict]:
    """The real DR10 grade-B lens-candidate cutouts read straight from their npz files, as they are."""
    rows = []
    for f in sorted((shared / "dr10" / "cutouts").glob("*.npz")):
        with np.load(f, allow_pickle=False) as d:
            img = np.asarray(d["cutout"], dtype=np.float32).transpose(2, 0, 1)
            name = str(d["meta_galaxy_id"]) if "meta_galaxy_id" in d.files else f.stem
            pixscale = float(d["meta_pixel_scale"]) if "meta_pixel_scale" in d.files else PIXSCALE_DR10_ARCSEC
        rows.append({"anchor_id": name, "name": name, "label": 1, "image": img, "invvar": None,
                     "pixscale_arcsec": pixscale, "theta_e_arcsec": None, "provenance": str(f)})
    return rows


def _decode_anchor(r: dict) -> dict:
    r = dict(r)
    r["image"] = decode_image(r["image"], r["image_shape"])
    r["invvar"] = decode_image(r["invvar"], r["image_shape"]) if r.get("invvar") is not None else None
    return r


def load_anchors(anchors_uri: str | None, shared_data_dir=None, work_dir: str | None = None,
                 size_pix: int = 64) -> list[dict]:
    """Real anchor rows (images decoded, (3, H, W) nanomaggies): ``label`` 1 lenses, 0 non-lenses.

    ``anchors_uri`` is an ANCHOR_SCHEMA dataset (a committed output or a Parquet file). Without
    it, ``jobs.anchors.anchor_set.build_default_anchor_set`` builds the default set from the shared data
    folder into ``work_dir``.
    """
    if anchors_uri is None:
        shared = Path(shared_data_dir) if shared_data_dir is not None else default_shared_data_dir()
        if not (shared / "dr10" / "cutouts").is_dir():
            raise FileNotFoundError(
                f"no anchors given and no real lens cutouts at {shared / 'dr10' / 'cutouts'}: pass --anchors "
                "(an anchor-set Parquet) or set DHS_SHARED_DATA to the shared real-data folder")
        from jobs.anchors.anchor_set import build_default_anchor_set

        anchors_uri = storage.join(work_dir or ".", "anchors")
        build_default_anchor_set(str(shared), anchors_uri, size_pix=size_pix, overwrite=True)
    if str(anchors_uri).endswith(".parquet"):
        files = [anchors_uri]
    else:
        try:
            files = outputs.dataset_files(anchors_uri)
        except outputs.MissingInputError:
            files = storage.list_files(anchors_uri, ".parquet")
    return [_decode_anchor(r) for r in storage.read_parquet(files).to_pylist() if r.get("image") is not None]


def load_des_hosts(shared_data_dir, size_pix: int) -> list[dict]:
    """Real DES LRG host cutouts (no lensing) as g, r, z nanomaggies per 0.262" pixel, for host statistics.

    Read and standardised by :func:`jobs.cutouts.sources.des_lrg_host_cutouts`, the reader the anchor
    set uses (counts at zeropoint 30 to nanomaggies; 0.263 -> 0.262"/pix, flux-conserving).
    """
    folder = Path(shared_data_dir) / "des" / "lrg_hosts"
    if not folder.is_dir():
        return []
    return [{"name": meta["name"], "image": cut.image.astype(np.float64), "invvar": None,
             "pixscale_arcsec": PIXSCALE_DR10_ARCSEC} for meta, cut in des_lrg_host_cutouts(str(folder), size_pix)]


def measure(items: list[dict], size_pix: int) -> list[dict]:
    """:func:`dhs_gen.imaging.realism_stats.stamp_statistics` of every item, cropped to ``size_pix`` (default annulus)."""
    out = []
    for it in items:
        img, center = center_crop(it["image"], size_pix)
        iv = None if it.get("invvar") is None else center_crop(it["invvar"], size_pix)[0]
        it["crop"], it["center_pix"] = img, center
        if not np.all(np.isfinite(img)):
            out.append({k: math.nan for k in STAT_NAMES})
            continue
        out.append(stamp_statistics(img, iv, float(it.get("pixscale_arcsec") or PIXSCALE_DR10_ARCSEC), None, center))
    return out


def _column(stats: list[dict], name: str) -> np.ndarray:
    return np.array([s.get(name, math.nan) for s in stats], dtype=float)


def domain_classifier_auc(x_real: np.ndarray, x_inj: np.ndarray, n_repeats: int = 5, seed: int = 0) -> dict:
    """Cross-validated AUC of a logistic regression telling real (1) from injected (0) feature rows.

    Repeated stratified k-fold (k = min(5, n_real), ``n_repeats`` repeats), balanced class
    weights, median imputation and standardisation fitted on each training fold; each row's
    score is its mean out-of-fold probability. The CI is a stratified percentile bootstrap of the
    AUC over those out-of-fold scores (it does not include the refitting variance).

    Returns
    -------
    dict
        ``auc``, ``auc_ci`` [lo, hi], ``n_real``, ``n_injected``, ``method``; NaN when a class
        has fewer than 2 rows.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import RepeatedStratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n_real, n_inj = len(x_real), len(x_inj)
    res = {"auc": math.nan, "auc_ci": [math.nan, math.nan], "n_real": n_real, "n_injected": n_inj,
           "method": "logistic regression, repeated stratified k-fold, balanced weights, out-of-fold AUC"}
    if n_real < 2 or n_inj < 2:
        return res
    x = np.vstack([x_real, x_inj]).astype(float)
    keep = ~np.all(np.isnan(x[:n_real]), axis=0) & ~np.all(np.isnan(x[n_real:]), axis=0)
    x = x[:, keep]
    y = np.r_[np.ones(n_real, int), np.zeros(n_inj, int)]
    k = min(5, n_real)
    cv = RepeatedStratifiedKFold(n_splits=k, n_repeats=n_repeats, random_state=seed)
    total, count = np.zeros(y.size), np.zeros(y.size)
    for train, test in cv.split(x, y):
        clf = make_pipeline(SimpleImputer(strategy="median"), StandardScaler(),
                            LogisticRegression(C=1.0, class_weight="balanced", solver="liblinear", max_iter=2000))
        clf.fit(x[train], y[train])
        total[test] += clf.predict_proba(x[test])[:, 1]
        count[test] += 1
    oof = total / np.maximum(count, 1)
    ci = bootstrap_ci(roc_auc, oof, y, n_boot=1000, seed=seed)
    res.update(auc=ci.estimate, auc_ci=[ci.lo, ci.hi], n_features=int(keep.sum()))
    return res


def cnn_features(checkpoint: str, crops: list[np.ndarray]) -> np.ndarray:
    """Penultimate CNN features (dimensionless) of (3, H, W) nanomaggy stamps, normalised as in training."""
    import torch

    from jobs.training.model import load_checkpoint
    from jobs.training.preprocess import normalize_stamps

    model, _ = load_checkpoint(checkpoint)
    x = torch.from_numpy(normalize_stamps(np.stack(crops).astype(np.float32)))
    with torch.no_grad():
        return np.concatenate([model.features(x[i:i + 256]).numpy() for i in range(0, len(x), 256)])


def _slacs_theta_e(shared: Path) -> np.ndarray:
    path = shared / "lens_catalogs" / "SLACS_Sonnenfeld2024_table.cat"
    if not path.is_file():
        return np.array([])
    names = open(path).readline().lstrip("#").split()
    data = np.genfromtxt(path, comments="#", dtype=None, encoding="utf-8", names=names)
    return np.asarray(data["theta_Ein"], dtype=float)


def compare_all(real_stats: list[dict], inj_stats: list[dict], inj_rows: list[dict]) -> dict:
    """Per-statistic comparisons, overall and per source_mode and artifact_profile."""
    out = {}
    for name in STAT_NAMES:
        real = _column(real_stats, name)
        inj = _column(inj_stats, name)
        entry = {"all": compare_samples(real, inj)}
        for key in ("source_mode", "artifact_profile"):
            for value in sorted({r[key] for r in inj_rows}):
                sel = np.array([r[key] == value for r in inj_rows])
                entry[f"{key}={value}"] = compare_samples(real, inj[sel])
        out[name] = entry
    return out


def run_realism(stamps_uri: str, anchors_uri_or_none: str | None, out_dir: str, checkpoint: str | None = None,
                shared_data_dir=None, *, report: bool = True) -> dict:
    """Measure, compare, classify, gate; returns the dict written to ``out_dir/realism.json``.

    Parameters
    ----------
    stamps_uri : str
        4c stamps dataset (local or ``s3://``; committed, with ``_manifest.json``).
    anchors_uri_or_none : str or None
        ANCHOR_SCHEMA dataset or Parquet file; None builds the default set from the shared data.
    out_dir : str
        Output folder (``realism.json`` anywhere; the html report and its plots need a local folder).
    checkpoint : str, optional
        CNN checkpoint: adds the domain classifier on its penultimate features (``cnn_domain_auc``).
    shared_data_dir : path, optional
        The shared real-data folder (default ``$DHS_SHARED_DATA`` or ``../shared/data``).
    report : bool
        Also write ``realism.html`` with the gallery and histograms.
    """
    shared = Path(shared_data_dir) if shared_data_dir is not None else default_shared_data_dir()
    inj_rows, ctl_rows = load_injected(stamps_uri)
    if not inj_rows:
        raise InvalidValueError("stamps", stamps_uri, "must hold injected rows with cutout_ok = 1")
    storage.makedirs(out_dir)   # only once the inputs are known to be there
    size = int(inj_rows[0]["image_shape"][-1])
    anchors = load_anchors(anchors_uri_or_none, shared, work_dir=out_dir, size_pix=size)
    real_rows = [a for a in anchors if int(a["label"]) == 1 and min(a["image"].shape[1:]) >= size]
    if len(real_rows) < 2:
        raise InvalidValueError("anchors", len(real_rows), f"need >= 2 real lens cutouts at least {size} px wide")
    nonlens_rows = [a for a in anchors if int(a["label"]) == 0 and min(a["image"].shape[1:]) >= size]
    if not nonlens_rows:
        nonlens_rows = load_des_hosts(shared, size)

    real_stats, inj_stats = measure(real_rows, size), measure(inj_rows, size)
    ctl_stats, nonlens_stats = measure(ctl_rows, size), measure(nonlens_rows, size)

    x_real = np.array([[s[k] for k in STAT_NAMES] for s in real_stats])
    x_inj = np.array([[s[k] for k in STAT_NAMES] for s in inj_stats])
    domain = domain_classifier_auc(x_real, x_inj)
    # The same classifier on the arc statistics alone: separates "the arcs differ" from "the hosts
    # or the sky differ" (lens magnitude and background noise are in the full feature set).
    arc_cols = [j for j, k in enumerate(STAT_NAMES) if k in ARC_STATS]
    domain_arc = domain_classifier_auc(x_real[:, arc_cols], x_inj[:, arc_cols])
    univariate = {}
    for j, name in enumerate(STAT_NAMES):
        col = np.r_[x_real[:, j], x_inj[:, j]]
        lab = np.r_[np.ones(len(x_real)), np.zeros(len(x_inj))]
        ok = np.isfinite(col)
        univariate[name] = roc_auc(col[ok], lab[ok]) if ok.any() else math.nan
    cnn = None
    if checkpoint:
        feats = cnn_features(checkpoint, [r["crop"] for r in real_rows] + [r["crop"] for r in inj_rows])
        cnn = domain_classifier_auc(feats[:len(real_rows)], feats[len(real_rows):])

    photo = median_ratio(_column(real_stats, PHOTOMETRIC_STAT), _column(inj_stats, PHOTOMETRIC_STAT))
    snr = median_ratio(_column(real_stats, "arc_snr"), _column(inj_stats, "arc_snr"))
    lo, hi = 1.0 / PHOTOMETRIC_FACTOR, PHOTOMETRIC_FACTOR
    gates = [
        gate("photometric_flux_ratio", photo["ratio"], [lo, hi], "in",
             what=f"median {PHOTOMETRIC_STAT} injected/real (annulus 0.8-2.5\"), 95% CI {photo['ratio_ci']}"),
        gate("domain_auc", domain["auc"], DOMAIN_AUC_MAX, "<=",
             what="cross-validated AUC real vs injected on the realism statistics (0.5 = indistinguishable)"),
    ]
    if cnn is not None:
        gates.append(gate("cnn_domain_auc", cnn["auc"], DOMAIN_AUC_MAX, "<=",
                          what="the same classifier on the CNN's penultimate features"))
    slacs = _slacs_theta_e(shared)
    result = {
        "domain_auc": domain["auc"], "domain_auc_ci": domain["auc_ci"], "domain_classifier": domain,
        "domain_auc_arc_only": domain_arc["auc"], "domain_auc_arc_only_ci": domain_arc["auc_ci"],
        "cnn_domain_auc": None if cnn is None else cnn["auc"], "cnn_domain_classifier": cnn,
        "n_real": len(real_rows), "n_injected": len(inj_rows), "n_controls": len(ctl_rows),
        "n_real_nonlens": len(nonlens_rows), "photometric": photo, "arc_snr_ratio": snr,
        "univariate_auc": univariate, "statistics": compare_all(real_stats, inj_stats, inj_rows),
        "host_statistics": {k: compare_samples(_column(nonlens_stats, k), _column(ctl_stats, k))
                            for k in STAT_NAMES if k.startswith(("bg_", "lens_"))},
        "theta_e_vs_slacs": compare_samples(slacs, [r["theta_e_arcsec"] for r in inj_rows]),
        "gates": gates, "all_pass": all(g["pass"] is True for g in gates),
        "inputs": {"stamps": stamps_uri, "anchors": anchors_uri_or_none or f"default from {shared}",
                   "checkpoint": checkpoint, "real_names": [r.get("name") for r in real_rows]},
        "definitions": "see dhs_gen.imaging.realism_stats (statistics) and jobs.evaluation.realism (gates)",
    }
    storage.write_json(storage.join(out_dir, "realism.json"), result)
    if report:
        from jobs.evaluation.realism_report import (
            write_report,  # matplotlib loads only when a report is written
        )

        write_report(out_dir, result, real_rows, real_stats, inj_rows, inj_stats, shared)
    return result


def headline(result: dict) -> str:
    """One line for logs: domain AUC with its CI and every gate's verdict."""
    lo, hi = result["domain_auc_ci"]
    gates = ", ".join(f"{g['name']}={'n/a' if g['value'] is None else format(g['value'], '.3g')} {VERDICT[g['pass']]}"
                      for g in result["gates"])
    return (f"realism: domain AUC {result['domain_auc']:.3f} [{lo:.3f}, {hi:.3f}] "
            f"({result['n_real']} real vs {result['n_injected']} injected); {gates}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs realism", description=__doc__.split("\n\n")[0])
    p.add_argument("--stamps", required=True, help="4c stamps dataset (local path or s3://)")
    p.add_argument("--anchors", default=None, help="anchor set Parquet (default: built from $DHS_SHARED_DATA)")
    p.add_argument("--checkpoint", default=None, help="CNN checkpoint: also classify on its penultimate features")
    p.add_argument("--out", required=True, help="output directory for realism.json and realism.html")
    p.add_argument("--shared-data", default=None, help="shared real-data folder (default $DHS_SHARED_DATA)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_realism(args.stamps, args.anchors, args.out, args.checkpoint, args.shared_data)
    print(headline(result), file=sys.stderr)
    return 0 if result["all_pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
