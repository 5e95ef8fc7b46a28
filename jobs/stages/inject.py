"""Stage 4c: cut grz stamps from coadd bricks, inject lensed arcs, write stamps Parquet.

    dhs inject --manifest MANIFEST --coadds SKY --out STAMPS [--partitions N]

Everything else (generation config, bank paths) comes from the manifest's own
``_manifest.json``, so these arguments alone re-run the stage. Rows are repartitioned by
brick and sorted, so each partition loads each of its bricks once and holds one brick plus one
output batch in memory, whatever the partition size. Each manifest row gives exactly one output
row: bad data (missing band, corrupt FITS, off the brick edge, NaN pixels) gives a row with
``cutout_ok = 0`` and a ``reject_reason``, never a crash or a loss.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator

import pyarrow as pa

from jobs.runtime import outputs, stage, storage
from jobs.runtime.config import ExperimentConfig, config_from_dict
from jobs.runtime.schema import MANIFEST_SCHEMA, STAMP_SCHEMA
from jobs.stages.render_row import rejected_row, render_row

OUTPUT_BATCH_ROWS = 256  # one Parquet row group (~25 MB of stamps): bounded memory, fast reads
_BANK_CACHE: dict = {}


def open_banks(cfg: ExperimentConfig) -> dict:
    """Template banks the config names, opened once per executor process."""
    banks = {}
    for kind, path in (("cosmos", cfg.source.cosmos_bank), ("deep", cfg.source.deep_bank)):
        if path:
            if (kind, path) not in _BANK_CACHE:
                from dhs_gen.sources.banks import open_bank

                _BANK_CACHE[(kind, path)] = open_bank(kind, storage.local_copy(path) if storage.is_s3(path) else path)
            banks[kind] = _BANK_CACHE[(kind, path)]
    return banks


def inject_rows(rows: Iterable[dict], cfg: ExperimentConfig, coadd_root: str, git_sha: str) -> Iterator[dict]:
    """Manifest rows sorted by brick -> stamp rows, loading each brick once (pure Python; tests call it)."""
    from jobs.cutouts.coadds import cut_stamp, load_brick

    banks = open_banks(cfg)
    arc_cache: dict = {}
    brick, brick_name = None, object()
    for row in rows:
        if row["brickname"] != brick_name:
            brick = None  # release the previous brick before loading the next
            brick_name = row["brickname"]
            brick = load_brick(coadd_root, brick_name)
        try:
            cutout = cut_stamp(brick, row["ra"], row["dec"], cfg.stamp_size_pix)
            yield render_row(row, cutout, cfg, banks, git_sha, arc_cache)
        except Exception as err:  # noqa: BLE001 - a row must never take the partition down
            yield rejected_row(row, f"error:{type(err).__name__}:{err}"[:200], git_sha)


def inject_batches(batches: Iterable[pa.RecordBatch], cfg: ExperimentConfig, coadd_root: str,
                   git_sha: str) -> Iterator[pa.Table]:
    """Arrow manifest batches (sorted by split, brick) -> Arrow stamp tables of at most
    OUTPUT_BATCH_ROWS rows, each of one split (each becomes one Parquet row group)."""

    def rows():
        for batch in batches:
            yield from batch.to_pylist()

    buf = []
    for out in inject_rows(rows(), cfg, coadd_root, git_sha):
        if buf and out["split"] != buf[-1]["split"]:
            # One split per row group: the training reader skips the others' row groups unread.
            yield pa.Table.from_pylist(buf, schema=STAMP_SCHEMA)
            buf = []
        buf.append(out)
        if len(buf) >= OUTPUT_BATCH_ROWS:
            yield pa.Table.from_pylist(buf, schema=STAMP_SCHEMA)
            buf = []
    if buf:
        yield pa.Table.from_pylist(buf, schema=STAMP_SCHEMA)


def read_manifest_df(spark, manifest_uri: str):
    """The committed manifest as a DataFrame, read by the tasks themselves (works for s3:// too)."""
    files = outputs.dataset_files(manifest_uri)

    def read(batches):
        for batch in batches:
            for uri in batch.column("uri").to_pylist():
                yield from storage.read_parquet(uri).cast(MANIFEST_SCHEMA).to_batches()

    paths = spark.createDataFrame([(f,) for f in files] or [("",)], "uri string")
    if not files:
        paths = paths.limit(0)
    return paths.repartition(max(1, len(files))).mapInArrow(stage.with_storage_env(read),
                                                            stage.spark_schema(MANIFEST_SCHEMA))


def resolve_coadd_root(coadds_uri: str) -> str:
    """Accept the sky directory or its ``coadd/`` folder (DR10 layout ``coadd/<bri>/<brick>/``)."""
    inner = storage.join(coadds_uri, "coadd")
    return inner if storage.exists(inner) else coadds_uri


def run(manifest_uri: str, coadds_uri: str, out_uri: str, partitions: int = 4, overwrite: bool = False,
        spark=None) -> dict:
    """Run 4c with Spark and commit the stamps with ``_manifest.json``; returns that manifest."""
    from jobs.spark import get_spark

    t0 = time.perf_counter()
    m = outputs.require_input(manifest_uri, stage="4a_manifest")
    cfg = config_from_dict(m["config"])          # validated on the driver, before any task runs
    open_banks(cfg)                              # a wrong bank path fails here, not on executors
    outputs.prepare_output(out_uri, overwrite)
    coadd_root = resolve_coadd_root(coadds_uri)
    git_sha = outputs.git_sha()
    spark = spark or get_spark("dhs-4c-inject")
    df = read_manifest_df(spark, manifest_uri)
    # The split is a function of the brick, so sorting by split first keeps each brick's rows
    # together and lets a partition's output cut into row groups of one split each.
    df = df.repartition(partitions, "brickname").sortWithinPartitions("split", "brickname", "task_id")
    run_id, reports = stage.run_partitions(df, lambda b: inject_batches(b, cfg, coadd_root, git_sha),
                                           out_uri, STAMP_SCHEMA)
    seconds = time.perf_counter() - t0
    summary = stage.summarize(reports)
    extra = {"partitions": partitions, "task_seconds": sum(r["seconds"] for r in reports),
             "peak_worker_rss_mb": summary["peak_rss_mb"],
             "stamps_per_s": summary["rows_total"] / seconds if seconds else None}
    manifest = stage.commit_stage("4c_inject", out_uri, run_id, reports, m["config"],
                                  {"manifest": manifest_uri, "coadds": coadds_uri},
                                  rows_in=m["rows_written"] + m.get("rows_rejected", 0),
                                  timings={"total_s": seconds}, extra=extra)
    print(stage.progress_line("4c inject", summary["rows_total"], summary["rows_rejected"], seconds), file=sys.stderr)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    p = stage.stage_parser("dhs inject", __doc__)
    p.add_argument("--manifest", required=True, help="4a manifest directory or s3:// URI")
    p.add_argument("--coadds", required=True, help="coadd root (sky dir or its coadd/ folder; local or s3://)")
    stage.add_output_args(p, "stamps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    manifest = run(args.manifest, args.coadds, args.out, args.partitions, args.overwrite)
    print(f"stamps: {manifest['rows_written']} written, {manifest['rows_rejected']} rejected -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
