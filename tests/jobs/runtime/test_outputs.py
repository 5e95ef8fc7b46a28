"""The commit protocol of stage outputs, on local disk and on a real S3 server (SeaweedFS).

Oracles: files listed directly through pyarrow/boto3, row counts and ids written by the test itself,
sha256 computed here with hashlib, and the git objects read from ``.git`` without running git.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support import REPO_ROOT

import dhs_gen
from dhs_gen.errors import InvalidValueError
from jobs.runtime import outputs, storage

REPO = REPO_ROOT


@pytest.fixture(params=["local", "s3"])
def out_uri(request, tmp_path, monkeypatch):
    """A fresh output directory URI on each backend."""
    if request.param == "local":
        return str(tmp_path / "out")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.bucket}/out-{uuid.uuid4().hex[:10]}"


def _rows(start: int, n: int) -> pa.Table:
    return pa.table({"task_id": [f"t{i:04d}" for i in range(start, start + n)],
                     "flux_nmgy": np.linspace(0.0, 1.0, n)})


def _manifest(rows_written: int, rows_rejected: int = 0, **kw) -> dict:
    reasons = {"nan_pixels": rows_rejected} if rows_rejected else {}
    return outputs.build_manifest("4x_test", {"seed": 1}, {"in": "nowhere"}, rows_written + rows_rejected,
                                  rows_written, rows_rejected, reasons, {"total_s": 0.1}, **kw)


def test_attempt_path_layout():
    assert outputs.attempt_path("s3://b/out/", "r1", 7, "0-abc") == "s3://b/out/_attempts/r1/part-00007-0-abc.parquet"
    with pytest.raises(ValueError, match="partition_index"):
        outputs.attempt_path("/o", "r1", -1, "0-abc")
    with pytest.raises(ValueError, match="run_id"):
        outputs.attempt_path("/o", "../x", 0, "a")


def test_retried_partition_commits_one_file_without_duplicates(out_uri):
    run_id = "run1"
    # Partition 0 ran twice: attempt 0 wrote its file and then failed; attempt 1 succeeded.
    outputs.write_attempt(_rows(0, 5), out_uri, run_id, 0, "0-dead")
    reports = [outputs.write_attempt(_rows(0, 5), out_uri, run_id, 0, "1-good"),
               outputs.write_attempt(_rows(5, 0), out_uri, run_id, 1, "0-empty"),
               outputs.write_attempt(_rows(5, 3), out_uri, run_id, 2, "0-only")]
    assert reports[1] == {"partition": 1, "path": None, "rows": 0}

    # Nothing is visible before the commit: no manifest, no part file at the top level.
    assert storage.list_files(out_uri, suffix=".parquet") == []
    with pytest.raises(outputs.MissingInputError):
        outputs.dataset_files(out_uri)
    assert len(storage.list_files(out_uri, recursive=True)) == 3   # the three attempt files, all staged

    final = outputs.commit(out_uri, run_id, reports, _manifest(8))
    assert final["files"] == ["part-00000.parquet", "part-00002.parquet"]
    assert final["partitions"] == {"total": 3, "empty": 1}
    # Everything left under the output, listed by the filesystem itself.
    assert storage.list_files(out_uri, recursive=True) == [
        f"{out_uri}/_manifest.json", f"{out_uri}/part-00000.parquet", f"{out_uri}/part-00002.parquet"]
    table = storage.read_parquet(outputs.dataset_files(out_uri))
    ids = table.column("task_id").to_pylist()
    assert sorted(ids) == [f"t{i:04d}" for i in range(8)]       # every row once, none twice
    assert outputs.read_manifest(out_uri) == json.loads(storage.read_bytes(f"{out_uri}/_manifest.json"))


def test_commit_rejects_bad_reports_and_leaves_output_untouched(out_uri):
    run_id = "run2"
    good = outputs.write_attempt(_rows(0, 4), out_uri, run_id, 0, "0-a")
    cases = [
        ([good, dict(good, path=good["path"])], "reported twice"),
        ([dict(good, rows=5)], "holds 4 rows"),
        ([dict(good, path=storage.join(out_uri, "elsewhere.parquet"))], "attempt file under"),
    ]
    for reports, message in cases:
        with pytest.raises(ValueError, match=message):
            outputs.commit(out_uri, run_id, reports, _manifest(sum(r["rows"] for r in reports)))
    with pytest.raises(ValueError, match="rows_written"):
        outputs.commit(out_uri, run_id, [good], _manifest(3))   # manifest says 3, files hold 4
    assert not storage.exists(f"{out_uri}/_manifest.json")
    assert storage.list_files(out_uri, suffix=".parquet") == []
    assert storage.exists(good["path"])


def test_prepare_output_refuses_then_overwrites(out_uri):
    outputs.prepare_output(out_uri, overwrite=False)               # nothing there yet: fine
    report = outputs.write_attempt(_rows(0, 2), out_uri, "r", 0, "0-a")
    outputs.commit(out_uri, "r", [report], _manifest(2))
    storage.write_bytes(storage.join(out_uri, "README.txt"), b"not ours")

    with pytest.raises(outputs.OutputExistsError) as err:
        outputs.prepare_output(out_uri, overwrite=False)
    assert out_uri in str(err.value) and "--overwrite" in str(err.value)
    again = pickle.loads(pickle.dumps(err.value))                    # survives the trip from an executor
    assert type(again) is outputs.OutputExistsError and str(again) == str(err.value)
    with pytest.raises(outputs.OutputExistsError, match="commit runs once"):
        outputs.commit(out_uri, "r", [], _manifest(0))

    # overwrite deletes nothing up front: the old dataset stays complete until its successor commits,
    # and then only what a stage writes is replaced (README.txt is not ours)
    outputs.prepare_output(out_uri, overwrite=True)
    assert outputs.read_manifest(out_uri)["rows_written"] == 2
    new = outputs.write_attempt(_rows(0, 3), out_uri, "r2", 0, "0-b")
    outputs.commit(out_uri, "r2", [new], _manifest(3), replace=True)
    assert sorted(storage.list_files(out_uri, recursive=True)) == sorted(
        [f"{out_uri}/README.txt", f"{out_uri}/{outputs.MANIFEST_NAME}", f"{out_uri}/part-00000.parquet"])
    assert outputs.read_manifest(out_uri)["rows_written"] == 3


def test_prepare_output_refuses_orphan_part_files(tmp_path):
    """Part files without a manifest (a commit that died half way) are not silently mixed with new ones."""
    out = tmp_path / "out"
    storage.write_parquet(_rows(0, 1), str(out / "part-00003.parquet"))
    with pytest.raises(outputs.OutputExistsError, match="1 part file"):
        outputs.prepare_output(str(out), overwrite=False)
    storage.write_bytes(str(tmp_path / "afile"), b"x")
    with pytest.raises(outputs.OutputExistsError, match="must be a directory"):
        outputs.prepare_output(str(tmp_path / "afile"), overwrite=False)


def test_require_input_refuses_incomplete_input(out_uri):
    outputs.write_attempt(_rows(0, 2), out_uri, "r", 0, "0-a")      # a run still in progress
    with pytest.raises(outputs.MissingInputError) as err:
        outputs.require_input(out_uri, stage="4a_manifest")
    message = str(err.value)
    assert out_uri in message and "_manifest.json" in message and "'4a_manifest'" in message
    assert str(pickle.loads(pickle.dumps(err.value))) == message
    with pytest.raises(outputs.MissingInputError, match="does not exist"):
        outputs.require_input(storage.join(out_uri, "never-written"), stage="4a_manifest")


def test_require_input_checks_the_producing_stage(tmp_path):
    out = str(tmp_path / "out")
    outputs.commit(out, "r", [], _manifest(0))
    assert outputs.require_input(out, stage="4x_test")["stage"] == "4x_test"
    assert outputs.dataset_files(out) == [] and outputs.dataset_files(out + "/_manifest.json") == []


def test_dataset_files_takes_files_and_lists(tmp_path):
    out = str(tmp_path / "out")
    outputs.commit(out, "r", [outputs.write_attempt(_rows(0, 3), out, "r", 0, "0-a")], _manifest(3))
    parts = outputs.dataset_files(out)
    single = str(tmp_path / "loose.parquet")
    assert outputs.dataset_files(single) == [single]
    assert outputs.dataset_files([out, single]) == parts + [single]
    assert outputs.dataset_files((out,)) == parts
    with pytest.raises(ValueError, match="4a_manifest"):
        outputs.require_input(out, stage="4a_manifest")


def test_build_manifest_row_invariant_and_provenance():
    with pytest.raises(ValueError, match="never lose rows"):
        outputs.build_manifest("s", {}, {}, 10, 8, 1, {"nan": 1}, {})
    with pytest.raises(ValueError, match="rejected_by_reason"):
        outputs.build_manifest("s", {}, {}, 10, 8, 2, {"nan": 1}, {})
    with pytest.raises(ValueError, match="whole number"):
        outputs.build_manifest("s", {}, {}, 2.5, 2.5, 0, {}, {})

    config = {"b": [1, 2.5], "a": {"z": "x", "y": None}}
    m = outputs.build_manifest("4c_inject", config, {"manifest": "s3://b/m"}, 10, 7, 3, {"nan": 2, "edge": 1},
                               {"total_s": 1.5}, extra={"partitions": 4})
    canonical = '{"a":{"y":null,"z":"x"},"b":[1,2.5]}'                # written out by hand
    assert m["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()[:16]
    assert (m["rows_in"], m["rows_written"], m["rows_rejected"]) == (10, 7, 3)
    assert m["rejected_by_reason"] == {"edge": 1, "nan": 2} and m["extra"] == {"partitions": 4}
    assert m["pipeline_version"] == dhs_gen.PIPELINE_VERSION
    assert m["packages"]["numpy"] == np.__version__ and m["packages"]["pyarrow"] == pa.__version__
    assert m["created_utc"].endswith("Z") and m["hostname"]
    json.dumps(m)   # the manifest must be plain JSON


def _head_from_dotgit(dotgit: Path) -> str:
    """Resolve HEAD by reading .git directly (loose ref or packed-refs), not by running git."""
    head = (dotgit / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head[5:]
    if (dotgit / ref).is_file():
        return (dotgit / ref).read_text().strip()
    for line in (dotgit / "packed-refs").read_text().splitlines():
        if line.endswith(" " + ref):
            return line.split()[0]
    raise AssertionError(f"{ref} not found")


def test_git_sha_sources(monkeypatch, tmp_path):
    if (REPO / ".git").is_dir():
        assert outputs.git_sha() == _head_from_dotgit(REPO / ".git")
    monkeypatch.setattr(outputs, "REPO_ROOT", tmp_path)              # a copy of the code without .git (EMR)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    monkeypatch.setenv("DHS_GIT_SHA", "abc123")
    assert outputs.git_sha() == "abc123"
    monkeypatch.delenv("DHS_GIT_SHA")
    assert outputs.git_sha() == "unknown"


def test_attempts_written_by_spark_tasks_commit_once(spark, tmp_path):
    """Real Spark tasks (4 partitions, one empty) write attempts; a stale attempt per task is ignored."""
    from pyspark import TaskContext

    out, run_id = str(tmp_path / "out"), "spark1"
    sc = spark.sparkContext
    df = spark.createDataFrame(sc.parallelize([(i,) for i in range(6)], 3).union(sc.parallelize([], 1)), "i long")

    def task(batches):
        ctx = TaskContext.get()
        table = pa.Table.from_batches(list(batches), schema=pa.schema([("i", pa.int64())]))
        # A previous attempt of this task that wrote everything and then died before reporting.
        outputs.write_attempt(table, out, run_id, ctx.partitionId(), f"{ctx.attemptNumber()}-stale")
        report = outputs.write_attempt(table, out, run_id, *outputs.task_attempt())
        yield pa.RecordBatch.from_pylist([report], schema=pa.schema(
            [("partition", pa.int64()), ("path", pa.string()), ("rows", pa.int64())]))

    reports = [r.asDict() for r in df.mapInArrow(task, "partition long, path string, rows long").collect()]
    assert len(reports) == 4 and sum(r["path"] is None for r in reports) == 1
    final = outputs.commit(out, run_id, reports, _manifest(6))
    assert final["partitions"] == {"total": 4, "empty": 1} and len(final["files"]) == 3
    values = sorted(v for f in outputs.dataset_files(out) for v in pq.read_table(f).column("i").to_pylist())
    assert values == list(range(6))
    assert sorted(p.name for p in Path(out).iterdir()) == ["_manifest.json"] + final["files"]
    with pytest.raises(RuntimeError, match="inside a Spark task"):
        outputs.task_attempt()


@pytest.mark.parametrize("out, inp", [("x", "x"), ("x", "x/part"), ("x/sub", "x"), ("x/", "x")])
def test_an_output_overlapping_an_input_is_refused_before_anything_is_deleted(tmp_path, out, inp):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / outputs.MANIFEST_NAME).write_text("{}")
    with pytest.raises(InvalidValueError, match="lies inside the input"):
        outputs.prepare_output(str(tmp_path / out), overwrite=True, inputs=[str(tmp_path / inp)])
    assert (tmp_path / "x" / outputs.MANIFEST_NAME).exists()
    outputs.prepare_output(str(tmp_path / "y"), overwrite=True, inputs=[str(tmp_path / "x")])   # a sibling is fine


def test_overwrite_keeps_the_old_dataset_until_the_new_one_commits(tmp_path):
    out = str(tmp_path / "o")
    old = outputs.write_attempt(pa.table({"x": [1, 2]}), out, "old", 0, "a")
    outputs.commit(out, "old", [old], _manifest(2))
    outputs.prepare_output(out, overwrite=True)
    # the run is killed here: the old dataset is still complete and readable
    assert outputs.read_manifest(out)["rows_written"] == 2
    assert storage.read_parquet(outputs.dataset_files(out)).num_rows == 2
    # a killed run's orphan attempt, then a run that completes
    outputs.write_attempt(pa.table({"x": [9]}), out, "killed", 3, "z")
    new = outputs.write_attempt(pa.table({"x": [5, 6, 7]}), out, "new", 0, "b")
    with pytest.raises(outputs.OutputExistsError):
        outputs.commit(out, "new", [new], _manifest(3))          # without replace: never over a commit
    assert outputs.read_manifest(out)["rows_written"] == 2
    outputs.commit(out, "new", [new], _manifest(3), replace=True)
    assert outputs.read_manifest(out)["rows_written"] == 3
    assert storage.read_parquet(outputs.dataset_files(out)).column("x").to_pylist() == [5, 6, 7]
    assert not (tmp_path / "o" / outputs.ATTEMPTS_DIR).exists()   # the killed run's orphans are gone too


def test_git_provenance_records_branch_and_an_edited_tree(monkeypatch, tmp_path):
    import subprocess

    def git(*args):
        return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=tmp_path,
                              check=True, capture_output=True).stdout

    repo = tmp_path
    git("init", "-q", "-b", "work")
    (repo / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("commit", "-qm", "c")
    monkeypatch.setattr(outputs, "REPO_ROOT", repo)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    clean = outputs.git_provenance()
    assert clean == {"commit": git("rev-parse", "HEAD").decode().strip(), "branch": "work", "dirty": False,
                     "diff_sha256": None}
    (repo / "code.py").write_text("x = 2\n")                  # an edited tree is not its commit
    dirty = outputs.git_provenance()
    assert dirty["dirty"] is True and dirty["commit"] == clean["commit"]
    assert dirty["diff_sha256"] == hashlib.sha256(git("diff", "HEAD")).hexdigest()
    m = outputs.build_manifest("4x_test", {}, {}, 0, 0, 0, {}, {})
    assert m["git"] == dirty
