"""Evaluation: metrics.json against analytic binormal values, gate logic, and the report files."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from dhs_gen.errors import ConfigError
from dhs_gen.physics.psf import gaussian_kernel
from jobs.evaluation.evaluate import EvalConfig, compute_metrics
from jobs.evaluation.gates import CentralPixels, central_logreg_auc, central_pixel_features, gate
from jobs.training.preprocess import normalize_stamps

PIX = 0.262


def binormal_scores(n_pairs: int, d_by_mode: dict, seed: int = 0) -> pd.DataFrame:
    """Score rows of injections / paired controls / shuffles: logit ~ N(d, 1) for injections, N(0, 1) else.

    Sigmoid is monotone, so every ROC quantity is that of the binormal model with unit
    variances: AUC = Phi(d / sqrt 2), TPR(FPR f) = 1 - Phi(Phi^-1(1 - f) - d).
    """
    rng = np.random.default_rng(seed)
    modes = list(d_by_mode)
    rows = []
    for i in range(n_pairs):
        mode = modes[i % len(modes)]
        for kind, label in (("injection", 1), ("control", 0), ("hardneg_shuffle", 0)):
            logit = rng.normal(d_by_mode[mode] if label else 0.0, 1.0)
            rows.append({"task_id": f"{kind}-{i}", "pair_id": f"p{i}", "kind": kind, "label": label,
                         "split": "test", "source_mode": mode, "artifact_profile": ("none", "mild")[i % 2],
                         "theta_e_arcsec": (0.75, 1.5, 2.5)[i % 3], "arc_snr": 10 ** rng.uniform(0.5, 2),
                         "cutout_ok": 1, "score": 1 / (1 + math.exp(-logit))})
    return pd.DataFrame(rows)


def test_metrics_match_binormal_analytic_values():
    d = {"sersic": 1.0, "hybrid": 2.5}
    df = binormal_scores(3000, d)
    # rows that must be skipped: another split, a rejected cutout, a missing score
    extra = df.iloc[:3].copy()
    extra["task_id"] = ["x0", "x1", "x2"]
    extra["split"] = ["train", "test", "test"]
    extra.loc[extra.index[1], "cutout_ok"] = 0
    extra.loc[extra.index[2], "score"] = np.nan
    m = compute_metrics(pd.concat([df, extra], ignore_index=True), EvalConfig(n_boot=100))
    # n_rows counts the test split: 9000 + the two extra test rows, both skipped
    assert m["rows"] == {"n_rows": 9002, "n_skipped_cutout_not_ok": 1, "n_skipped_no_score": 1, "n_evaluated": 9000}
    assert (m["n_pos"], m["n_neg"]) == (3000, 6000)
    # pooled positives are an equal mixture of the two modes: AUC = mean of the per-mode AUCs
    auc_true = np.mean([stats.norm.cdf(v / math.sqrt(2)) for v in d.values()])
    # Hanley-McNeil sd of an AUC ~0.85 with 3000/6000 rows is ~0.005: allow 4 sd
    assert abs(m["auc"] - auc_true) < 0.02
    assert m["auc_ci95"][0] < m["auc"] < m["auc_ci95"][1]
    assert set(m["tpr_at_fpr"]) == {"0.01", "0.001", "0.0001"}
    t2 = m["tpr_at_fpr"]["0.01"]
    z = stats.norm.ppf(1 - 0.01)
    tpr_true = np.mean([1 - stats.norm.cdf(z - v) for v in d.values()])
    # binomial sd of a TPR ~0.4 over 3000 positives is 0.009, plus threshold noise from 60 negatives
    assert abs(t2["value"] - tpr_true) < 0.05 and t2["ci95"][0] < t2["value"] < t2["ci95"][1]
    # 6000 negatives cannot resolve FPR 1e-4: flagged, no value, no CI
    t4 = m["tpr_at_fpr"]["0.0001"]
    assert t4["too_few_negatives"] and not t4["resolved"] and t4["value"] is None and t4["ci95"] is None
    assert m["tpr_at_fpr"]["0.001"]["resolved"]
    for mode, dm in d.items():
        block = m["by_source_mode"][mode]
        assert block["negatives_from"] == "stratum" and block["n_pos"] == 1500
        assert abs(block["auc"] - stats.norm.cdf(dm / math.sqrt(2))) < 0.03  # sd ~0.008 at n=1500
    assert set(m["by_artifact_profile"]) == {"none", "mild"}
    assert m["anchor_gate"] == {"available": False,
                                "reason": "no anchor set given (--anchor-scores): the anchor gate was not run"}


def test_recall_vs_theta_e_counts_by_hand():
    df = binormal_scores(600, {"sersic": 1.0}, seed=3)
    m = compute_metrics(df, EvalConfig(n_boot=10, recall_threshold=0.5))
    rows = m["recall_vs_theta_e"]
    assert [r["center"] for r in rows] == [0.75, 1.5, 2.5]  # one bin per grid value
    inj = df[df["label"] == 1]
    for r in rows:
        sel = inj[inj["theta_e_arcsec"] == r["center"]]
        assert (r["n"], r["k"]) == (len(sel), int((sel["score"] >= 0.5).sum()))
        assert r["ci95"][0] <= r["recall"] <= r["ci95"][1]
    assert sum(r["n"] for r in m["recall_vs_arc_snr"]) == 600


def test_recall_curves_use_the_operating_threshold_of_the_negatives():
    df = binormal_scores(600, {"sersic": 1.0}, seed=3)
    m = compute_metrics(df, EvalConfig(n_boot=10))
    neg = np.sort(df.loc[df["label"] == 0, "score"].to_numpy())[::-1]
    op, thr = m["operating_point"], m["recall_threshold"]
    # 1200 negatives resolve FPR 1e-3: one negative allowed, the cut is the second-highest negative
    assert (op["fpr_target"], op["n_negatives"], op["n_false_positives_allowed"], op["resolved"]) == (1e-3, 1200, 1, True)
    assert op["negative_score_cut"] == neg[1] and op["achieved_fpr"] == 1 / 1200
    assert thr["source"] == "operating_point" and thr["threshold"] == op["threshold"]
    assert neg[1] < thr["threshold"] <= neg[0] and int(np.sum(neg >= thr["threshold"])) == 1
    words = thr["text"].split()
    assert words[:2] == ["operating", "threshold"] and thr["text"].endswith("(FPR 1e-3 on 1,200 negatives)")
    assert float(words[2]) == pytest.approx(thr["threshold"], abs=0.01)
    inj = df[df["label"] == 1]
    for r in m["recall_vs_theta_e"]:
        sel = inj[inj["theta_e_arcsec"] == r["center"]]
        assert (r["n"], r["k"]) == (len(sel), int((sel["score"] >= thr["threshold"]).sum()))
    # the recall curve agrees with TPR at FPR 1e-3 (same rows selected), far below the 0.5-threshold recall
    k_all = sum(r["k"] for r in m["recall_vs_theta_e"])
    assert k_all / 600 == pytest.approx(m["tpr_at_fpr"]["0.001"]["value"])
    assert k_all / 600 < 0.3 < float(np.mean(inj["score"] >= 0.5))
    assert m["config"]["recall_threshold"] is None and m["config"]["operating_fprs"] == (1e-3, 1e-2)


def test_operating_threshold_with_fewer_than_1000_negatives_and_an_explicit_override():
    df = binormal_scores(100, {"sersic": 2.0}, seed=4)  # 200 negatives: FPR 1e-2, 2 allowed
    m = compute_metrics(df, EvalConfig(n_boot=10))
    neg = np.sort(df.loc[df["label"] == 0, "score"].to_numpy())[::-1]
    assert (m["operating_point"]["fpr_target"], m["operating_point"]["n_false_positives_allowed"]) == (1e-2, 2)
    assert int(np.sum(neg >= m["recall_threshold"]["threshold"])) == 2
    assert "(FPR 1e-2 on 200 negatives)" in m["recall_threshold"]["text"]
    m2 = compute_metrics(df, EvalConfig(n_boot=10, recall_threshold=0.7))
    assert m2["recall_threshold"] == {"threshold": 0.7, "source": "explicit",
                                      "text": "threshold 0.7 (given explicitly, not the operating point)"}
    assert m2["operating_point"] == m["operating_point"]  # still recorded beside the override
    inj = df[df["label"] == 1]
    assert sum(r["k"] for r in m2["recall_vs_theta_e"]) == int((inj["score"] >= 0.7).sum())


def test_operating_threshold_without_enough_negatives_is_flagged():
    rows = [{"task_id": f"t{i}", "label": i % 2, "split": "test", "cutout_ok": 1, "theta_e_arcsec": 1.0,
             "score": s} for i, s in enumerate([0.2, 0.6, 0.4, 0.9, 0.7, 0.95])]
    m = compute_metrics(pd.DataFrame(rows), EvalConfig(n_boot=10))
    op, thr = m["operating_point"], m["recall_threshold"]
    assert not op["resolved"] and op["n_negatives"] == 3 and 0.7 < thr["threshold"] < 0.7 + 1e-12
    assert thr["text"].startswith("operating threshold 0.70 (just above all 3 negatives")
    assert [(r["n"], r["k"]) for r in m["recall_vs_theta_e"]] == [(3, 2)]  # 0.9 and 0.95 of 0.6, 0.9, 0.95
    with pytest.raises(ConfigError, match="recall_threshold"):
        EvalConfig(recall_threshold=float("nan"))
    with pytest.raises(ConfigError, match="operating_fprs"):
        EvalConfig(operating_fprs=(1.0,))


def test_paired_gates_by_hand():
    rows = []
    inj = [0.9, 0.8, 0.7, 0.6]
    ctl = [0.1, 0.2, 0.3, 0.95]  # one control outscores every injection
    shf = [0.85, 0.75, 0.65, 0.55]  # each shuffle scores just below its own injection
    for i in range(4):
        for kind, label, s in (("injection", 1, inj[i]), ("control", 0, ctl[i]), ("hardneg_shuffle", 0, shf[i])):
            rows.append({"task_id": f"{kind}{i}", "pair_id": f"p{i}", "kind": kind, "label": label, "split": "test",
                         "cutout_ok": 1, "score": s})
    m = compute_metrics(pd.DataFrame(rows), EvalConfig(n_boot=10))
    g = {x["name"]: x for x in m["leakage_gates"]["gates"]}
    # vs controls: 12 of 16 pairs won (every injection beats 3 controls) -> 0.75 >= 0.70 passes
    assert g["injection_vs_control_auc"]["value"] == 0.75 and g["injection_vs_control_auc"]["pass"] is True
    # vs shuffles: wins 0.9>{all 4}, 0.8>{.75,.65,.55}, 0.7>{.65,.55}, 0.6>{.55} = 10/16 -> fails
    assert g["injection_vs_hardneg_shuffle_auc"]["value"] == 10 / 16
    assert g["injection_vs_hardneg_shuffle_auc"]["pass"] is False
    # no masked scores, no stamps: not computable, and the gate set does not pass
    assert g["core_only_auc"]["pass"] is None and "dhs score --mask outer" in g["core_only_auc"]["reason"]
    assert not m["leakage_gates"]["passes"] and "central_pixels_logreg_auc" in m["leakage_gates"]["not_computable"]


def test_gate_comparisons_inclusive_and_nan_not_pass():
    assert gate("a", 0.70, 0.70, "<=")["pass"] is True
    assert gate("a", 0.7000001, 0.70, "<=")["pass"] is False
    assert gate("b", 0.70, 0.70, ">=")["pass"] is True
    assert gate("b", float("nan"), 0.70, ">=")["pass"] is None


def _ring(n_pix: int, radius_pix: float, fwhm_arcsec: float) -> np.ndarray:
    """Unit-flux ring of ``radius_pix`` convolved with a Gaussian PSF (a stand-in Einstein ring)."""
    from scipy.signal import fftconvolve

    yy, xx = np.mgrid[:n_pix, :n_pix] - (n_pix - 1) / 2
    ring = np.exp(-0.5 * ((np.hypot(yy, xx) - radius_pix) / 0.5) ** 2)
    out = fftconvolve(ring, gaussian_kernel(fwhm_arcsec, PIX), mode="same")
    return out / out.sum()


def _paired_stamps(n_pairs: int, ring_radius_pix: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hosts (PSF-convolved core, sky noise 0.005 nmgy) and their copies with a ring of SNR ~30 added."""
    rng = np.random.default_rng(seed)
    n = 48
    host_shape = _ring(n, 0.0, 1.3)  # a ring of radius 0 is a PSF-like compact host
    ring = _ring(n, ring_radius_pix, 1.0)
    imgs, labels = [], []
    for _ in range(n_pairs):
        host = host_shape * rng.uniform(2, 20, (3, 1, 1))
        for label in (0, 1):
            # ring flux 1.5 nmgy over ~2*pi*r*2 px of noise 0.005: integrated SNR ~ 30
            img = host + label * 1.5 * ring + rng.normal(0, 0.005, (3, n, n))
            imgs.append(img.astype(np.float32))
            labels.append(label)
    return np.stack(imgs), np.array(labels), np.repeat(np.arange(n_pairs), 2).astype(str)


