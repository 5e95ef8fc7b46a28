"""``dhs ablate``: suite resolution, paired deltas against analytic values, uber weights, the comparison
files, skip/redo bookkeeping, and (slow) a tiny suite end to end with a bit-identical re-evaluation."""

from __future__ import annotations

import json
import math
import os
import pickle
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from scipy import stats
from sklearn.metrics import roc_auc_score

from dhs_gen.errors import ConfigError
from jobs.experiments import ablate, ablate_report
from jobs.experiments.ablate import VariantState, write_test_split
from jobs.experiments.ablate_report import build_comparison, delta_block, write_outputs
from jobs.experiments.ablate_suite import check_comparable, load_suite, resolve_variant, scale_settings
from jobs.runtime import outputs
from jobs.runtime.config import load_config

TINY_SCALE = {"n_bricks": 4, "n_lrg": 5, "size_pix": 400, "epochs": 1, "partitions": 2, "n_boot": 20,
              "train": {"batch_size": 16, "model": {"width": 4}}}


def write_suite(path, variants: dict, baseline: str, scales=None, **extra) -> str:
    data = {"name": path.stem, "baseline": baseline, "seed": 0, "variants": variants,
            "common_overrides": {"n_replicates": 1, "hardneg_shuffle": True, "lens": {"theta_e_arcsec": [1.2, 1.8]}},
            "scales": scales or {"tiny": TINY_SCALE}, **extra}
    path.write_text(yaml.safe_dump(data))
    return str(path)


def resolved(suite, scale="demo", banks=None, mix=None):
    s = scale_settings(suite, scale)
    return {v.name: resolve_variant(suite, v, s, banks, mix) for v in suite.variants}


# --------------------------------------------------------------------------- suites


def test_gen7_and_gen8_suites_isolate_one_knob():
    r = resolved(load_suite("gen7"))
    got = {n: (c.source.mode, c.source.hybrid_clumps, c.source.hybrid_gradient) for n, (c, _, _) in r.items()}
    # the seed's ablation: 7a Sersic only, 7b + clumps, 7c + clumps + colour gradient
    assert got == {"gen7a": ("hybrid", False, 0.0), "gen7b": ("hybrid", True, 0.0), "gen7c": ("hybrid", True, 0.15)}
    check_comparable({n: c for n, (c, _, _) in r.items()})
    # everything else equal: configs differ only in name/generation/description and the source knobs
    dicts = {n: c.to_dict() for n, (c, _, _) in r.items()}
    for d in dicts.values():
        for k in ("name", "generation", "description"):
            d.pop(k)
        d["source"].pop("hybrid_clumps"), d["source"].pop("hybrid_gradient")
    assert dicts["gen7a"] == dicts["gen7b"] == dicts["gen7c"]
    assert len({json.dumps(t.to_dict(), sort_keys=True) for _, t, _ in r.values()}) == 1  # same training
    g8 = resolved(load_suite("gen8"))
    assert {n: c.artifact_profile for n, (c, _, _) in g8.items()} == {"gen8a": "none", "gen8b": "mild", "gen8c": "strong"}
    assert load_suite("gen8").baseline == "gen8a" and load_suite("gen7").baseline == "gen7a"


def test_gen5prime_suite_components_and_cosmos_fallback():
    suite = load_suite("gen5prime")
    r = resolved(suite)
    arms = {n: (c.paired_controls, c.hardneg_shuffle, t.core_dropout_p, c.source.mode) for n, (c, t, _) in r.items()}
    assert arms == {"gen5": (False, False, 0.0, "hybrid"), "paired": (True, False, 0.0, "hybrid"),
                    "hardneg": (False, True, 0.0, "hybrid"), "core_dropout": (False, False, 0.5, "hybrid"),
                    "gen5prime": (True, True, 0.5, "hybrid")}
    assert all("no cosmos bank" in note for _, _, note in r.values())  # said, not silent
    with_bank = resolved(suite, banks={"cosmos": "/banks/cosmos.h5"})
    assert {c.source.mode for c, _, _ in with_bank.values()} == {"cosmos"}
    assert {c.source.cosmos_bank for c, _, _ in with_bank.values()} == {"/banks/cosmos.h5"}


