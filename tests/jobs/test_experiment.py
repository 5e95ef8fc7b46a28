"""The seed's experiment configuration (jobs.experiment): rules, YAML round trip, seeds, lineage."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from dhs_gen.errors import ConfigError
from jobs.experiment import (
    DataVariantConfig,
    EvaluationConfig,
    ExperimentConfig,
    HardNegativeTrainingConfig,
    SeedConfig,
    create_experiment_config,
    set_all_seeds,
)
from jobs.runtime.config import load_config
from jobs.runtime.outputs import git_provenance
from jobs.training.model import ModelConfig

LINEAGE = ("v3_color_relaxed", "v4_sota", "v4_sota_moffat", "v5_cosmos_source", "v6_real_hardneg")


def variant(**kw) -> DataVariantConfig:
    return DataVariantConfig(**({"variant_name": "v_test", "psf_model": "moffat", "moffat_beta": 3.5,
                                 "source_mode": "parametric", "theta_e_range": [0.8, 1.6], "control_type": "paired"} | kw))


def test_the_four_seed_rules_name_their_field():
    with pytest.raises(ValueError, match="data.moffat_beta"):                          # rule 1
        variant(moffat_beta=None)
    with pytest.raises(ValueError, match="data.cosmos_library_path"):                  # rule 2
        variant(source_mode="cosmos")
    with pytest.raises(ValueError, match="hard_negatives.hard_neg_path"):              # rule 3
        HardNegativeTrainingConfig(enabled=True)
    with pytest.raises(ValueError, match="output_dir"):                                # rule 4
        ExperimentConfig(experiment_id="x", experiment_name="x", data=variant(), output_dir=None)
    # every rule's error is also the project's ConfigError (one `error:` line on the command line)
    with pytest.raises(ConfigError):
        variant(psf_model="airy")


def test_other_fields_are_checked_as_the_stages_check_them(tmp_path):
    base = {"experiment_id": "e", "experiment_name": "e", "output_dir": str(tmp_path), "generation": "gen7c"}
    with pytest.raises(ConfigError, match="training.epochs"):
        ExperimentConfig.from_dict(base | {"training": {"epochs": 0}})
    # PyYAML reads `lr: 1e-3` as text: the trainer stores the number it checked, not the string
    assert ExperimentConfig.from_dict(base | {"training": {"lr": "1e-3"}}).training.lr == 1e-3
    with pytest.raises(ConfigError, match="training.seed"):
        ExperimentConfig.from_dict(base | {"training": {"seed": 3}})
    with pytest.raises(ConfigError, match="seeds.glob"):
        ExperimentConfig.from_dict(base | {"seeds": {"glob": 1}})
    with pytest.raises(ConfigError, match="source.mag_r"):     # an injection field, through the preset's checks
        ExperimentConfig.from_dict(base | {"data": {"overrides": {"source": {"mag_r": [30, 10]}}}})
    with pytest.raises(ConfigError, match="data.overrides.psf_model"):
        ExperimentConfig.from_dict(base | {"data": {"psf_model": "gaussian", "overrides": {"psf_model": "moffat"}}})
    with pytest.raises(ConfigError, match="evaluation.score_device"):
        EvaluationConfig(score_device="tpu")


def test_create_to_yaml_from_yaml_gives_an_equal_config(tmp_path):
    cfg = create_experiment_config("Gen7 clumps", "gen7b", variant(), str(tmp_path),
                                   seeds=SeedConfig(global_seed=7, model_seed=11), training={"epochs": 2})
    assert cfg.experiment_id.startswith("gen7b_gen7_clumps_") and cfg.output_dir == str(tmp_path / cfg.experiment_id)
    git = git_provenance()
    assert (cfg.git_commit, cfg.git_branch, cfg.git_dirty) == (git["commit"], git["branch"], git["dirty"])
    path = tmp_path / "config.yaml"
    cfg.to_yaml(str(path))
    back = ExperimentConfig.from_yaml(str(path))
    assert back == cfg and back.config_hash() == cfg.config_hash()
    assert back.training.seed == 11 and back.training.epochs == 2 and back.training.model == cfg.model
    # the same name, generation and variant give the same id; another variant another id
    assert create_experiment_config("Gen7 clumps", "gen7b", variant(), str(tmp_path), seeds=SeedConfig(global_seed=7, model_seed=11),
                                    training={"epochs": 2}).experiment_id == cfg.experiment_id
    assert create_experiment_config("Gen7 clumps", "gen7b", variant(control_type="unpaired"),
                                    str(tmp_path)).experiment_id != cfg.experiment_id


def test_data_part_is_the_injection_config_the_stages_run(tmp_path):
    cfg = create_experiment_config("x", "gen8b", variant(psf_model="gaussian", source_mode="hybrid",
                                                         overrides={"artifact_profile": "strong"}),
                                   str(tmp_path), seeds=SeedConfig(global_seed=5, data_seed=99))
    inj = cfg.injection_config()
    preset = load_config("gen8b", {"psf_model": "gaussian", "seed": 99, "paired_controls": True,
                                   "artifact_profile": "strong",
                                   "lens": {"theta_e_arcsec": [0.8, 1.6]}, "source": {"mode": "hybrid"},
                                   "name": cfg.experiment_id, "description": ""})
    assert inj == preset
    assert "v_test" in cfg.get_reproducibility_info() and cfg.git_commit in cfg.get_reproducibility_info()


def test_set_all_seeds_repeats_python_numpy_torch_draws():
    seeds = SeedConfig(global_seed=3)
    draws = []
    for _ in range(2):
        set_all_seeds(seeds)
        draws.append((random.random(), np.random.rand(), torch.rand(3).tolist(), torch.nn.Linear(4, 2).weight.sum().item()))
    assert draws[0] == draws[1]
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    set_all_seeds(dataclasses.replace(seeds, model_seed=4))
    assert random.random() != draws[0][0]
    set_all_seeds(SeedConfig(deterministic=False))
    assert not torch.are_deterministic_algorithms_enabled()


def test_lineage_configs_load_and_each_changes_what_its_readme_says():
    cfgs = {v: ExperimentConfig.from_yaml(v) for v in LINEAGE}
    inj = {v: c.injection_config() for v, c in cfgs.items()}
    assert [c.data.variant_name for c in cfgs.values()] == list(LINEAGE)
    assert (inj["v3_color_relaxed"].psf_model, inj["v3_color_relaxed"].paired_controls) == ("gaussian", True)
    assert inj["v3_color_relaxed"].lens.theta_e_arcsec == (0.5, 0.75, 1.0)

    def diff(a, b):
        da, db = inj[a].to_dict(), inj[b].to_dict()
        return {k for k in da if da[k] != db[k]} - {"name", "description"}

    assert diff("v3_color_relaxed", "v4_sota") == {"paired_controls", "lens"}
    assert inj["v4_sota"].lens.theta_e_arcsec == (0.5, 1.0, 1.5, 2.0, 2.5)
    assert diff("v4_sota", "v4_sota_moffat") == {"psf_model"} and inj["v4_sota_moffat"].moffat_beta == 3.5
    assert diff("v4_sota_moffat", "v5_cosmos_source") == {"source", "generation"}
    assert inj["v5_cosmos_source"].source.mode == "cosmos"
    assert diff("v5_cosmos_source", "v6_real_hardneg") == set()   # same stamps; the change is in training
    hn = cfgs["v6_real_hardneg"].hard_negatives
    assert hn.enabled and hn.hard_neg_weight == 5.0 and not cfgs["v5_cosmos_source"].hard_negatives.enabled
    assert cfgs["v6_real_hardneg"].training.epochs == 50 and cfgs["v6_real_hardneg"].training.early_stopping_patience == 5


def test_model_section_is_the_trainers_model_config():
    cfg = ExperimentConfig.from_yaml("v4_sota")
    assert isinstance(cfg.model, ModelConfig) and cfg.model.arch == "resnet18ish" and cfg.training.model == cfg.model


def test_config_round_trips_through_s3_and_python_values_read_back_equal(s3_env, tmp_path):
    """Written beside s3:// outputs, a config reads back equal (`dhs experiment run s3://.../config.yaml`);
    tuples in overrides come back as the lists YAML holds, so the two configs are equal."""
    import uuid

    cfg = create_experiment_config("s3 run", "gen8b", variant(overrides={"split_fractions": (0.8, 0.1, 0.1)}),
                                   f"s3://{s3_env.bucket}/exp-{uuid.uuid4().hex[:8]}")
    uri = f"{cfg.output_dir}/config.yaml"
    cfg.to_yaml(uri)
    assert ExperimentConfig.from_yaml(uri) == cfg
    with pytest.raises(ConfigError, match="no such file"):
        ExperimentConfig.from_yaml(uri + ".missing")


@pytest.mark.parametrize("data,field", [
    ({"theta_e_range": ["a"]}, "data.theta_e_range[0]"),
    ({"overrides": {"lens": 5}}, "data.overrides.lens"),           # a part of a variant field: it would be lost
    ({"overrides": {"name": "x"}}, "data.overrides.name"),
    ({"overrides": {"source": {"mix_probs": ["a"]}}}, "mix_probs"),
])
def test_malformed_values_are_config_errors_naming_the_field(data, field, tmp_path):
    base = {"experiment_id": "e", "experiment_name": "e", "output_dir": str(tmp_path), "generation": "gen7c",
            "data": {"theta_e_range": [1.0]} | data}
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ExperimentConfig.from_dict(base)
    with pytest.raises(ConfigError, match="seeds.global_seed"):
        SeedConfig(global_seed=1.5)
    with pytest.raises(ConfigError, match="data.preset"):
        ExperimentConfig(experiment_id="x", experiment_name="x", output_dir=str(tmp_path))   # "custom" is no preset