@pytest.mark.parametrize(("ring_radius_pix", "leaks"), [(12.0, False), (2.0, True)])
def test_model_free_central_pixel_gate(ring_radius_pix, leaks):
    # a ring far outside the 5 px core leaves the central pixels unchanged (chance AUC, gate passes);
    # an Einstein ring of 2 px (0.5") lands on the core and a logistic regression finds it (gate fails)
    imgs, y, groups = _paired_stamps(150, ring_radius_pix, seed=1)
    central = CentralPixels(central_pixel_features(normalize_stamps(imgs), 5.0), y, groups)
    auc = central_logreg_auc(central)
    g = gate("central_pixels_logreg_auc", auc, 0.70, "<=")
    assert g["pass"] is (not leaks)
    # no-signal AUC over 300 rows has sd ~0.033 around 0.5: 0.62 is 3.6 sd; the leaky case is ~1
    assert (auc > 0.95) if leaks else (auc < 0.62)


def test_core_masked_and_core_only_gates_from_masked_scores():
    df = binormal_scores(500, {"sersic": 2.0}, seed=5)
    rng = np.random.default_rng(0)
    core_only = df.assign(score=rng.uniform(size=len(df)))  # core alone says nothing: AUC ~0.5
    core_masked = df.copy()  # masking the core changes nothing: drop 0
    m = compute_metrics(df, EvalConfig(n_boot=10), core_only_scores=core_only, core_masked_scores=core_masked)
    g = {x["name"]: x for x in m["leakage_gates"]["gates"]}
    assert g["core_only_auc"]["pass"] is True and g["core_masked_auc_drop"]["value"] == 0.0
    leaky = df.assign(score=df["label"] * 0.5 + rng.uniform(size=len(df)) * 0.6)  # core alone separates
    m2 = compute_metrics(df, EvalConfig(n_boot=10), core_only_scores=leaky,
                         core_masked_scores=df.assign(score=rng.uniform(size=len(df))))
    g2 = {x["name"]: x for x in m2["leakage_gates"]["gates"]}
    assert g2["core_only_auc"]["value"] > 0.9 and g2["core_only_auc"]["pass"] is False
    assert g2["core_masked_auc_drop"]["pass"] is False  # AUC falls from ~0.92 to ~0.5


