"""Stage 4d completeness: counts on hand-built tables, scipy's exact binomial interval as the CI oracle.

Every expected count below is counted by hand from the rows written in the test; the intervals
are checked against ``scipy.stats.binomtest(...).proportion_ci(method="exact")`` (an independent
Clopper-Pearson implementation), to 1e-9 (both invert the same beta quantiles in float64).
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from scipy.stats import binomtest

from dhs_gen.errors import InvalidValueError
from jobs.runtime import outputs, storage
from jobs.stages import completeness

EDGES = {"theta_e_arcsec": [0.5, 1.0, 1.5], "arc_snr": [0.0, 10.0, math.inf], "psf_fwhm_r_arcsec": [0.5, 1.5],
         "psfdepth_r_nmgy": [0.0, 1.0]}


def _rows():
    # (label, theta_E, arc_snr, score, status)
    spec = [
        (1, 0.8, 5.0, 0.9, "ok"),          # cell (0, 0) recovered
        (1, 0.8, 5.0, 0.2, "ok"),          # cell (0, 0) missed
        (1, 0.8, 5.0, 0.5, "ok"),          # cell (0, 0) missed: recovery is strictly above the threshold
        (1, 1.2, 20.0, 0.7, "ok"),         # cell (1, 1) recovered
        (1, 1.2, 20.0, None, "cutout_not_ok"),  # cell (1, 1) injected, not scored
        (1, 1.2, None, None, "cutout_not_ok"),  # no arc SNR: out of the grid
        (1, 2.0, 5.0, 0.99, "ok"),         # theta_E beyond the last edge: out of the grid
        (0, 0.8, 5.0, 0.99, "ok"),         # a control: never counted as an injection
    ]
    return pa.table({
        "task_id": [f"t{i}" for i in range(len(spec))],
        "label": pa.array([s[0] for s in spec], pa.int8()),
        "theta_e_arcsec": [s[1] for s in spec], "arc_snr": [s[2] for s in spec],
        "score": [s[3] for s in spec], "score_status": [s[4] for s in spec],
        "psf_fwhm_r_arcsec": [1.0] * len(spec), "psfdepth_r_nmgy": [0.5] * len(spec),
        "split": ["test"] * len(spec),
    })


def test_counts_and_exact_intervals_on_a_hand_built_table():
    t = completeness.completeness_table(_rows(), EDGES, threshold=0.5)
    assert t.num_rows == 4   # 2 theta_E x 2 arc-SNR x 1 x 1 cells, C order (theta_E slowest)
    d = t.to_pydict()
    assert d["n_injected"] == [3, 0, 0, 2]
    assert d["n_scored"] == [3, 0, 0, 1]
    assert d["n_recovered"] == [1, 0, 0, 1]
    assert d["theta_e_arcsec_lo"] == [0.5, 0.5, 1.0, 1.0] and d["arc_snr_hi"] == [10.0, math.inf, 10.0, math.inf]
    assert d["completeness"][0] == pytest.approx(1 / 3) and d["completeness"][3] == 1.0
    assert math.isnan(d["completeness"][1]) and math.isnan(d["ci_lo"][2])
    for i, (k, n) in {0: (1, 3), 3: (1, 1)}.items():
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert d["ci_lo"][i] == pytest.approx(ci.low, abs=1e-9) and d["ci_hi"][i] == pytest.approx(ci.high, abs=1e-9)


def test_threshold_moves_recoveries_and_marginal_sums_the_grid():
    rows = _rows()
    assert completeness.completeness_table(rows, EDGES, 0.1).column("n_recovered").to_pylist() == [3, 0, 0, 1]
    assert completeness.completeness_table(rows, EDGES, 0.3).column("n_recovered").to_pylist() == [2, 0, 0, 1]
    full = completeness.completeness_table(rows, EDGES, 0.5)
    marg = completeness.completeness_table(rows, EDGES, 0.5, by=("theta_e_arcsec",))
    for col in ("n_injected", "n_scored", "n_recovered"):
        assert marg.column(col).to_pylist() == list(np.asarray(full.column(col)).reshape(2, 2).sum(axis=1))


def test_quantile_bins_split_the_injections_evenly():
    n = 9
    t = pa.table({"label": [1] * n, "theta_e_arcsec": [1.0] * n, "arc_snr": [5.0] * n, "score": [0.9] * n,
                  "score_status": ["ok"] * n, "psf_fwhm_r_arcsec": np.arange(1, n + 1) * 0.1,
                  "psfdepth_r_nmgy": [0.5] * n})
    bins = completeness.CompletenessBins(theta_e_arcsec=(0.5, 1.5), arc_snr=(0, 10), psf_fwhm_r_arcsec=3,
                                         psfdepth_r_nmgy=1)
    out = completeness.completeness_table(t, bins, 0.5)
    assert out.column("n_injected").to_pylist() == [3, 3, 3]   # 9 distinct values in 3 quantile bins
    assert out.column("psf_fwhm_r_arcsec_lo").to_pylist()[0] == pytest.approx(0.1)


def test_threshold_at_fpr_counts_negatives_above():
    neg = np.arange(1000) / 1000.0
    op = completeness.threshold_at_fpr(neg, 0.01, positive_scores=[0.995, 0.5])
    assert np.sum(neg > op["threshold"]) == 10           # k = floor(0.01 * 1000) negatives above
    assert op["achieved_fpr"] == pytest.approx(0.01) and op["recall"] == 0.5
    with pytest.raises(InvalidValueError, match="fpr"):
        completeness.threshold_at_fpr(neg[:50], 1e-3)


def test_bad_bins_and_threshold_are_refused():
    with pytest.raises(InvalidValueError, match="bins.arc_snr"):
        completeness.CompletenessBins(arc_snr=(5.0, 1.0))
    with pytest.raises(InvalidValueError, match="by"):
        completeness.completeness_table(_rows(), EDGES, 0.5, by=("magnification",))


def _scored_dataset(tmp_path, tables) -> str:
    """A committed `dhs score`-like dataset built with the real commit machinery (several part files)."""
    uri = str(tmp_path / "scores")
    reports = [outputs.write_attempt(t, uri, "r1", i, "a0") for i, t in enumerate(tables)]
    n = sum(t.num_rows for t in tables)
    m = outputs.build_manifest("score", {}, {}, n, n, 0, {}, {})
    outputs.commit(uri, "r1", reports, m)
    return uri


def test_run_threshold_and_fpr_write_a_committed_table_and_plot(tmp_path):
    rows = _rows()
    scores = _scored_dataset(tmp_path, [rows.slice(0, 4), rows.slice(4)])
    out = str(tmp_path / "comp")
    assert completeness.main(["--scores", scores, "--out", out, "--threshold", "0.5"]) == 0
    m = outputs.require_input(out, stage="4d_completeness")
    e = m["extra"]
    assert (e["n_injections"], e["n_injections_scored"], e["n_recovered"], e["n_injections_out_of_bins"]) == (7, 5, 3, 1)   # default bins reach theta_E 3.0; only the row without arc SNR is outside
    assert storage.read_bytes(storage.join(out, "completeness.png"))[:8] == b"\x89PNG\r\n\x1a\n"
    table = storage.read_parquet(outputs.dataset_files(out))
    assert table.num_rows == m["rows_written"] and sum(table.column("n_injected").to_pylist()) == 7 - 1

    # FPR mode on a scored set with 10 negatives: fpr 0.1 lets exactly one negative above the threshold.
    neg = pa.table({"label": pa.array([0] * 10, pa.int8()), "score": np.linspace(0.05, 0.95, 10),
                    "score_status": ["ok"] * 10})
    negs = _scored_dataset(tmp_path / "n", [neg])
    out2 = str(tmp_path / "comp2")
    completeness.run(scores, out2, fpr=0.1, negatives_uri=negs)
    op = outputs.read_manifest(out2)["config"]["operating_point"]
    assert op["threshold"] == pytest.approx(0.85) and op["n_negatives"] == 10
    with pytest.raises(outputs.OutputExistsError):
        completeness.run(scores, out2, threshold=0.5)
    with pytest.raises(InvalidValueError):
        completeness.run(scores, str(tmp_path / "x"), threshold=0.5, fpr=0.1)


def _negatives(scores) -> pa.Table:
    n = len(scores)
    return pa.table({
        "task_id": [f"n{i}" for i in range(n)], "label": pa.array([0] * n, pa.int8()),
        "theta_e_arcsec": [0.8] * n, "arc_snr": [5.0] * n, "score": np.asarray(scores, dtype=float),
        "score_status": ["ok"] * n, "psf_fwhm_r_arcsec": [1.0] * n, "psfdepth_r_nmgy": [0.5] * n,
        "split": ["test"] * n,
    })


def test_default_threshold_is_the_operating_point_of_the_label0_rows(tmp_path):
    # 199 controls scored 0.000 .. 0.792 (step 0.004) plus the control of _rows() at 0.99: 200 negatives,
    # FPR 1e-2 allows 2 (0.99 and 0.792) -> the cut is the third-highest negative, 0.788
    rng = np.random.default_rng(0)
    neg = rng.permutation(np.arange(199) * 0.004)
    rows = _rows()
    scores = _scored_dataset(tmp_path, [rows, _negatives(neg)])
    out = str(tmp_path / "comp")
    assert completeness.main(["--scores", scores, "--out", out]) == 0   # neither --threshold nor --fpr
    m = outputs.read_manifest(out)
    op = m["config"]["operating_point"]
    assert (op["mode"], op["fpr_target"], op["n_negatives"], op["n_false_positives_allowed"]) == (
        "operating_point", 0.01, 200, 2)
    assert op["resolved"] and op["threshold"] == pytest.approx(0.788) and op["achieved_fpr"] == 0.01
    assert op["operating_threshold"] == np.nextafter(op["threshold"], np.inf)   # dhs evaluate's ">=" form
    # injections strictly above 0.788: 0.9, 0.99 (the one outside theta_E bins counts overall); 0.7, 0.5, 0.2 do not
    assert (m["extra"]["n_recovered"], m["extra"]["n_injections_scored"]) == (2, 5)
    table = storage.read_parquet(outputs.dataset_files(out))
    assert set(table.column("threshold").to_pylist()) == {op["threshold"]}


def test_default_operating_point_uses_1e3_with_1000_negatives_and_needs_negatives(tmp_path):
    neg = np.arange(1000) / 1000                     # 0.000 .. 0.999, of which 1 may pass at FPR 1e-3
    op = completeness.default_operating_point(neg)
    assert (op["fpr_target"], op["n_false_positives_allowed"], op["threshold"]) == (1e-3, 1, 0.998)
    op = completeness.default_operating_point(neg[:999])
    assert (op["fpr_target"], op["n_false_positives_allowed"], op["threshold"]) == (1e-2, 9, 0.989)
    # --negatives replaces the label-0 rows of the scores; no negatives at all is an error, not a 0.5 guess
    rows = _rows()
    injections = rows.filter(pc.equal(rows["label"], 1))
    scores = _scored_dataset(tmp_path, [injections])
    with pytest.raises(InvalidValueError, match="negatives"):
        completeness.run(scores, str(tmp_path / "x"))
    negs = _scored_dataset(tmp_path / "n", [_negatives(neg)])
    m = completeness.run(scores, str(tmp_path / "y"), negatives_uri=negs)
    assert m["config"]["operating_point"]["threshold"] == 0.998 and m["extra"]["n_recovered"] == 0
