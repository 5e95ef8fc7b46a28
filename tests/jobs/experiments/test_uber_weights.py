"""Uber weights from the ablations: the rule, the explicit fallback, and uber_from_ablations.yaml as a runnable preset."""

from __future__ import annotations

import json

import pytest
import yaml

from dhs_gen.errors import ConfigError
from jobs.experiments.ablate_suite import check_comparable, load_suite, resolve_variant, scale_settings
from jobs.experiments.uber_weights import (
    decide,
    mix_overrides,
    seed_default_weights,
    uber_from_ablations,
    uber_weights,
    write_uber_preset,
)
from jobs.runtime.config import load_config, read_config_dict


def fake_comparison(anchor: dict, cis: dict | None = None, banks: dict | None = None) -> dict:
    """A comparison.json with each arm's anchor AUROC and its 95 % CI."""
    names = list(anchor)
    cis = cis or {}
    return {"variants": names, "provenance": {"banks": banks or {}},
            "metrics": {v: {"auc": 0.8, "auc_ci95": [0.75, 0.85],
                            "anchor": {"auroc_anchor": anchor[v], "auroc_ci95": cis.get(v)}} for v in names},
            "matrix": {"models": names, "test_sets": names + ["anchors"],
                       "auc": [[0.8] * len(names) + [anchor[v]] for v in names]}}


def test_weight_rule_is_skill_above_chance_with_a_floor():
    assert uber_weights({"none": 0.9, "mild": 0.7, "strong": 0.3}) == pytest.approx(
        {"none": 0.4 / 0.61, "mild": 0.2 / 0.61, "strong": 0.01 / 0.61}, abs=1e-6)


def test_separated_arms_are_weighted_and_the_evidence_is_kept():
    comp = fake_comparison({"a": 0.95, "b": 0.7, "c": 0.6}, {"a": [0.9, 0.99], "b": [0.6, 0.8], "c": [0.5, 0.7]})
    d = decide("artifact", comp, {"none": "a", "mild": "b", "strong": "c"}, "anchor_auroc", 0.5, 0.01)
    assert d["decision"] == "weighted"
    assert d["weights"] == pytest.approx({"none": 0.45 / 0.75, "mild": 0.2 / 0.75, "strong": 0.1 / 0.75}, abs=1e-6)
    assert d["evidence"]["none"] == {"variant": "a", "anchor_auroc": 0.95, "ci95": [0.9, 0.99]}


@pytest.mark.parametrize("anchor,cis,reason", [
    ({"a": 0.9, "b": 0.7}, {"a": [0.6, 1.0], "b": [0.5, 0.9]}, "overlap"),                  # CIs overlap
    ({"a": 0.45, "b": 0.3}, {"a": [0.4, 0.5], "b": [0.2, 0.35]}, "below chance"),          # no arm above chance
    ({"a": None, "b": None}, {}, "no anchor_auroc"),                                        # no anchor set
    ({"a": 0.9, "b": 0.6}, {}, "no 95 % CI"),
])
def test_inseparable_arms_fall_back_to_the_seed_defaults_and_say_why(anchor, cis, reason):
    d = decide("source", fake_comparison(anchor, cis), {"cosmos": "a", "sersic": "b"}, "anchor_auroc", 0.5, 0.01)
    assert d["decision"] == "fallback" and reason in d["reason"]
    # the seed's default source mix is cosmos/deep/hybrid 0.34/0.33/0.33: sersic is not in it
    assert d["weights"] == {"cosmos": 1.0, "sersic": 0.0} and "configs/uber.yaml" in d["fallback"]


def test_seed_defaults_come_from_the_uber_preset():
    uber = read_config_dict("uber")
    assert seed_default_weights("artifact", ("none", "mild", "strong")) == pytest.approx(
        dict(zip(("none", "mild", "strong"), uber["artifact_mix"], strict=True)))
    w = seed_default_weights("source", ("sersic", "hybrid", "cosmos", "deep"))
    assert w == pytest.approx({"sersic": 0.0, "hybrid": 0.33, "cosmos": 0.34, "deep": 0.33})


