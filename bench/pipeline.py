"""Stage 4c end to end in local Spark next to the kernel-only rate on the same tasks and cores.

Kernel-only: the per-row work of 4c (``jobs.stages.inject.inject_rows``: load brick, cut, render, noise,
artifacts) in two plain processes, one per core, without Spark, Arrow conversion or Parquet.
Spark: ``jobs.stages.inject.run`` on ``local[2]`` over the same committed manifest (read, shuffle by
brick, render, write, commit). The ratio is the share of the kernel rate that survives Spark
(target >= 70%). Peak memory per executor core is the Python worker's high-water mark, measured
with one partition (every row in one task) and with many small partitions: bounded by one brick
plus one output batch, it must not grow with partition size.
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
import time
from pathlib import Path

# Spark parallelism is one brick per task: the sky has more bricks than cores, as a survey does.
N_BRICKS, N_LRG, SIZE_PIX, PARTITIONS = 8, 15, 600, 8


def _kernel_worker(args):
    rows, cfg_dict, coadd_root = args
    from jobs.runtime.config import config_from_dict
    from jobs.stages.inject import inject_rows

    cfg = config_from_dict(cfg_dict)
    list(inject_rows(rows[:4], cfg, coadd_root, "bench"))  # warm imports and caches outside the clock
    t0 = time.perf_counter()
    n = sum(1 for _ in inject_rows(rows, cfg, coadd_root, "bench"))
    return n, time.perf_counter() - t0


def _prepare(work: Path, spark):
    from jobs.runtime.config import load_config
    from jobs.stages import manifest, sky

    sky.main(["--out", str(work / "sky"), "--n-bricks", str(N_BRICKS), "--n-lrg", str(N_LRG),
              "--size-pix", str(SIZE_PIX)])
    cfg = load_config("demo")
    manifest.run(str(work / "sky" / "parent_sample.parquet"), cfg, str(work / "manifest"), 2, spark=spark)
    return cfg


def _kernel_rate(work: Path, cfg) -> float:
    from jobs.runtime import outputs, storage

    table = storage.read_parquet(outputs.dataset_files(str(work / "manifest")))
    table = table.sort_by([("brickname", "ascending"), ("task_id", "ascending")])
    bricks = sorted(set(table.column("brickname").to_pylist()))
    rows = table.to_pylist()
    chunks = [[r for r in rows if r["brickname"] in bricks[i::2]] for i in range(2)]
    with mp.get_context("spawn").Pool(2) as pool:
        results = pool.map(_kernel_worker, [(c, cfg.to_dict(), str(work / "sky" / "coadd")) for c in chunks])
    n = sum(r[0] for r in results)
    return n, n / max(r[1] for r in results)  # both cores busy until the slower one ends


def _spark_run(work: Path, partitions: int, reuse: bool, tag: str):
    from jobs.spark import get_spark
    from jobs.stages import inject

    spark = get_spark(f"bench-4c-{tag}", master="local[2]",
                      conf={"spark.python.worker.reuse": "true" if reuse else "false"})
    try:
        # warm the JVM and the Python workers outside the clock, as the kernel side is warmed
        inject.run(str(work / "manifest"), str(work / "sky"), str(work / f"warm-{tag}"), partitions, spark=spark)
        t0 = time.perf_counter()
        m = inject.run(str(work / "manifest"), str(work / "sky"), str(work / f"stamps-{tag}"), partitions,
                       spark=spark)
        return m, time.perf_counter() - t0
    finally:
        spark.stop()


def run() -> str:
    from jobs.spark import get_spark

    lines = []
    with tempfile.TemporaryDirectory(prefix="dhs-bench-4c-") as tmp:
        work = Path(tmp)
        spark = get_spark("bench-4c-prepare", master="local[2]")
        cfg = _prepare(work, spark)
        spark.stop()
        n, kernel_rate = _kernel_rate(work, cfg)
        m, seconds = _spark_run(work, PARTITIONS, True, "rate")
        spark_rate = (m["rows_written"] + m["rows_rejected"]) / seconds
        lines.append(f"4c rows: {n} (demo config: sersic + hybrid sources, paired controls, artifacts; {N_BRICKS} bricks)")
        lines.append(f"4c kernel-only, 2 processes on 2 cores: {kernel_rate:.1f} rows/s")
        lines.append(f"4c local Spark end-to-end, local[2], {PARTITIONS} partitions: {spark_rate:.1f} rows/s")
        lines.append(f"4c Spark / kernel-only on the same cores: {spark_rate / kernel_rate:.2f} (target >= 0.70)")
        m1, _ = _spark_run(work, 1, False, "p1")
        m8, _ = _spark_run(work, 16, False, "p16")
        lines.append(f"peak Python worker memory: {m1['extra']['peak_worker_rss_mb']:.0f} MB with 1 partition "
                     f"({n} rows in one task), {m8['extra']['peak_worker_rss_mb']:.0f} MB with 16 partitions; "
                     f"ratio {m1['extra']['peak_worker_rss_mb'] / max(m8['extra']['peak_worker_rss_mb'], 1):.2f} (bounded: ~1)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(run())
