"""End to end as on EMR: the packaged bundle run by a real ``spark-submit`` against a real S3 server.

``dist/`` is built by ``emr.package``; every stage runs as ``spark-submit --master local[2] --py-files
dhs_bundle.zip entry/<stage>.py ...`` in a subprocess whose only link to the storage is the AWS_*
environment (SeaweedFS on 127.0.0.1): 4a manifest -> 4b coadd cache -> 4c inject -> score (an
untrained checkpoint) -> 4d completeness, every input and output an ``s3://`` URI.

Oracles: the manifests' row counts chained stage to stage, the committed git SHA (only the zipped
code, which has no .git, records the DHS_GIT_SHA we set), the synthetic sky's own parent sample, and
4d's counts recomputed here directly from the scores with pyarrow.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from emr import package
from jobs.runtime import outputs, storage
from jobs.stages import sky

SPARK_SUBMIT = Path(sys.executable).parent / "spark-submit"
GIT_SHA = "e2e0" * 10


def _submit(dist: Path, stage: str, args: list[str], env: dict, cwd: Path) -> str:
    cmd = [str(SPARK_SUBMIT), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
           "--py-files", str(dist / package.BUNDLE_NAME), str(dist / "entry" / f"{stage}.py"), *args]
    out = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{stage} failed:\n{out.stdout[-3000:]}\n{out.stderr[-6000:]}"
    return out.stdout


@pytest.mark.slow
def test_bundle_runs_4a_4b_4c_score_4d_on_s3(tmp_path, s3_env):
    import torch

    from jobs.training.model import ModelConfig, build_model, save_checkpoint

    dist = tmp_path / "dist"
    package.build(dist, git_sha=GIT_SHA)
    sky_dir = tmp_path / "sky"
    sky.main(["--out", str(sky_dir), "--n-bricks", "1", "--size-pix", "300", "--n-lrg", "3"])
    root = f"s3://{s3_env.bucket}/e2e-{uuid.uuid4().hex[:8]}"
    uri = {k: f"{root}/{k}" for k in ("manifest", "coadds", "stamps", "scores", "completeness")}
    storage.copy_file(str(sky_dir / "parent_sample.parquet"), f"{root}/parent.parquet")
    with torch.random.fork_rng():   # an untrained model; its initial weights need not be reproducible
        model = build_model(ModelConfig(arch="resnet_small", width=4))
    save_checkpoint(f"{root}/model.pt", model, ModelConfig(arch="resnet_small", width=4))

    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(s3_env.env, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable, DHS_GIT_SHA=GIT_SHA)
    env.pop("PYTHONPATH", None)
    cwd = tmp_path   # outside the repository: the code can only come from the zip
    _submit(dist, "manifest", ["--parent", f"{root}/parent.parquet", "--config", str(dist / "configs" / "demo.yaml"),
                               "--out", uri["manifest"], "--partitions", "2"], env, cwd)
    _submit(dist, "coadd_cache", ["--manifest", uri["manifest"], "--source", str(sky_dir), "--dest", uri["coadds"],
                                  "--workers", "2", "--no-progress"], env, cwd)
    _submit(dist, "inject", ["--manifest", uri["manifest"], "--coadds", uri["coadds"], "--out", uri["stamps"],
                             "--partitions", "2"], env, cwd)
    _submit(dist, "score", ["--checkpoint", f"{root}/model.pt", "--input", uri["stamps"], "--out", uri["scores"]],
            env, cwd)
    _submit(dist, "completeness", ["--scores", uri["scores"], "--out", uri["completeness"], "--threshold", "0.5"],
            env, cwd)

    m = {k: outputs.read_manifest(uri[k]) for k in ("manifest", "stamps", "scores", "completeness")}
    assert {v["git_sha"] for v in m.values()} == {GIT_SHA}
    n_hosts = storage.read_parquet(str(sky_dir / "parent_sample.parquet")).num_rows
    # demo preset: 4 theta_E x 3 replicates per host, each an injection + its paired control
    assert m["manifest"]["rows_written"] == n_hosts * 4 * 3 * 2
    assert m["stamps"]["rows_in"] == m["manifest"]["rows_written"] == m["scores"]["rows_in"]
    report = storage.read_json(f"{uri['coadds']}/_cache_report.json")
    assert len(report["fetched"]) == 1 and report["failed"] == []

    scores = storage.read_parquet(outputs.dataset_files(uri["scores"]))
    label = np.asarray(scores["label"])
    status = np.asarray(scores["score_status"].to_pylist(), dtype=object)
    score = np.asarray(scores["score"].to_numpy(zero_copy_only=False), dtype=float)
    inj_ok = (label == 1) & (status == "ok")
    e = m["completeness"]["extra"]
    assert e["n_injections"] == int(np.sum(label == 1)) and e["n_injections_scored"] == int(inj_ok.sum()) > 0
    assert e["n_recovered"] == int(np.sum(inj_ok & (score > 0.5)))
    # the grid's cells are contiguous, so a row is in some cell iff every variable lies in [first, last edge)
    inside = np.ones(scores.num_rows, dtype=bool)
    for name, edges in m["completeness"]["config"]["bins"].items():
        v = np.asarray(scores[name].to_numpy(zero_copy_only=False), dtype=float)
        hi = np.inf if edges[-1] is None else edges[-1]
        lo = -np.inf if edges[0] is None else edges[0]
        inside &= np.isfinite(v) & (v >= lo) & (v < hi)
    cells = storage.read_parquet(outputs.dataset_files(uri["completeness"]))
    assert sum(cells.column("n_scored").to_pylist()) == int(np.sum(inj_ok & inside))
    assert sum(cells.column("n_recovered").to_pylist()) == int(np.sum(inj_ok & inside & (score > 0.5)))
    assert storage.read_bytes(f"{uri['completeness']}/completeness.png")[:4] == b"\x89PNG"