def test_anchor_block_with_real_lens_scores():
    df = binormal_scores(100, {"sersic": 2.0})
    anchors = pd.DataFrame({"anchor_id": [f"a{i}" for i in range(8)], "label": [1, 1, 1, 1, 0, 0, 0, 0],
                            "score": [0.9, 0.8, 0.6, 0.3, 0.1, 0.2, 0.55, np.nan]})
    a = compute_metrics(df, EvalConfig(n_boot=10, anchor_threshold=0.5), anchor_scores=anchors)["anchor_gate"]
    assert a["available"] and a["n_skipped_no_score"] == 1
    assert (a["n_known_lenses"], a["n_recovered_at_0p5"], a["n_hard_negatives"], a["n_contaminated_at_0p5"]) == (4, 3, 3, 1)
    assert a["tpr0"]["value"] == 0.75  # above the top negative 0.55: 0.9, 0.8, 0.6
    assert a["tpr10"]["resolved"] is False  # 3 negatives cannot leave 10 false positives
    assert a["recall_at_synthetic_fpr_0.001"]["n_neg"] == 200
    assert a["threshold"] == 0.5 and a["threshold_source"] == "explicit" and a["operating_point"] is None


def test_anchor_gate_runs_at_the_operating_threshold_of_the_synthetic_negatives():
    df = binormal_scores(100, {"sersic": 2.0})  # 200 synthetic negatives: FPR 1e-2 -> 2 above the threshold
    neg = np.sort(df.loc[df["label"] == 0, "score"].to_numpy())[::-1]
    t = float(np.nextafter(neg[2], np.inf))
    anchors = pd.DataFrame({"anchor_id": [f"a{i}" for i in range(6)], "label": [1, 1, 1, 0, 0, 0],
                            "score": [neg[0], t, neg[2], 0.99999, neg[2], 0.1]})
    a = compute_metrics(df, EvalConfig(n_boot=10), anchor_scores=anchors)["anchor_gate"]
    assert a["threshold_source"] == "operating_point" and a["threshold"] == t
    assert a["operating_point"]["fpr_target"] == 1e-2 and a["operating_point"]["n_negatives"] == 200
    # found = score >= t: neg[0] and t are, neg[2] (the cut itself) is not
    assert (a["n_recovered_at_threshold"], a["n_contaminated_at_threshold"]) == (2, 1)
    assert (a["n_recovered_at_0p5"], a["recovery_rate"]) == (2, 2 / 3)
    assert a["threshold_text"].endswith("(FPR 1e-2 on 200 negatives)")
    # no synthetic negatives and no explicit threshold: said, not guessed
    pos_only = df[df["label"] == 1]
    b = compute_metrics(pos_only, EvalConfig(n_boot=10), anchor_scores=anchors)["anchor_gate"]
    assert not b["available"] and "--anchor-threshold" in b["reason"]


