"""``dhs ensemble``: the mean of the members' calibrated probabilities, evaluated like one model."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from jobs import cli
from jobs.evaluation.ensemble import combine
from jobs.evaluation.score import score_table
from jobs.runtime import outputs, storage
from jobs.runtime.schema import STAMP_SCHEMA
from jobs.training.model import ModelConfig, build_model, save_checkpoint


def _stamps(n=12, size=32, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        img = rng.normal(0, 0.005, (3, size, size)).astype(np.float32)
        rows.append({"task_id": f"t{i:03d}", "pair_id": f"p{i // 2}", "kind": "injection" if i % 2 else "control",
                     "label": i % 2, "split": "test", "source_mode": "sersic", "artifact_profile": "none",
                     "image": img.tobytes(), "image_shape": [3, size, size], "cutout_ok": 1,
                     "theta_e_arcsec": 1.5, "arc_snr": 10.0})
    return pa.Table.from_pylist(rows, schema=STAMP_SCHEMA)


def _model(seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(ModelConfig(arch="resnet_small", width=4)).eval()


def test_combine_is_the_row_mean_and_needs_every_member():
    a = pa.table({"task_id": ["b", "a", "c"], "score": [0.2, 0.4, None], "score_status": ["ok", "ok", "no_image"]})
    b = pa.table({"task_id": ["a", "b", "c"], "score": [0.6, 0.8, None], "score_status": ["ok", "ok", "no_image"]})
    out = combine([a, b]).to_pylist()
    assert [r["task_id"] for r in out] == ["a", "b", "c"]
    assert out[0]["score"] == pytest.approx(0.5) and out[1]["score"] == pytest.approx(0.5)
    assert out[2]["score"] is None and out[2]["score_status"] == "no_image"


def test_ensemble_command_scores_and_evaluates_like_one_model(spark, tmp_path):
    table = _stamps()
    storage.write_parquet(table, str(tmp_path / "stamps" / "part-00000.parquet"))
    storage.write_json(str(tmp_path / "stamps" / outputs.MANIFEST_NAME),
                       outputs.build_manifest("4c_inject", {}, {}, 12, 12, 0, {}, {}) |
                       {"files": ["part-00000.parquet"], "file_rows": {"part-00000.parquet": 12}})
    ckpts = []
    for seed, temp in ((1, 2.0), (2, 0.5)):
        path = tmp_path / f"m{seed}.pt"
        save_checkpoint(str(path), _model(seed), ModelConfig(arch="resnet_small", width=4), {}, {"temperature": temp})
        ckpts.append(str(path))
    assert cli.main(["ensemble", "--checkpoints", *ckpts, "--input", str(tmp_path / "stamps"),
                     "--out", str(tmp_path / "ens")]) == 0
    got = storage.read_parquet(outputs.dataset_files(str(tmp_path / "ens"))).sort_by("task_id")
    # the oracle: each member's calibrated probabilities, outside the command, then their mean
    expect = np.mean([score_table(table, _model(s), temperature=t).column("score").to_numpy()
                      for s, t in ((1, 2.0), (2, 0.5))], axis=0)
    np.testing.assert_allclose(got.column("score").to_numpy(), expect, atol=1e-6)
    m = outputs.read_manifest(str(tmp_path / "ens"))
    assert [mb["temperature"] for mb in m["extra"]["members"]] == [2.0, 0.5]
    assert cli.main(["evaluate", "--scores", str(tmp_path / "ens"), "--out", str(tmp_path / "rep"), "--n-boot", "20"]) == 0
    assert json.loads((tmp_path / "rep" / "metrics.json").read_text())["rows"]["n_evaluated"] == 12


def test_one_checkpoint_is_not_an_ensemble(tmp_path, capsys):
    assert cli.main(["ensemble", "--checkpoints", "a.pt", "--input", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "at least two" in capsys.readouterr().err
