"""Stage 4d: selection function -- recovered fraction of injections in bins of theta_E x arc SNR x PSF x depth.

    dhs completeness --scores SCORES --out OUT [--threshold T | --fpr 1e-3] [--negatives NEG_SCORES]

Input: a committed ``dhs score`` output of 4c stamps (columns ``score``, ``score_status``, ``label``,
``theta_e_arcsec``, ``arc_snr``, ``psf_fwhm_r_arcsec``, ``psfdepth_r_nmgy``, ...). An injection
(``label == 1``) is *recovered* when ``score > threshold`` -- strictly, as the operating points of
``dhs_gen.metrics``. The threshold is set on negatives (the label-0 rows of SCORES -- paired
controls and hard negatives -- or of ``--negatives``): by default at the operating point of
``dhs_gen.metrics.operating_threshold``, the one ``dhs evaluate`` uses (false-positive rate 1e-3
where the negatives resolve it, i.e. >= 1000 of them, else 1e-2); with ``--fpr`` at that rate
(``dhs_gen.metrics.recall_at_fpr``). ``--threshold`` gives it explicitly instead.

Output: a Parquet table (committed with ``_manifest.json``) holding every cell of the bin grid with
``n_injected`` (injections in the cell), ``n_scored`` (of those, scored), ``n_recovered``,
``completeness = n_recovered / n_scored`` (NaN for an empty cell) and its Clopper-Pearson interval
(``dhs_gen.metrics.binomial_ci``); and ``completeness.png`` (completeness vs theta_E, and a theta_E x
arc-SNR heat map). Injections outside the bins (e.g. a rejected cutout with no arc SNR) are counted
in the manifest, never dropped silently. The table is small, so the driver alone computes it.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.metrics import DEFAULT_OPERATING_FPRS, binomial_ci, operating_threshold, recall_at_fpr
from jobs.runtime import outputs, storage

BIN_VARIABLES = ("theta_e_arcsec", "arc_snr", "psf_fwhm_r_arcsec", "psfdepth_r_nmgy")
READ_COLUMNS = ("score", "score_status", "label", "split") + BIN_VARIABLES
PLOT_NAME = "completeness.png"


@dataclass(frozen=True)
class CompletenessBins:
    """Bin edges per variable: a tuple of increasing edges (cells ``[lo, hi)``), or an int n = n quantile bins.

    Units: theta_E in arcsec, arc SNR dimensionless, PSF FWHM (r) in arcsec, depth (r, per-pixel
    1-sigma noise) in nanomaggies. Quantile bins follow the data (PSF and depth differ per survey
    region); the resolved edges are recorded in the manifest.
    """

    theta_e_arcsec: tuple | int = (0.5, 1.0, 1.4, 1.8, 2.2, 3.0)
    arc_snr: tuple | int = (0.0, 3.0, 5.0, 10.0, 20.0, 50.0, math.inf)
    psf_fwhm_r_arcsec: tuple | int = 3
    psfdepth_r_nmgy: tuple | int = 3

    def __post_init__(self):
        for name in BIN_VARIABLES:
            spec = getattr(self, name)
            if isinstance(spec, int) and not isinstance(spec, bool):
                check_range(f"bins.{name}", spec, 1, 1000)
                continue
            edges = np.asarray(spec, dtype=float)
            if edges.ndim != 1 or edges.size < 2 or np.isnan(edges).any() or np.any(np.diff(edges) <= 0):
                raise InvalidValueError(f"bins.{name}", spec, "at least 2 strictly increasing edges, or a number of "
                                                              "quantile bins")
            object.__setattr__(self, name, tuple(float(e) for e in edges))

    def resolve(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Edges of every variable; quantile edges come from the finite values of the injections."""
        out = {}
        inj = _injection_mask(table)
        for name in BIN_VARIABLES:
            spec = getattr(self, name)
            if isinstance(spec, tuple):
                out[name] = np.asarray(spec)
                continue
            v = _column(table, name)[inj]
            v = v[np.isfinite(v)]
            if v.size == 0:
                out[name] = np.array([-math.inf, math.inf])
                continue
            edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, spec + 1)))
            if edges.size == 1:
                edges = np.array([edges[0], edges[0]])
            edges[-1] = np.nextafter(edges[-1], math.inf)   # the largest value belongs to the last cell
            out[name] = edges
        return out


