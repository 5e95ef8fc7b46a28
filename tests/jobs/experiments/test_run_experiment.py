"""``dhs experiment run``: the seed's lineage configs through 4a -> 4c -> train -> score -> evaluate."""

from __future__ import annotations

import json
import os

import pytest

from jobs import cli
from jobs.experiment import ExperimentConfig
from jobs.experiments import run_experiment
from jobs.experiments.banks import cosmos_bank_main
from jobs.runtime import storage
from jobs.stages import sky

SMALL = {"model": {"arch": "resnet_small"},
         "training": {"epochs": 1, "batch_size": 32, "num_workers": 0, "device": "cpu", "amp": False},
         "evaluation": {"n_boot": 20}}


@pytest.fixture(scope="module")
def tiny_sky(tmp_path_factory):
    out = tmp_path_factory.mktemp("sky")
    assert sky.main(["--out", str(out), "--n-bricks", "4", "--n-lrg", "5", "--size-pix", "400", "--seed", "0"]) == 0
    return out


def sets(tiny_sky, out, **extra) -> dict:
    return run_experiment.parse_sets([f"data.phase3_parent_sample={tiny_sky / 'parent_sample.parquet'}",
                                      f"data.coadd_cache={tiny_sky}", f"output_dir={out}",
                                      "data.theta_e_range=[1.0, 1.6]"] + [f"{k}={v}" for k, v in extra.items()])


def test_parse_sets_nests_and_reads_yaml_values():
    assert run_experiment.parse_sets(["a.b=1", "a.c=[1, 2]", "d=x", "e=null"]) == {"a": {"b": 1, "c": [1, 2]}, "d": "x",
                                                                                  "e": None}
    with pytest.raises(ValueError, match="--set"):
        run_experiment.parse_sets(["novalue"])


def test_v6_real_hardneg_runs_end_to_end_and_reruns_nothing(spark, tiny_sky, shared_data, tmp_path):
    """v6 (COSMOS sources + real hard negatives) on the tiny sky, with a COSMOS bank and real DES hosts from the
    shared data: every step's output, the config and header beside them, the same injection config in 4a's
    manifest, hard negatives in training; a re-run skips every step; another config there is refused."""
    bank = tmp_path / "cosmos.h5"
    assert cosmos_bank_main(["--galsim-path", str(shared_data / "cosmos_hst"), "--output", str(bank),
                             "--n-sources", "20"]) == 0
    hardneg = tmp_path / "hardneg_hosts"
    assert cli.main(["hosts", "build", "--cutouts", f"local:{shared_data}/des/lrg_hosts", "--out", str(hardneg),
                     "--zeropoint", "30", "--pixscale-arcsec", "0.263", "--psf-fwhm-arcsec", "1.3,1.15,1.05"]) == 0
    out = tmp_path / "v6"
    over = sets(tiny_sky, out) | SMALL
    over["data"] |= {"cosmos_library_path": str(bank)}
    over["hard_negatives"] = {"hard_neg_path": str(hardneg)}
    cfg = ExperimentConfig.from_yaml("v6_real_hardneg", over)
    state = run_experiment.run(cfg, spark=spark, partitions=2)
    assert list(state["steps"]) == list(run_experiment.STEPS)

    written = ExperimentConfig.from_yaml(str(out / "config.yaml"))
    assert written.config_hash() == cfg.config_hash() and written.git_commit  # the git state of the run is recorded
    assert "v6_real_hardneg" in (out / "reproducibility.txt").read_text()
    manifest = storage.read_json(str(out / "manifest" / "_manifest.json"))
    assert manifest["config"] == cfg.injection_config().to_dict()   # the stages ran the experiment's data part
    assert manifest["config"]["source"]["mode"] == "cosmos" and manifest["config"]["source"]["cosmos_bank"] == str(bank)
    tcfg = json.loads((out / "model" / "train_config.json").read_text())
    assert tcfg["hard_negatives"]["weight"] == 5.0 and tcfg["hard_negatives"]["n_rows"] > 0
    assert tcfg["train"] == cfg.training.to_dict() and tcfg["train"]["seed"] == cfg.seeds.resolved("model")
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert metrics["n_pos"] > 0 and metrics["n_neg"] > 0
    assert metrics["anchor_gate"]["available"] and metrics["anchor_gate"]["n_known_lenses"] > 0

    mtime = os.path.getmtime(out / "model" / "best.pt")
    again = run_experiment.run(ExperimentConfig.from_yaml(str(out / "config.yaml")), spark=spark, partitions=2)
    assert again["steps"] == state["steps"] and os.path.getmtime(out / "model" / "best.pt") == mtime
    assert all(step["git_commit"] == cfg.with_git().git_commit for step in state["steps"].values())
    (out / "eval" / "metrics.json").unlink()   # an output deleted by hand is redone, the rest kept
    again = run_experiment.run(ExperimentConfig.from_yaml(str(out / "config.yaml")), spark=spark, partitions=2)
    assert (out / "eval" / "metrics.json").is_file() and os.path.getmtime(out / "model" / "best.pt") == mtime
    stamps_mtime, eval_mtime = os.path.getmtime(out / "stamps" / "_manifest.json"), os.path.getmtime(out / "eval" / "metrics.json")
    (out / "model" / "best.pt").unlink()      # a redone step redoes every step after it, not those before
    run_experiment.run(ExperimentConfig.from_yaml(str(out / "config.yaml")), spark=spark, partitions=2)
    assert os.path.getmtime(out / "eval" / "metrics.json") > eval_mtime
    assert os.path.getmtime(out / "stamps" / "_manifest.json") == stamps_mtime
    other = ExperimentConfig.from_yaml(str(out / "config.yaml"), {"training": {"lr": 0.01}})
    with pytest.raises(ValueError, match="output_dir.*another config"):
        run_experiment.run(other, spark=spark, partitions=2)


def test_v3_gaussian_paired_variant_runs_4a_and_4c(spark, tiny_sky, tmp_path):
    cfg = ExperimentConfig.from_yaml("v3_color_relaxed", sets(tiny_sky, tmp_path / "v3") | SMALL)
    state = run_experiment.run(cfg, until="stamps", spark=spark, partitions=2)
    assert list(state["steps"]) == ["manifest", "stamps"]
    stamps = storage.read_json(str(tmp_path / "v3" / "stamps" / "_manifest.json"))
    assert stamps["rows_written"] > 0 and stamps["config"]["psf_model"] == "gaussian"
    assert stamps["config"]["paired_controls"] is True


def test_command_line_errors_before_spark(tmp_path, capsys):
    assert cli.main(["experiment", "run", "v4_sota", "--set", "data.psf_model=airy"]) == 2
    assert "data.psf_model" in capsys.readouterr().err
    assert cli.main(["experiment", "run", "v4_sota", "--set", f"output_dir={tmp_path}",
                     "--set", "data.phase3_parent_sample=/nonexistent.parquet", "--set", "data.coadd_cache=/x"]) == 2
    assert "data.phase3_parent_sample" in capsys.readouterr().err
