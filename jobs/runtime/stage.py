"""Run a stage over Spark partitions whose tasks write their own Parquet, then commit on the driver.

Spark's ``s3a://`` writer is not available, and it would not give us per-row reject accounting
anyway. Each task streams its Arrow tables into one attempt file (``jobs.runtime.outputs.attempt_path``)
and returns a one-row report; the driver collects the reports of the successful attempts and
``jobs.runtime.outputs.commit`` moves exactly those files into place and writes ``_manifest.json`` last.
A retried task writes a new attempt file, so rows are never duplicated.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from jobs.runtime import outputs, storage
from jobs.runtime.allocator import keep_freed_memory

REPORT_SCHEMA = pa.schema([
    ("partition", pa.int32()),
    ("path", pa.string()),
    ("rows", pa.int64()),
    ("rejected", pa.int64()),
    ("reasons", pa.string()),     # JSON {reason: count}
    ("seconds", pa.float64()),
    ("peak_rss_mb", pa.float64()),  # the task's Python worker high-water mark (memory per executor core)
])


# Storage settings a task needs to reach the same object store as the driver. Shipped with the
# task only when a custom endpoint is set (a local or test S3 server): Spark python workers in local
# mode inherit the environment of the JVM, fixed when the session started, not the driver's current
# one. On EMR no endpoint is set, nothing is shipped and the instance role signs requests.
_WORKER_ENV_NAMES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                     "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def storage_env() -> dict:
    """The driver's S3 endpoint settings to re-apply in tasks (empty unless a custom endpoint is set)."""
    if not (os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL_S3")):
        return {}
    return {k: os.environ[k] for k in _WORKER_ENV_NAMES if k in os.environ}


def with_storage_env(fn: Callable, env: dict | None = None) -> Callable:
    """Wrap a partition function so it runs with the driver's storage settings."""
    env = storage_env() if env is None else env

    def wrapped(*args, **kwargs):
        os.environ.update(env)
        return fn(*args, **kwargs)

    return wrapped


def spark_schema(schema: pa.Schema):
    """Arrow schema -> Spark StructType (for ``mapInArrow``)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


class AttemptWriter:
    """Streams Arrow tables of one task attempt into one Parquet file, opened on the first rows.

    Memory stays bounded by one batch: each ``write`` becomes a row group and is released.
    """

    def __init__(self, out_uri: str, run_id: str, partition: int, attempt_id: str, schema: pa.Schema):
        self.uri = outputs.attempt_path(out_uri, run_id, partition, attempt_id)
        self.partition, self.schema = partition, schema
        self.rows, self.rejected, self.reasons = 0, 0, Counter()
        self._writer = self._stream = None

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if table.num_rows == 0:
            return
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = table.select(self.schema.names).cast(self.schema)
        if self._writer is None:
            fs, path = storage.resolve(self.uri)
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            self._stream = fs.open_output_stream(path)
            self._writer = pq.ParquetWriter(self._stream, self.schema,
                                            **storage.stamp_parquet_options(self.schema))
        self._writer.write_table(table)
        self.rows += table.num_rows
        if "reject_reason" in table.column_names:
            for reason in table.column("reject_reason").to_pylist():
                if reason:
                    self.rejected += 1
                    self.reasons[reason] += 1

    def close(self, seconds: float) -> dict:
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
        return {"partition": self.partition, "path": self.uri if self.rows else None, "rows": self.rows,
                "rejected": self.rejected, "reasons": json.dumps(dict(self.reasons), sort_keys=True),
                "seconds": seconds, "peak_rss_mb": _peak_rss_mb()}


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kB on Linux


def task_rdd(spark, payloads: list[bytes]):
    """An RDD of ``payloads``, each alone in its own partition: one task each, for :func:`run_partitions`.

    For stages whose driver decides what every task does (which hosts, which bricks of which files):
    no shuffle and no sampling job, and tasks as balanced as the driver made them. An RDD rather than a
    DataFrame: the payloads go to the task's Python worker as they are, where a DataFrame would run a
    second Python evaluation per task to turn them into rows and then into Arrow (an empty 4-task job:
    0.12 s instead of 0.18 s on 2 cores).
    """
    return spark.sparkContext.parallelize([bytes(p) for p in payloads], numSlices=max(1, len(payloads)))


def task_frame(spark, payloads: list[bytes]):
    """:func:`task_rdd` as a DataFrame of one binary column ``payload`` (for tasks whose output feeds a join
    or a shuffle)."""
    return spark.createDataFrame(task_rdd(spark, payloads).map(lambda p: (p,)), "payload binary")


def table_payload(table: pa.Table) -> bytes:
    """An Arrow table as the bytes of one :func:`task_rdd` payload (Arrow IPC stream)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def payload_table(payload: bytes) -> pa.Table:
    """The table of :func:`table_payload`."""
    return pa.ipc.open_stream(payload).read_all()


def balanced_runs(weights: list[int], n: int) -> list[range]:
    """Cut items of ``weights`` (in their order) into at most ``n`` contiguous runs of similar total weight.

    A run ends at the first item that brings the running total to its share ``k * total / n``; empty
    runs are dropped, so fewer items than ``n`` give one run each. Deterministic (a function of the weights).
    """
    if sum(weights) <= 0:   # nothing weighs anything: balance the item counts
        weights = [1] * len(weights)
    total, runs, start, acc, k = sum(weights), [], 0, 0, 1
    for i, w in enumerate(weights):
        acc += w
        if acc * n >= k * total and i + 1 < len(weights) and len(runs) < n - 1:
            runs.append(range(start, i + 1))
            start = i + 1
            while acc * n >= k * total:
                k += 1
    if start < len(weights):
        runs.append(range(start, len(weights)))
    return runs


def run_partitions(tasks, process: Callable[[Iterable[pa.RecordBatch]], Iterator[pa.Table]], out_uri: str,
                   schema: pa.Schema, run_id: str | None = None) -> tuple[str, list[dict]]:
    """Apply ``process`` (Arrow batches in -> Arrow tables in ``schema`` out) per partition and write.

    ``tasks`` is a DataFrame (its partitions arrive as Arrow batches) or a :func:`task_rdd` (each
    task's payloads arrive as one batch of a binary column ``payload``). Returns ``(run_id, reports)``;
    nothing is visible under ``out_uri`` until ``commit_stage``.
    """
    from pyspark.sql import DataFrame

    run_id = run_id or uuid.uuid4().hex[:12]

    def task(batches: Iterable[pa.RecordBatch]) -> dict:
        from pyspark import TaskContext

        keep_freed_memory()
        ctx = TaskContext.get()
        attempt = f"{ctx.attemptNumber()}-{uuid.uuid4().hex[:8]}"
        t0 = time.perf_counter()
        writer = AttemptWriter(out_uri, run_id, ctx.partitionId(), attempt, schema)
        for table in process(batches):
            writer.write(table)
        return writer.close(time.perf_counter() - t0)

    if isinstance(tasks, DataFrame):
        def arrow_task(batches):
            yield pa.RecordBatch.from_pylist([task(batches)], schema=REPORT_SCHEMA)

        reports = [r.asDict() for r in tasks.mapInArrow(with_storage_env(arrow_task), spark_schema(REPORT_SCHEMA)).collect()]
    else:
        def payload_task(payloads):
            yield task([pa.record_batch({"payload": pa.array(list(payloads), pa.binary())})])

        reports = tasks.mapPartitions(with_storage_env(payload_task)).collect()
    return run_id, sorted(reports, key=lambda r: r["partition"])


def summarize(reports: list[dict]) -> dict:
    """Row counts over all partitions: written (ok), rejected (with reasons), total."""
    reasons = Counter()
    for r in reports:
        reasons.update(json.loads(r["reasons"] or "{}"))
    total = sum(r["rows"] for r in reports)
    rejected = sum(r["rejected"] for r in reports)
    return {"rows_total": total, "rows_written": total - rejected, "rows_rejected": rejected,
            "rejected_by_reason": dict(sorted(reasons.items())),
            "peak_rss_mb": max((r.get("peak_rss_mb") or 0.0 for r in reports), default=0.0)}


def commit_stage(stage: str, out_uri: str, run_id: str, reports: list[dict], config: dict, inputs: dict,
                 rows_in: int, timings: dict, extra: dict | None = None, replace: bool = False) -> dict:
    """Check rows in = written + rejected, then commit the attempt files and write ``_manifest.json``
    (``replace``: retire the dataset already there, only now that its successor is complete)."""
    s = summarize(reports)
    manifest = outputs.build_manifest(stage, config, inputs, rows_in, s["rows_written"], s["rows_rejected"],
                                      s["rejected_by_reason"], timings, extra=extra)
    committed = [{"partition": r["partition"], "path": r["path"], "rows": r["rows"]} for r in reports]
    return outputs.commit(out_uri, run_id, committed, manifest, replace)


def stage_parser(prog: str, doc: str):
    """argparse parser of a stage: description from the module docstring, plus the shared
    ``--out`` / ``--partitions`` / ``--overwrite`` options (added by :func:`add_output_args`)."""
    import argparse

    return argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def partition_count(text: str) -> int:
    """argparse type of ``--partitions``: an integer >= 1 (0 or a negative count is refused with the usage line,
    before anything is read or Spark starts)."""
    import argparse

    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: the number of Spark partitions must be an integer >= 1")
    return n


def add_output_args(p, what: str) -> None:
    """The options every Spark stage shares: where to write, how many partitions, overwrite."""
    p.add_argument("--out", required=True, help=f"output directory or s3:// URI for the {what}")
    p.add_argument("--partitions", type=partition_count, default=4, help="Spark partitions (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")


def progress_line(stage: str, n_rows: int, n_rejected: int, seconds: float) -> str:
    """The one line a stage prints when it finishes."""
    rate = n_rows / seconds if seconds > 0 else float("nan")
    return f"[{stage}] {n_rows} rows ({n_rejected} rejected) in {seconds:.1f} s = {rate:.1f} rows/s"