def test_gen6_suite_changes_only_the_source_mode():
    suite = load_suite("gen6")
    banks = {"cosmos": "/banks/cosmos.h5", "deep": "/banks/deep.npz"}
    r = resolved(suite, banks=banks)
    # one arm per source mode of the Uber mixer: the analytic Sersic, Gen7 hybrids, COSMOS and deep templates
    assert {n: c.source.mode for n, (c, _, _) in r.items()} == {"hybrid": "hybrid", "sersic": "sersic", "cosmos": "cosmos",
                                                                "deep": "deep"}
    assert (r["cosmos"][0].source.cosmos_bank, r["deep"][0].source.deep_bank) == (banks["cosmos"], banks["deep"])
    check_comparable({n: c for n, (c, _, _) in r.items()})
    same = {(c.psf_model, c.paired_controls, c.hardneg_shuffle, c.artifact_profile, c.lens) for c, _, _ in r.values()}
    assert len(same) == 1
    no_data = resolved(suite)   # no banks: the bank arms say they fell back to hybrid sources
    assert "no deep bank" in no_data["deep"][2] and no_data["deep"][0].source.mode == "hybrid"


def test_full_scale_documented_in_every_suite():
    for name in ("gen6", "gen7", "gen8", "gen5prime", "uber"):
        full = scale_settings(load_suite(name), "full")
        assert full["parent"].startswith("s3://") and full["coadds"].startswith("s3://")
        assert full["train"]["device"] == "cuda" and full["master"] is None
    assert "--scale full" in ablate.__doc__ and "$" in ablate.__doc__  # commands and cost