def _column(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with NaN for nulls."""
    if name not in table.column_names:
        raise InvalidValueError("scores", table.column_names, f"must have a column {name!r}")
    return np.asarray(table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)


def _injection_mask(table: pa.Table) -> np.ndarray:
    label = _column(table, "label")
    return label == 1


def _scored(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(score float64 with NaN where not scored, bool ok)."""
    score = _column(table, "score")
    status = np.asarray(table.column("score_status").to_pylist(), dtype=object)
    ok = (status == "ok") & np.isfinite(score)
    return score, ok


def cell_indices(table: pa.Table, edges: dict, by=BIN_VARIABLES) -> tuple[np.ndarray, np.ndarray]:
    """Per row: flat cell index in the C-ordered grid over ``by``, and whether the row lies inside the grid.

    "Inside" is judged on every variable of ``edges``, not only ``by``: a marginal over ``by`` is then
    exactly the sum of the full grid's cells.
    """
    idx, inside = {}, np.ones(table.num_rows, dtype=bool)
    for name, e in edges.items():
        v = _column(table, name)
        i = np.searchsorted(e, v, side="right") - 1
        ok = np.isfinite(v) & (i >= 0) & (i < e.size - 1)
        inside &= ok
        idx[name] = np.where(ok, i, 0)
    flat = np.zeros(table.num_rows, dtype=np.int64)
    for name in by:
        flat = flat * (edges[name].size - 1) + idx[name]
    return flat, inside


def completeness_table(scores: pa.Table, bins: CompletenessBins | dict, threshold: float, by=BIN_VARIABLES,
                       alpha: float = 0.05) -> pa.Table:
    """Recovered fraction of injections in every cell of the bin grid (pure; no I/O).

    Parameters
    ----------
    scores : pyarrow.Table
        Scored rows with ``label`` (1 = injection), ``score`` (probability), ``score_status`` and the
        columns named in ``by``.
    bins : CompletenessBins or dict
        Bins, or already resolved edges ``{variable: edges}`` (units as in :class:`CompletenessBins`).
    threshold : float
        An injection is recovered when its score is strictly above it (score units).
    by : sequence of str
        Variables spanning the grid (a subset of :data:`BIN_VARIABLES`; fewer give marginals).
    alpha : float
        1 - confidence level of the Clopper-Pearson intervals.

    Returns
    -------
    pyarrow.Table
        One row per cell (C order over ``by``): ``<var>_lo``, ``<var>_hi``, ``n_injected``, ``n_scored``,
        ``n_recovered`` (counts), ``completeness``, ``ci_lo``, ``ci_hi`` (fractions; NaN where
        ``n_scored == 0``), ``threshold``.
    """
    threshold = check_range("threshold", threshold, -math.inf, math.inf)
    by = tuple(by)
    for name in by:
        if name not in BIN_VARIABLES:
            raise InvalidValueError("by", name, f"one of {list(BIN_VARIABLES)}")
    edges = bins if isinstance(bins, dict) else bins.resolve(scores)
    edges = {k: np.asarray(v, dtype=float) for k, v in edges.items()}
    shape = tuple(edges[n].size - 1 for n in by)
    n_cells = int(np.prod(shape)) if shape else 1
    flat, inside = cell_indices(scores, edges, by)
    score, ok = _scored(scores)
    inj = _injection_mask(scores) & inside
    n_injected = np.bincount(flat[inj], minlength=n_cells)
    n_scored = np.bincount(flat[inj & ok], minlength=n_cells)
    n_recovered = np.bincount(flat[inj & ok & (np.nan_to_num(score, nan=-math.inf) > threshold)],
                              minlength=n_cells)
    cols = {}
    grid = np.unravel_index(np.arange(n_cells), shape) if shape else ()
    for name, idx in zip(by, grid, strict=True):
        cols[f"{name}_lo"] = edges[name][idx]
        cols[f"{name}_hi"] = edges[name][idx + 1]
    cis = [binomial_ci(int(k), int(n), alpha) for k, n in zip(n_recovered, n_scored, strict=True)]
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = np.where(n_scored > 0, n_recovered / np.maximum(n_scored, 1), np.nan)
    cols.update(n_injected=n_injected.astype(np.int64), n_scored=n_scored.astype(np.int64),
                n_recovered=n_recovered.astype(np.int64), completeness=frac,
                ci_lo=np.array([c[0] for c in cis]), ci_hi=np.array([c[1] for c in cis]),
                threshold=np.full(n_cells, threshold))
    return pa.table(cols)


def threshold_at_fpr(negative_scores, fpr: float, positive_scores=()) -> dict:
    """Score threshold giving false-positive rate <= ``fpr`` on the negatives (``dhs_gen.metrics.recall_at_fpr``).

    Returns
    -------
    dict
        ``threshold``, ``achieved_fpr``, ``n_negatives``, ``recall`` (of ``positive_scores``).

    Raises
    ------
    InvalidValueError
        Too few negatives to resolve ``fpr`` (fewer than ``1 / fpr``).
    """
    pos = np.asarray(positive_scores, dtype=float)
    neg = np.asarray(negative_scores, dtype=float)
    op = recall_at_fpr(pos, np.ones(pos.size, dtype=int), fpr, reference_negative_scores=neg)
    if not np.isfinite(op.threshold) or op.n_false_positives_allowed < 1:
        raise InvalidValueError("fpr", fpr, f"cannot be resolved with {neg.size} negatives (need >= {math.ceil(1 / fpr)})")
    return {"threshold": op.threshold, "achieved_fpr": op.achieved_fpr, "n_negatives": op.n_neg,
            "recall": op.value}


def default_operating_point(negative_scores, fprs=DEFAULT_OPERATING_FPRS) -> dict:
    """The default threshold: :func:`dhs_gen.metrics.operating_threshold` of the negatives.

    Returns
    -------
    dict
        The operating point, with ``threshold`` set to its ``negative_score_cut`` (score units):
        recovery here is ``score > threshold``, which selects the same rows as ``score >=`` the
        operating threshold of ``dhs evaluate``. ``operating_threshold`` keeps that inclusive value.

    Raises
    ------
    InvalidValueError
        No negatives to set a threshold on.
    """
    neg = np.asarray(negative_scores, dtype=float)
    op = operating_threshold(neg, np.zeros(neg.size, dtype=np.int8), fprs)
    if not math.isfinite(op["negative_score_cut"]):
        raise InvalidValueError("negatives", neg.size, "must hold scored label-0 rows to set the operating threshold "
                                                      "(or give --threshold)")
    return {**op, "operating_threshold": op["threshold"], "threshold": op["negative_score_cut"]}


def plot_png(scores: pa.Table, edges: dict, threshold: float, alpha: float = 0.05) -> bytes:
    """PNG: completeness vs theta_E (with intervals) and the theta_E x arc-SNR heat map (marginal over the rest)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t1 = completeness_table(scores, edges, threshold, by=("theta_e_arcsec",), alpha=alpha)
    t2 = completeness_table(scores, edges, threshold, by=("theta_e_arcsec", "arc_snr"), alpha=alpha)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    lo, hi = t1["theta_e_arcsec_lo"].to_numpy(), t1["theta_e_arcsec_hi"].to_numpy()
    c, cl, ch = (t1[k].to_numpy() for k in ("completeness", "ci_lo", "ci_hi"))
    mid = 0.5 * (lo + hi)
    ax1.errorbar(mid, c, yerr=[c - cl, ch - c], xerr=0.5 * (hi - lo), fmt="o", capsize=3)
    for x, y, n in zip(mid, c, t1["n_scored"].to_numpy(), strict=True):
        if np.isfinite(y):
            ax1.annotate(f"n={n}", (x, y), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=7)
    ax1.set(xlabel="theta_E (arcsec)", ylabel=f"completeness (score > {threshold:.3g})", ylim=(-0.02, 1.05),
            title=f"recovered fraction, {int(100 * (1 - alpha))}% Clopper-Pearson")
    n_t, n_s = edges["theta_e_arcsec"].size - 1, edges["arc_snr"].size - 1
    grid = t2["completeness"].to_numpy().reshape(n_t, n_s)
    counts = t2["n_scored"].to_numpy().reshape(n_t, n_s)
    im = ax2.imshow(grid.T, origin="lower", vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(n_t):
        for j in range(n_s):
            if counts[i, j]:
                ax2.text(i, j, f"{grid[i, j]:.2f}\n{counts[i, j]}", ha="center", va="center", fontsize=6, color="w")
    ax2.set_xticks(range(n_t), [f"{a:g}-{b:g}" for a, b in zip(edges["theta_e_arcsec"][:-1], edges["theta_e_arcsec"][1:],
                                                               strict=True)], fontsize=7)
    ax2.set_yticks(range(n_s), [f"{a:g}-{b:g}" for a, b in zip(edges["arc_snr"][:-1], edges["arc_snr"][1:], strict=True)],
                   fontsize=7)
    ax2.set(xlabel="theta_E (arcsec)", ylabel="arc SNR", title="completeness (cell: fraction, n scored)")
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _read_scores(uri: str) -> pa.Table:
    outputs.require_input(uri, stage="score")
    files = outputs.dataset_files(uri)
    if not files:
        raise InvalidValueError("scores", uri, "holds no part files (nothing was scored)")
    fs, path = storage.resolve(files[0])
    schema_names = set(pq.read_schema(path, filesystem=fs).names)
    cols = [c for c in READ_COLUMNS if c in schema_names]
    return storage.read_parquet(files, columns=cols)


def run(scores_uri: str, out_uri: str, threshold: float | None = None, fpr: float | None = None,
        negatives_uri: str | None = None, bins: CompletenessBins | None = None, split: str | None = None,
        alpha: float = 0.05, overwrite: bool = False) -> dict:
    """Compute and commit the completeness table (+ plot) of a scored dataset; returns the manifest.

    At most one of ``threshold`` (explicit, score units) and ``fpr`` (fraction); with neither, the
    operating point of the negatives (:func:`default_operating_point`).
    """
    t0 = time.perf_counter()
    if threshold is not None and fpr is not None:
        raise InvalidValueError("threshold", threshold, "give at most one of threshold or fpr")
    bins = bins or CompletenessBins()
    table = _read_scores(scores_uri)
    if split is not None:
        table = table.filter(pc.equal(table["split"], split))
    score, ok = _scored(table)
    inj = _injection_mask(table)
    op = {"mode": "threshold", "threshold": float(check_range("threshold", threshold, 0.0, 1.0))} \
        if threshold is not None else None
    if op is None:
        neg_table = _read_scores(negatives_uri) if negatives_uri else table
        neg_score, neg_ok = _scored(neg_table)
        negs = neg_score[neg_ok & (_column(neg_table, "label") == 0)]
        if fpr is not None:
            op = {"mode": "fpr", "fpr": fpr, **threshold_at_fpr(negs, fpr, score[inj & ok])}
        else:
            op = {"mode": "operating_point", **default_operating_point(negs)}
    edges = bins.resolve(table)
    outputs.prepare_output(out_uri, overwrite, (scores_uri, negatives_uri))
    full = completeness_table(table, edges, op["threshold"], alpha=alpha)
    _, inside = cell_indices(table, edges)
    n_rec = int(np.sum(inj & ok & (np.nan_to_num(score, nan=-math.inf) > op["threshold"])))
    n_sc = int(np.sum(inj & ok))
    storage.write_bytes(storage.join(out_uri, PLOT_NAME), plot_png(table, edges, op["threshold"], alpha))
    run_id = uuid.uuid4().hex[:12]
    report = outputs.write_attempt(full, out_uri, run_id, 0, "driver")
    config = {"operating_point": op, "alpha": alpha, "split": split,
              "bins": {k: [None if not math.isfinite(x) else float(x) for x in v] for k, v in edges.items()},
              "bins_spec": {k: getattr(bins, k) if isinstance(getattr(bins, k), int) else "edges" for k in BIN_VARIABLES}}
    overall = binomial_ci(n_rec, n_sc, alpha)
    extra = {"n_score_rows": table.num_rows, "n_injections": int(inj.sum()), "n_injections_scored": n_sc,
             "n_recovered": n_rec, "completeness": n_rec / n_sc if n_sc else None, "ci": list(overall),
             "n_injections_out_of_bins": int(np.sum(inj & ~inside)), "plot": PLOT_NAME}
    manifest = outputs.build_manifest("4d_completeness", config,
                                      {"scores": scores_uri, **({"negatives": negatives_uri} if negatives_uri else {})},
                                      full.num_rows, full.num_rows, 0, {}, {"total_s": time.perf_counter() - t0},
                                      extra=extra)
    return outputs.commit(out_uri, run_id, [report], manifest, replace=overwrite)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs completeness", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scores", required=True, help="dhs score output of 4c stamps (directory or s3:// URI)")
    p.add_argument("--out", required=True, help="output directory or s3:// URI")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float,
                   help="explicit score threshold: recovered = score > threshold (default: the operating point, "
                        "FPR 1e-3 on the negatives where >= 1000 of them resolve it, else 1e-2)")
    g.add_argument("--fpr", type=float, help="set the threshold at this false-positive rate on the negatives")
    p.add_argument("--negatives", default=None,
                   help="scored negatives setting the threshold (default: label-0 rows of --scores)")
    p.add_argument("--split", default=None, choices=("train", "val", "test"), help="use only this split")
    p.add_argument("--alpha", type=float, default=0.05, help="1 - confidence of the intervals (default 0.05)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    m = run(args.scores, args.out, args.threshold, args.fpr, args.negatives, split=args.split, alpha=args.alpha,
            overwrite=args.overwrite)
    e = m["extra"]
    op = m["config"]["operating_point"]
    thr = op["threshold"]
    if op["mode"] == "operating_point":
        note = "" if op["resolved"] else f" (not resolved: {op['reason']})"
        print(f"4d completeness: operating point FPR {op['fpr_target']:g} on {op['n_negatives']} negatives{note}",
              file=sys.stderr)
    frac = "n/a" if e["completeness"] is None else f"{e['completeness']:.3f}"
    print(f"4d completeness: {e['n_recovered']}/{e['n_injections_scored']} injections recovered ({frac}) at "
          f"score > {thr:.4g}; {m['rows_written']} cells -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
