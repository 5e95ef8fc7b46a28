"""The stage runner's planning helpers: balanced runs of work, one task per payload, table payloads."""

import pyarrow as pa
import pyarrow.parquet
import pytest

from jobs.runtime import stage
from jobs.runtime.allocator import keep_freed_memory


@pytest.mark.parametrize("weights, n, expected", [
    ([360] * 8, 8, [[i] for i in range(8)]),
    ([360] * 8, 3, [[0, 1, 2], [3, 4, 5], [6, 7]]),
    ([1, 1, 10, 1, 1], 2, [[0, 1, 2], [3, 4]]),
    ([5], 4, [[0]]),
    ([], 4, []),
    ([0, 0, 0], 2, [[0, 1], [2]]),
    ([1, 1, 0], 2, [[0], [1, 2]]),
    ([4, 0, 0, 0, 4], 3, [[0], [1, 2, 3, 4]]),
])
def test_balanced_runs_cover_every_item_once_in_order(weights, n, expected):
    runs = stage.balanced_runs(weights, n)
    assert [list(r) for r in runs] == expected
    assert [i for r in runs for i in r] == list(range(len(weights))) and len(runs) <= n


def test_balanced_runs_stay_within_one_item_of_the_share():
    weights = [3, 7, 1, 9, 4, 4, 2, 8, 6, 5, 1, 1, 12, 3]
    runs = stage.balanced_runs(weights, 4)
    share, biggest = sum(weights) / 4, max(weights)
    assert all(sum(weights[i] for i in r) <= share + biggest for r in runs)


def test_task_rdd_puts_each_payload_in_its_own_task(spark):
    payloads = [f"task-{i}".encode() for i in range(5)]
    rdd = stage.task_rdd(spark, payloads)
    assert rdd.getNumPartitions() == 5
    assert rdd.glom().collect() == [[p] for p in payloads]
    assert stage.task_rdd(spark, []).count() == 0


def test_task_frame_puts_each_payload_in_its_own_task(spark):
    payloads = [f"task-{i}".encode() for i in range(5)]
    df = stage.task_frame(spark, payloads)
    assert df.rdd.getNumPartitions() == 5
    per_partition = df.rdd.glom().map(lambda rows: [bytes(r.payload) for r in rows]).collect()
    assert per_partition == [[p] for p in payloads]
    assert stage.task_frame(spark, []).count() == 0


@pytest.mark.parametrize("as_frame", [False, True])
def test_run_partitions_gives_each_task_its_payloads_and_reports_its_rows(spark, tmp_path, as_frame):
    """Both kinds of task source: a task_rdd's payloads and a DataFrame's rows reach ``process`` as Arrow
    batches with a ``payload`` column; each task writes its rows and reports them."""
    schema = pa.schema([("payload", pa.string()), ("reject_reason", pa.string())])
    payloads = [b"a", b"bb", b"ccc"]
    tasks = (stage.task_frame if as_frame else stage.task_rdd)(spark, payloads)

    def process(batches):
        for batch in batches:
            for p in batch.column("payload").to_pylist():
                yield pa.table({"payload": [p.decode()] * len(p), "reject_reason": [None] * (len(p) - 1) + ["short"]})

    _, reports = stage.run_partitions(tasks, process, str(tmp_path / "out"), schema)
    assert [(r["partition"], r["rows"], r["rejected"]) for r in reports] == [(0, 1, 1), (1, 2, 1), (2, 3, 1)]
    written = [pa.parquet.read_table(r["path"]).column("payload").to_pylist() for r in reports]
    assert written == [["a"], ["bb"] * 2, ["ccc"] * 3]


@pytest.mark.parametrize("as_frame", [False, True])
def test_run_partitions_with_no_payloads_reports_an_empty_task(spark, tmp_path, as_frame):
    schema = pa.schema([("payload", pa.string()), ("reject_reason", pa.string())])
    tasks = (stage.task_frame if as_frame else stage.task_rdd)(spark, [])

    def process(batches):
        for batch in batches:
            assert batch.num_rows == 0   # no payload reaches process, at most an empty batch
        return iter(())

    _, reports = stage.run_partitions(tasks, process, str(tmp_path / "out"), schema)
    assert [(r["rows"], r["rejected"], r["path"]) for r in reports] == [(0, 0, None)]


def test_table_payload_round_trips():
    table = pa.table({"brickname": ["a", None, "c"], "ra": [1.0, 2.0, float("nan")]})
    back = stage.payload_table(stage.table_payload(table))
    assert back.schema == table.schema and back.column("brickname").to_pylist() == ["a", None, "c"]


def test_keep_freed_memory_is_set_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip(f"the allocator setting is glibc's; this is {platform.libc_ver()[0] or 'not glibc'}")
    assert keep_freed_memory() is True


def test_local_session_jvm_compiles_with_c1_only(spark):
    """The JVM a local session launches only schedules; the rows are processed in Python, so C2's compiles
    would take CPU from the workers (jobs.spark.get_spark)."""
    args = list(spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
    assert "-XX:TieredStopAtLevel=1" in args, args