def test_bad_suites_fail_with_the_field_and_value(tmp_path):
    ok = {"a": {"preset": "gen7a"}, "b": {"preset": "gen7b"}}
    with pytest.raises(ConfigError, match="baseline") as err:
        load_suite(write_suite(tmp_path / "s1.yaml", ok, "zzz"))
    assert pickle.loads(pickle.dumps(err.value)).value == "zzz"
    with pytest.raises(ConfigError, match="at least two"):
        load_suite(write_suite(tmp_path / "s2.yaml", {"a": {"preset": "gen7a"}}, "a"))
    with pytest.raises(ConfigError, match="suite.colour"):
        load_suite(write_suite(tmp_path / "s3.yaml", ok, "a", colour=1))
    with pytest.raises(ConfigError, match="scales.tiny.n_lrgs"):
        scale_settings(load_suite(write_suite(tmp_path / "s4.yaml", ok, "a", scales={"tiny": {"n_lrgs": 3}})), "tiny")
    with pytest.raises(ConfigError, match="--scale"):
        scale_settings(load_suite(write_suite(tmp_path / "s5.yaml", ok, "a")), "huge")
    # a variant with its own theta_E grid would not be comparable: refused before any work
    bad = {"a": {"preset": "gen7a"}, "b": {"preset": "gen7b", "overrides": {"lens": {"theta_e_arcsec": [2.0]}}}}
    suite = load_suite(write_suite(tmp_path / "s6.yaml", bad, "a"))
    with pytest.raises(ConfigError, match="variants.b.lens.theta_e_arcsec"):
        check_comparable({n: c for n, (c, _, _) in resolved(suite, "tiny").items()})
    assert ablate.main(["--suite", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2


# --------------------------------------------------------------------------- paired deltas


def paired_binormal(n_pos: int, n_neg: int, d_a: float, d_b: float, seed: int = 1):
    """Model b = model a with its positives' logits shifted by d_b - d_a: AUC_x = Phi(d_x / sqrt 2) exactly."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    la = rng.normal(0, 1, y.size) + d_a * y
    lb = la + (d_b - d_a) * y
    ids = [f"t{i:05d}" for i in range(y.size)]
    return (pd.DataFrame({"id": ids, "score": 1 / (1 + np.exp(-la)), "label": y}),
            pd.DataFrame({"id": ids, "score": 1 / (1 + np.exp(-lb)), "label": y}))


def test_paired_delta_matches_binormal_and_is_paired():
    d_a, d_b = 1.0, 1.3
    a, b = paired_binormal(3000, 3000, d_a, d_b)
    out = delta_block(ablate_report.TEST_METRICS, a, b.sample(frac=1.0, random_state=3), n_boot=200, seed_key="x")
    truth = stats.norm.cdf(d_b / math.sqrt(2)) - stats.norm.cdf(d_a / math.sqrt(2))
    auc = out["auc"]
    # point estimates are the sample AUCs (sklearn as the oracle), whatever the row order of b
    assert auc["baseline"] == pytest.approx(roc_auc_score(a["label"], a["score"]), abs=1e-12)
    assert auc["variant"] == pytest.approx(roc_auc_score(b["label"], b["score"]), abs=1e-12)
    # 95 % CI covers the analytic delta (fails ~5 % of seeds; this seed is fixed)
    assert auc["ci95"][0] < truth < auc["ci95"][1]
    # Pairing: the shared row noise cancels, so the delta CI is far narrower than the spread of the
    # difference of two independent AUCs, sqrt(2) * sd(AUC) (Hanley-McNeil sd at n=3000 each: ~0.006)
    sd_auc = np.std([roc_auc_score(*_resample(a, s)) for s in range(100)])
    assert auc["ci95"][1] - auc["ci95"][0] < 0.5 * 2 * 1.96 * math.sqrt(2) * sd_auc
    # TPR at FPR 1e-4 needs >= 10,000 negatives: reported as not resolved, never as a number
    assert out["tpr_at_fpr_0.0001"]["delta"] is None and out["tpr_at_fpr_0.01"]["delta"] > 0
    same = delta_block({"auc": ablate_report.TEST_METRICS["auc"]}, a, a, n_boot=50, seed_key="y")["auc"]
    assert same["delta"] == 0.0 and same["ci95"] == [0.0, 0.0]


def _resample(df, seed):
    i = np.random.default_rng(seed).integers(0, len(df), len(df))
    return df["label"].to_numpy()[i], df["score"].to_numpy()[i]


def test_paired_rows_refuse_label_mismatch():
    a, b = paired_binormal(5, 5, 1.0, 1.0)
    b.loc[0, "label"] = 0
    with pytest.raises(ConfigError, match="labels"):
        ablate_report.paired_rows(a, b)


# --------------------------------------------------------------------------- files and bookkeeping


def commit_table(table: pa.Table, uri) -> str:
    outputs.prepare_output(str(uri), overwrite=True)
    rep = outputs.write_attempt(table, str(uri), "t", 0, "0")
    outputs.commit(str(uri), "t", [rep], outputs.build_manifest("test", {}, {}, table.num_rows, table.num_rows, 0,
                                                                 {}, {}))
    return str(uri)


def test_write_test_split_keeps_only_test_rows(tmp_path):
    t = pa.table({"task_id": [f"r{i}" for i in range(6)], "split": ["train", "test", "val", "test", "test", "train"]})
    src = commit_table(t, tmp_path / "stamps")
    m = write_test_split(src, str(tmp_path / "test"))
    got = outputs.dataset_files(str(tmp_path / "test"))
    assert m["rows_written"] == 3 and pa.concat_tables([pa.parquet.read_table(f) for f in got]).column(
        "task_id").to_pylist() == ["r1", "r3", "r4"]
    with pytest.raises(ConfigError, match="no test rows"):
        write_test_split(commit_table(t.slice(0, 1), tmp_path / "s2"), str(tmp_path / "t2"))


def test_variant_state_skips_matching_and_redoes_changed(tmp_path):
    best, stamps = tmp_path / "v" / "model" / "best.pt", tmp_path / "v" / "stamps"
    st = VariantState(tmp_path, "v", "d1", "m1", {"variant": "v"})
    best.parent.mkdir()
    best.write_text("x")
    stamps.mkdir()
    assert not st.done("model", best)
    st.mark("stamps")
    st.mark("model")
    assert VariantState(tmp_path, "v", "d1", "m1", {}).done("model", best)
    retrain = VariantState(tmp_path, "v", "d1", "m2", {})  # training changed: stamps kept, model redone
    assert retrain.done("stamps", stamps) and not retrain.done("model", best)
    again = VariantState(tmp_path, "v", "d2", "m2", {})  # experiment changed: the old outputs go
    assert not again.done("stamps", stamps) and not stamps.exists()


def test_comparison_from_score_datasets(tmp_path):
    """build_comparison on hand-made score datasets: matrix = sklearn AUCs, deltas, strict JSON, HTML plots."""
    from dhs_gen.json_values import json_safe
    from jobs.evaluation.evaluate import EvalConfig, compute_metrics

    class S:  # the suite fields build_comparison reads
        name, description, baseline, seed = "t", "d", "a", 0
        variants = [type("V", (), {"name": n, "preset": "gen7a"}) for n in ("a", "b")]

    d = {"a": 1.0, "b": 1.5}
    for m in d:
        for t_i, t in enumerate(d):
            a_df, b_df = paired_binormal(40, 80, d["a"], d["b"], seed=10 + t_i)
            df = (a_df if m == "a" else b_df).rename(columns={"id": "task_id"}).assign(split="test", cutout_ok=1)
            commit_table(pa.Table.from_pandas(df, preserve_index=False), tmp_path / m / "scores" / t)
        anc = paired_binormal(6, 50, 0.5, 2.0, seed=7)[0 if m == "a" else 1].rename(columns={"id": "anchor_id"})
        commit_table(pa.Table.from_pandas(anc, preserve_index=False), tmp_path / m / "anchor_scores")
        own = pd.read_parquet(outputs.dataset_files(str(tmp_path / m / "scores" / m))[0])
        (tmp_path / m / "eval").mkdir()
        metrics = compute_metrics(own, EvalConfig(n_boot=20), anchor_scores=anc)
        (tmp_path / m / "eval" / "metrics.json").write_text(json.dumps(json_safe(metrics)))
    c = build_comparison(S, tmp_path, True, 50, {}, {})
    assert c["matrix"]["test_sets"] == ["a", "b", "anchors"] and list(c["deltas"]) == ["b"]
    for i, m in enumerate("ab"):
        for j, t in enumerate("ab"):
            df = pd.read_parquet(outputs.dataset_files(str(tmp_path / m / "scores" / t))[0])
            assert c["matrix"]["auc"][i][j] == pytest.approx(roc_auc_score(df["label"], df["score"]), abs=1e-12)
    assert c["metrics"]["a"]["auc"] == pytest.approx(c["matrix"]["auc"][0][0], abs=1e-12)
    assert c["deltas"]["b"]["test_sets"]["a"]["auc"]["delta"] == pytest.approx(
        c["matrix"]["auc"][1][0] - c["matrix"]["auc"][0][0], abs=1e-12)
    assert c["deltas"]["b"]["anchors"]["auroc"]["delta"] > 0
    assert set(c["metrics"]["a"]["by_source_mode"]) == set() and c["metrics"]["a"]["anchor"]["available"]
    paths = write_outputs(c, tmp_path)
    json.loads(open(paths["json"]).read())
    page = open(paths["html"]).read()
    assert page.count("data:image/png;base64,") == 2 and "<td><b>a</b> (baseline)</td>" in page


# --------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_tiny_suite_end_to_end_and_rerun_is_bit_identical(spark, tmp_path, shared_data):
    """Two Gen8 arms on a tiny sky: layout, same test rows for both, matrix vs sklearn, then a re-run that
    skips every stage and reproduces comparison.json to the last digit, and a changed arm redone alone."""
    variants = {"a": {"preset": "gen8a"}, "b": {"preset": "gen8c"}}
    weights = {"artifact": {"comparison": "self", "components": {"none": "a", "strong": "b"}}}
    path = write_suite(tmp_path / "tiny.yaml", variants, "a", weights_from=weights)
    out = tmp_path / "run"
    c1 = ablate.run_suite(load_suite(path), "tiny", str(out), spark=spark, shared=shared_data)
    assert c1["variants"] == ["a", "b"] and c1["matrix"]["test_sets"] == ["a", "b", "anchors"]
    # the suite weighs the artifact mix by its own arms' anchor AUROC and CI, and says how
    preset = load_config(str(out / "uber_from_ablations.yaml"))
    part = preset.notes["parts"]["artifact"]
    for arm, v in (("none", "a"), ("strong", "b")):
        ci = c1["metrics"][v]["anchor"]["auroc_ci95"]
        assert part["evidence"][arm]["ci95"] == ci and ci[0] <= c1["metrics"][v]["anchor"]["auroc_anchor"] <= ci[1]
    assert part["decision"] in ("weighted", "fallback") and part["reason"]
    assert preset.artifact_mix == pytest.approx([part["weights"].get(a, 0.0) for a in ("none", "mild", "strong")])
    ids = {v: set(pd.concat(pd.read_parquet(f, columns=["task_id"]) for f in
                            outputs.dataset_files(str(out / v / "test_stamps")))["task_id"]) for v in "ab"}
    assert ids["a"] == ids["b"] and ids["a"]  # same hosts, bricks, grid, replicates -> same test task ids
    for i, m in enumerate("ab"):
        for j, t in enumerate("ab"):
            df = ablate_report.read_scores(out / m / "scores" / t)
            assert c1["matrix"]["auc"][i][j] == pytest.approx(roc_auc_score(df["label"], df["score"]), abs=1e-12)
    model_mtime = {v: os.path.getmtime(out / v / "model" / "best.pt") for v in "ab"}
    first_scores = ablate_report.read_scores(out / "a" / "scores" / "b")
    time.sleep(1)
    c2 = ablate.run_suite(load_suite(path), "tiny", str(out), spark=spark, shared=shared_data, re_evaluate=True)
    assert {v: os.path.getmtime(out / v / "model" / "best.pt") for v in "ab"} == model_mtime  # nothing retrained
    for key in ("metrics", "matrix", "deltas"):
        assert json.dumps(c2[key], sort_keys=True) == json.dumps(c1[key], sort_keys=True)
    stamps_mtime = os.path.getmtime(out / "b" / "stamps" / "_manifest.json")
    variants["b"]["train_overrides"] = {"lr": 1e-3}  # a training change: b retrained on its kept stamps
    state = json.loads((out / "a" / "variant.json").read_text())
    del state["scores"]["b"]  # and model a re-scored on test set b: must give the same bytes
    (out / "a" / "variant.json").write_text(json.dumps(state))
    c3 = ablate.run_suite(load_suite(write_suite(tmp_path / "tiny.yaml", variants, "a")), "tiny", str(out),
                          spark=spark, shared=shared_data)
    assert os.path.getmtime(out / "a" / "model" / "best.pt") == model_mtime["a"]
    assert os.path.getmtime(out / "b" / "model" / "best.pt") > model_mtime["b"]
    assert os.path.getmtime(out / "b" / "stamps" / "_manifest.json") == stamps_mtime
    assert c3["matrix"]["auc"][0] == c1["matrix"]["auc"][0]  # model a on every test set: unchanged
    assert ablate_report.read_scores(out / "a" / "scores" / "b").equals(first_scores)


@pytest.mark.slow
def test_gen7_demo_scale_runs_under_15_minutes(spark, tmp_path):
    t0 = time.perf_counter()
    c = ablate.run_suite(load_suite("gen7"), "demo", str(tmp_path / "gen7"), spark=spark)
    assert time.perf_counter() - t0 < 15 * 60
    assert set(c["deltas"]) == {"gen7b", "gen7c"} and (tmp_path / "gen7" / "comparison.html").is_file()