def write_comparisons(root, source_cis, artifact_cis):
    (root / "gen6").mkdir(parents=True)
    (root / "gen8").mkdir()
    banks = {"cosmos": "/banks/cosmos.h5", "deep": "/banks/deep.npz"}
    (root / "gen6" / "comparison.json").write_text(json.dumps(fake_comparison(
        {"sersic": 0.6, "hybrid": 0.7, "cosmos": 0.9, "deep": 0.8}, source_cis, banks)))
    (root / "gen8" / "comparison.json").write_text(json.dumps(fake_comparison(
        {"gen8a": 0.7, "gen8b": 0.9, "gen8c": 0.7}, artifact_cis)))


def test_uber_suite_needs_the_ablations_first_then_weights_its_arm(tmp_path):
    suite = load_suite("uber")
    with pytest.raises(ConfigError, match="run that ablation suite first"):
        uber_from_ablations(suite.weights_from, tmp_path / "uber", require=True)
    write_comparisons(tmp_path, {"sersic": [0.55, 0.65], "hybrid": [0.66, 0.74], "cosmos": [0.85, 0.95],
                                 "deep": [0.75, 0.84]},
                      {"gen8a": [0.5, 0.9], "gen8b": [0.7, 1.0], "gen8c": [0.5, 0.9]})
    result = uber_from_ablations(suite.weights_from, tmp_path / "uber", require=True)
    assert result["parts"]["source"]["decision"] == "weighted"
    assert result["parts"]["artifact"]["decision"] == "fallback"   # every artifact CI overlaps: the seed's 0.15/0.70/0.15
    s = scale_settings(suite, "demo")
    r = {v.name: resolve_variant(suite, v, s, None, mix_overrides(result)) for v in suite.variants}
    cfg = r["uber_ablation"][0]
    assert cfg.source.mix_modes == ("sersic", "hybrid", "cosmos", "deep")
    assert cfg.source.mix_probs == pytest.approx((0.1 / 1.0, 0.2, 0.4, 0.3))        # 0.1, 0.2, 0.4, 0.3 above chance
    assert (cfg.source.cosmos_bank, cfg.source.deep_bank) == ("/banks/cosmos.h5", "/banks/deep.npz")
    assert cfg.artifact_mix == pytest.approx((0.15, 0.70, 0.15))
    check_comparable({n: c for n, (c, _, _) in r.items()})


def test_written_preset_runs_as_a_manifest_config_and_carries_rule_and_evidence(tmp_path):
    write_comparisons(tmp_path, {"sersic": [0.55, 0.65], "hybrid": [0.66, 0.74], "cosmos": [0.85, 0.95],
                                 "deep": [0.75, 0.84]}, {"gen8a": [0.6, 0.75], "gen8b": [0.85, 0.95], "gen8c": [0.6, 0.75]})
    root = tmp_path / "gen8"
    result = uber_from_ablations(load_suite("gen8").weights_from, root)
    path = write_uber_preset(result, root, "gen8")
    text = open(path).read()
    assert text.startswith("# Uber preset from the ablations") and "weighted" in text
    cfg = load_config(path)          # what `dhs manifest --config <path>` loads
    assert cfg.source.mode == "mix" and cfg.source.mix_probs == pytest.approx((0.1, 0.2, 0.4, 0.3))
    assert cfg.artifact_mix == pytest.approx((0.2 / 0.8, 0.4 / 0.8, 0.2 / 0.8))
    notes = cfg.notes
    assert "w ∝ max(m - 0.5, 0.01)" in notes["rule"]
    assert notes["parts"]["artifact"]["evidence"]["mild"] == {"variant": "gen8b", "anchor_auroc": 0.9, "ci95": [0.85, 0.95]}
    assert yaml.safe_load(text)["extends"] == "uber"


