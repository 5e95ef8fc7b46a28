"""4a and 4c as whole Spark stages reading and writing s3:// on a real local S3 server (SeaweedFS)."""

import uuid
from pathlib import Path

from jobs.runtime import outputs, storage
from jobs.runtime.config import load_config
from jobs.stages import inject, manifest, sky


def _upload_tree(local: Path, uri: str) -> None:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.copy_file(str(path), storage.join(uri, str(path.relative_to(local))))


def test_manifest_and_inject_on_s3_match_local(s3_env, spark, tmp_path):
    local_sky = tmp_path / "sky"
    sky.main(["--out", str(local_sky), "--n-bricks", "1", "--n-lrg", "4", "--size-pix", "400"])
    base = f"s3://{s3_env.bucket}/stages-{uuid.uuid4().hex[:8]}"
    _upload_tree(local_sky, f"{base}/sky")
    cfg = load_config("base", {"hardneg_shuffle": True, "lens": {"theta_e_arcsec": [1.5]}})

    manifest.run(f"{base}/sky/parent_sample.parquet", cfg, f"{base}/manifest", partitions=2, spark=spark)
    m = inject.run(f"{base}/manifest", f"{base}/sky", f"{base}/stamps", partitions=2, spark=spark)
    assert storage.exists(f"{base}/stamps/_manifest.json")
    assert not storage.list_files(f"{base}/stamps/_attempts", recursive=True)  # no staging left behind
    s3_rows = storage.read_parquet(outputs.dataset_files(f"{base}/stamps")).sort_by("task_id")
    assert s3_rows.num_rows == m["rows_written"] + m["rows_rejected"] == 4 * 3

    manifest.run(str(local_sky / "parent_sample.parquet"), cfg, str(tmp_path / "manifest"), partitions=1, spark=spark)
    inject.run(str(tmp_path / "manifest"), str(local_sky), str(tmp_path / "stamps"), partitions=1, spark=spark)
    local_rows = storage.read_parquet(outputs.dataset_files(str(tmp_path / "stamps"))).sort_by("task_id")
    assert s3_rows.drop(["git_sha"]).equals(local_rows.drop(["git_sha"]))