def _write_dataset(path, table: pa.Table):
    path.mkdir(parents=True)
    pq.write_table(table, path / "part-00000.parquet")
    (path / "_manifest.json").write_text(json.dumps({"stage": "test", "files": ["part-00000.parquet"]}))


def test_main_writes_metrics_plots_and_report(tmp_path):
    import torch

    from jobs.evaluation.evaluate import main
    from jobs.evaluation.score import score_table
    from jobs.runtime.schema import STAMP_SCHEMA, encode_image
    from jobs.training.model import ModelConfig, build_model, save_checkpoint

    imgs, y, groups = _paired_stamps(40, 12.0, seed=2)
    rows = [{"task_id": f"t{i}", "pair_id": f"p{groups[i]}", "kind": ("control", "injection")[y[i]],
             "label": int(y[i]), "split": "test", "source_mode": "hybrid", "artifact_profile": "none",
             "theta_e_arcsec": 3.1, "arc_snr": 30.0, "cutout_ok": 1, "image": encode_image(imgs[i]),
             "image_shape": [3, 48, 48]} for i in range(len(y))]
    stamps = pa.Table.from_pylist(rows, schema=STAMP_SCHEMA)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = build_model(ModelConfig(width=4)).eval()
    save_checkpoint(str(tmp_path / "m.pt"), model, ModelConfig(width=4))
    _write_dataset(tmp_path / "stamps", stamps)
    _write_dataset(tmp_path / "scores", score_table(stamps, model))
    out = tmp_path / "report"
    rc = main(["--scores", str(tmp_path / "scores"), "--stamps", str(tmp_path / "stamps"), "--checkpoint",
               str(tmp_path / "m.pt"), "--out", str(out), "--n-boot", "20", "--gallery-size", "4"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("auc", "tpr_at_fpr", "by_source_mode", "by_artifact_profile", "leakage_gates", "anchor_gate"):
        assert key in m
    g = {x["name"]: x for x in m["leakage_gates"]["gates"]}
    # masked scoring and the central-pixel check ran from --stamps / --checkpoint
    assert g["core_only_auc"]["value"] is not None and g["central_pixels_logreg_auc"]["value"] is not None
    html = (out / "report.html").read_text()
    assert m["recall_threshold"]["source"] == "operating_point" and m["operating_point"]["n_negatives"] == 40
    assert m["recall_threshold"]["text"] in html and "just above all 40 negatives" in html
    assert len(m["plots"]) == 6
    for name in m["plots"]:
        assert (out / name).stat().st_size > 1000 and f'href="{name}"' in html


def test_main_explicit_thresholds_are_used_and_said(tmp_path):
    from jobs.evaluation.evaluate import main

    df = binormal_scores(60, {"sersic": 2.0}, seed=6)
    _write_dataset(tmp_path / "scores", pa.Table.from_pandas(df, preserve_index=False))
    anchors = pd.DataFrame({"anchor_id": ["a0", "a1", "a2", "a3"], "label": [1, 1, 0, 0], "score": [0.9, 0.3, 0.5, 0.1]})
    _write_dataset(tmp_path / "anchors", pa.Table.from_pandas(anchors, preserve_index=False))
    out = tmp_path / "report"
    assert main(["--scores", str(tmp_path / "scores"), "--anchor-scores", str(tmp_path / "anchors"), "--out", str(out),
                 "--n-boot", "10", "--recall-threshold", "0.5", "--anchor-threshold", "0.4"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["recall_threshold"] == 0.5 and m["recall_threshold"]["source"] == "explicit"
    assert m["anchor_gate"]["threshold"] == 0.4 and m["anchor_gate"]["threshold_source"] == "explicit"
    assert (m["anchor_gate"]["n_recovered_at_threshold"], m["anchor_gate"]["n_contaminated_at_threshold"]) == (1, 1)
    html = (out / "report.html").read_text()
    assert "threshold 0.5 (given explicitly" in html and "threshold 0.4 (given explicitly" in html


def test_help_exits_cleanly(capsys):
    from jobs.evaluation.evaluate import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and "--anchor-scores" in capsys.readouterr().out


def test_core_gates_use_only_arcs_clear_of_the_core():
    import numpy as np
    import pandas as pd

    from jobs.evaluation.evaluate import EvalConfig
    from jobs.evaluation.gates import arc_clear_theta_e, leakage_gates

    cfg = EvalConfig()
    limit = arc_clear_theta_e(cfg.core_radius_pix)
    assert limit == pytest.approx(cfg.core_radius_pix * 0.262 + 0.65)
    rng = np.random.default_rng(1)
    n = 400
    labels = np.tile([0, 1], n // 2)
    small = np.full(n, limit - 0.5)   # arc light physically inside the core
    large = np.full(n, limit + 0.5)   # arcs clear of the core
    separating = labels + 0.01 * rng.standard_normal(n)
    random = rng.random(n)
    # the core separates only where the arc is inside it: the gate passes
    core = pd.DataFrame({"score": np.r_[separating, random], "label": np.r_[labels, labels],
                         "theta_e_arcsec": np.r_[small, large]})
    g = {x["name"]: x for x in leakage_gates(pd.DataFrame(), cfg, None, core, None, None)["gates"]}
    assert g["core_only_auc"]["pass"] is True and g["core_only_auc"]["n"] == n
    # the core separates where no arc light should reach it: a shortcut, the gate fails
    core["score"] = np.r_[random, separating]
    g = {x["name"]: x for x in leakage_gates(pd.DataFrame(), cfg, None, core, None, None)["gates"]}
    assert g["core_only_auc"]["pass"] is False