def test_a_suite_without_its_sibling_writes_the_fallback_for_that_part(tmp_path):
    root = tmp_path / "gen6"
    root.mkdir()
    (root / "comparison.json").write_text(json.dumps(fake_comparison(
        {"sersic": 0.6, "hybrid": 0.7, "cosmos": 0.9, "deep": 0.8},
        {"sersic": [0.5, 0.7], "hybrid": [0.6, 0.8], "cosmos": [0.8, 1.0], "deep": [0.7, 0.9]})))
    result = uber_from_ablations(load_suite("gen6").weights_from, root)
    assert result["parts"]["source"]["decision"] == "weighted"      # sersic [0.5, 0.7] vs cosmos [0.8, 1.0]
    art = result["parts"]["artifact"]
    assert art["decision"] == "fallback" and "not found" in art["reason"]
    assert art["weights"] == pytest.approx({"none": 0.15, "mild": 0.70, "strong": 0.15})


def test_a_source_without_a_bank_is_left_out_and_said(tmp_path):
    """A suite that weighs only artifacts, with no banks: the seed's source mix needs COSMOS and deep banks,
    so those are left out (hybrid alone remains), the file says so, and the preset still loads."""
    root = tmp_path / "gen8"
    root.mkdir()
    (root / "comparison.json").write_text(json.dumps(fake_comparison(
        {"gen8a": 0.7, "gen8b": 0.9, "gen8c": 0.7}, {"gen8a": [0.6, 0.75], "gen8b": [0.85, 0.95], "gen8c": [0.6, 0.75]})))
    weights_from = {"artifact": {"comparison": "self", "components": {"none": "gen8a", "mild": "gen8b", "strong": "gen8c"}}}
    result = uber_from_ablations(weights_from, root)
    assert result["parts"]["source"]["decision"] == "fallback" and "names no source" in result["parts"]["source"]["reason"]
    text = open(write_uber_preset(result, root, "gen8")).read()
    cfg = load_config(str(root / "uber_from_ablations.yaml"))
    assert cfg.source.mix_modes == ("hybrid",) and cfg.notes["parts"]["source"]["dropped_no_bank"] == ["cosmos", "deep"]
    assert "# cosmos has weight but no bank was known" in text
    with_banks = mix_overrides(result, {"cosmos": "/b/c.h5", "deep": "/b/d.npz"})
    assert with_banks["source"]["mix_modes"] == ["hybrid", "cosmos", "deep"]


@pytest.mark.parametrize("weights_from,field", [
    ({"source": {"comparison": "self", "components": {"sersic": "a"}}}, "weights_from.source.components"),
    ({"source": {"comparison": "self", "components": {"sersik": "a", "hybrid": "b"}}}, "components.sersik"),
    ({"artifact": {"comparison": "self", "components": {"none": "a", "mild": "b"}, "metric": "mean_auc"}},
     "weights_from.artifact.metric"),
    ({"source": {"components": {"sersic": "a", "hybrid": "b"}}}, "weights_from.source"),
    ({"chance": "x"}, "weights_from.chance"),
])
def test_a_malformed_weights_from_fails_when_the_suite_loads(weights_from, field, tmp_path):
    suite = {"name": "s", "baseline": "a", "seed": 0, "variants": {"a": {"preset": "gen8a"}, "b": {"preset": "gen8b"}},
             "scales": {"demo": {}}, "weights_from": weights_from}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(suite))
    with pytest.raises(ConfigError, match=field):
        load_suite(str(path))


def test_a_ci_that_is_not_two_numbers_is_no_evidence():
    comp = fake_comparison({"a": 0.95, "b": 0.6}, {"a": [0.9], "b": [0.5, 0.7]})
    d = decide("source", comp, {"hybrid": "a", "sersic": "b"}, "anchor_auroc", 0.5, 0.01)
    assert d["decision"] == "fallback" and "no 95 % CI" in d["reason"]


def test_only_bank_sources_weighted_and_no_bank_leaves_hybrid_and_says_so():
    result = {"parts": {"source": {"weights": {"cosmos": 0.6, "deep": 0.4, "sersic": 0.0}, "banks": {}}}}
    over = mix_overrides(result)
    assert over["source"]["mix_modes"] == ["hybrid"] and "hybrid alone" in result["parts"]["source"]["no_bank_fallback"]
