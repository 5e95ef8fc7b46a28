"""Stage 4c: cut grz stamps from coadd bricks or real host cutouts, inject lensed arcs, write stamps Parquet.

    dhs inject --manifest MANIFEST --coadds SKY --out STAMPS [--partitions N]
    dhs inject --manifest MANIFEST --hosts HOSTS --out STAMPS      # hosts of `dhs hosts build`

Everything else (generation config, bank paths) comes from the manifest's own
``_manifest.json``, so these arguments alone re-run the stage. The driver cuts the bricks (in name
order) into at most ``--partitions`` runs of similar row counts from the manifest's own parts; each
task reads the rows of its bricks (no shuffle; at most ``TASK_READ_ROWS`` manifest rows at a time), loads
each brick once and holds one brick plus one output batch of stamps in memory, whatever the partition
size. Each manifest row gives exactly one output
row: bad data (missing band, corrupt FITS, off the brick edge, NaN pixels) gives a row with
``cutout_ok = 0`` and a ``reject_reason``, never a crash or a loss.

With ``--hosts`` each manifest row is joined to its host row (by ``host_id``; a row without one is
rejected ``missing_host``), the host stamp is the central ``stamp_size_pix`` of the host's, and the
row renders through the same :func:`jobs.stages.render_row.render_row` as from a brick: a host cut
from a brick renders bit-identically to the brick.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dhs_gen.errors import InvalidValueError
from jobs.cutouts.coadds import HostStamp
from jobs.cutouts.cutout import BANDS
from jobs.cutouts.host_images import crop_stamp
from jobs.runtime import outputs, stage, storage
from jobs.runtime.config import InjectionConfig, config_from_dict
from jobs.runtime.schema import HOST_SCHEMA, MANIFEST_SCHEMA, STAMP_SCHEMA, decode_image
from jobs.stages.render_row import HostValues, rejected_row, render_row

OUTPUT_BATCH_ROWS = 256  # one Parquet row group (~25 MB of stamps): bounded memory, fast reads
#: The order a task processes manifest rows in: a brick's rows together (the split is the brick's), and each
#: split's rows together so that a task's output cuts into row groups of one split each.
ROW_ORDER = ("split", "brickname", "task_id")
_BANK_CACHE: dict = {}


def open_banks(cfg: InjectionConfig) -> dict:
    """Template banks the config names, opened once per executor process."""
    banks = {}
    for kind, path in (("cosmos", cfg.source.cosmos_bank), ("deep", cfg.source.deep_bank)):
        if path:
            if (kind, path) not in _BANK_CACHE:
                from dhs_gen.sources.banks import open_bank

                _BANK_CACHE[(kind, path)] = open_bank(kind, storage.local_copy(path) if storage.is_s3(path) else path)
            banks[kind] = _BANK_CACHE[(kind, path)]
    return banks


def inject_rows(rows: Iterable[dict], cfg: InjectionConfig, coadd_root: str, git_sha: str) -> Iterator[dict]:
    """Manifest rows sorted by brick -> stamp rows, loading each brick once (pure Python; tests call it)."""
    from jobs.cutouts.coadds import cut_stamp, load_brick

    banks = open_banks(cfg)
    arc_cache: dict = {}
    for brick_name, brick_rows in itertools.groupby(rows, key=lambda r: r["brickname"]):
        brick_rows = list(brick_rows)   # manifest rows only (no pixels): how many hosts decides how the brick is read
        hosts = {(r["ra"], r["dec"]) for r in brick_rows}
        brick = load_brick(coadd_root, brick_name, tiles=True, n_stamps=len(hosts), stamp_size_pix=cfg.stamp_size_pix)
        # the rows of a host (grid, replicates, its control) are adjacent (task_id starts with the host) and
        # share one cut, kept until the next host; render_row never writes into it
        cut_key, cutout, host_values = None, None, None
        for row in brick_rows:
            try:
                key = (row["ra"], row["dec"])
                if key != cut_key:   # all change together, or (when the cut raises) none
                    cut = cut_stamp(brick, row["ra"], row["dec"], cfg.stamp_size_pix)
                    cutout, cut_key, host_values = cut, key, HostValues(cut) if cut.ok else None
                yield render_row(row, cutout, cfg, banks, git_sha, arc_cache, host_values)
            except Exception as err:  # noqa: BLE001 - a row must never take the partition down
                yield rejected_row(row, f"error:{type(err).__name__}:{err}"[:200], git_sha)
        brick = cutout = host_values = None  # released before the next brick is loaded


#: Host columns joined onto manifest rows in 4c with --hosts: HOST_SCHEMA name -> joined name.
HOST_JOIN_COLUMNS = {c: f"host_{c}" for c in ("image", "invvar", "maskbits", "image_shape", "pixscale_arcsec", "dx_pix",
                                                "dy_pix", "psf_fwhm_g_arcsec", "psf_fwhm_r_arcsec", "psf_fwhm_z_arcsec")}


def host_stamp_of(row: dict, size_pix: int) -> HostStamp:
    """The host stamp of a manifest row joined to its host (HOST_JOIN_COLUMNS), cropped to ``size_pix``."""
    h = {c: row.pop(j) for c, j in HOST_JOIN_COLUMNS.items()}
    if h["image"] is None:
        return HostStamp(brickname=row.get("brickname") or "", bands=BANDS, size_pix=size_pix, ok=False,
                         reject_reason="missing_host")
    shape = tuple(h["image_shape"])
    full = HostStamp(brickname=row.get("brickname") or "", bands=BANDS, size_pix=shape[-1], ok=True,
                     image=decode_image(h["image"], shape), invvar=decode_image(h["invvar"], shape),
                     maskbits=None if h["maskbits"] is None else np.frombuffer(h["maskbits"], np.int32).reshape(shape[1:]),
                     psf_fwhm_arcsec=(h["psf_fwhm_g_arcsec"], h["psf_fwhm_r_arcsec"], h["psf_fwhm_z_arcsec"]),
                     dx_pix=h["dx_pix"], dy_pix=h["dy_pix"], pixscale_arcsec=h["pixscale_arcsec"])
    return crop_stamp(full, size_pix)


def inject_host_rows(rows: Iterable[dict], cfg: InjectionConfig, git_sha: str) -> Iterator[dict]:
    """Manifest rows joined to their hosts -> stamp rows (pure Python; tests call it)."""
    banks = open_banks(cfg)
    arc_cache: dict = {}
    for row in rows:
        try:
            stamp = host_stamp_of(row, cfg.stamp_size_pix)
            yield render_row(row, stamp, cfg, banks, git_sha, arc_cache)
        except Exception as err:  # noqa: BLE001 - a row must never take the partition down
            for j in HOST_JOIN_COLUMNS.values():
                row.pop(j, None)
            yield rejected_row(row, f"error:{type(err).__name__}:{err}"[:200], git_sha)


def inject_batches(batches: Iterable[pa.RecordBatch], cfg: InjectionConfig, coadd_root: str | None,
                   git_sha: str) -> Iterator[pa.Table]:
    """Arrow manifest batches (sorted by split, brick or host) -> Arrow stamp tables of at most
    OUTPUT_BATCH_ROWS rows, each of one split (each becomes one Parquet row group). Without a
    ``coadd_root`` the batches carry their host columns (``--hosts``)."""

    def rows():
        for batch in batches:
            yield from batch.to_pylist()

    out_rows = inject_rows(rows(), cfg, coadd_root, git_sha) if coadd_root else inject_host_rows(rows(), cfg, git_sha)
    buf = []
    for out in out_rows:
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


def read_dataset_df(spark, uri: str, schema: pa.Schema = MANIFEST_SCHEMA):
    """A committed dataset as a DataFrame of ``schema``, read by the tasks themselves (works for s3:// too)."""
    files = outputs.dataset_files(uri)

    def read(batches):
        for batch in batches:
            for part in batch.column("payload").to_pylist():
                yield from storage.read_parquet(part.decode()).cast(schema).to_batches()

    paths = stage.task_frame(spark, [f.encode() for f in files])
    return paths.mapInArrow(stage.with_storage_env(read), stage.spark_schema(schema))


def check_manifest_parts(manifest_uri: str, m: dict) -> dict[str, Counter]:
    """On the driver, before Spark: every part the manifest lists is there with its recorded rows (Parquet
    footers), and no task_id appears twice across the parts (64-bit hashes in memory, 8 bytes a task;
    a repeated hash is confirmed on the ids themselves). Returns the rows of each brick in each part."""
    import pandas as pd
    import pyarrow.parquet as pq

    recorded = m.get("file_rows") or {}
    hashes, ids_of, bricks_of = [], {}, {}
    for uri in outputs.dataset_files(manifest_uri):
        name = uri.rsplit("/", 1)[-1]
        fs, path = storage.resolve(uri)
        with fs.open_input_file(path) as f:
            cols = pq.ParquetFile(f).read(columns=["task_id", "brickname"])
        ids = cols.column("task_id").to_numpy(zero_copy_only=False)
        if name in recorded and int(recorded[name]) != len(ids):
            raise InvalidValueError("manifest part", uri,
                                    f"holds {len(ids)} rows, its _manifest.json records {recorded[name]}")
        hashes.append(pd.util.hash_array(ids.astype(object)))
        ids_of[uri] = ids
        counts = pc.value_counts(cols.column("brickname"))
        bricks_of[uri] = Counter(dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(),
                                          strict=True)))
    if not hashes:
        return bricks_of
    h = np.concatenate(hashes)
    values, counts = np.unique(h, return_counts=True)
    repeated = set(values[counts > 1].tolist())
    if repeated:
        candidates = [i for ids, hs in zip(ids_of.values(), hashes, strict=True) for i, x in zip(ids, hs, strict=True)
                      if int(x) in repeated]
        dup = sorted({i for i in candidates if candidates.count(i) > 1})
        if dup:
            raise InvalidValueError("manifest", manifest_uri, f"task_id {dup[0]!r} appears more than once "
                                    f"({len(dup)} repeated): a task must be planned once (re-run dhs manifest)")
    return bricks_of


#: Manifest rows a 4c task reads at once (~10 MB): it reads its bricks in runs of whole bricks up to this many
#: rows, so a task's memory stays bounded whatever its number of bricks.
TASK_READ_ROWS = 20_000


def bricks_are_grouped(bricks_of: dict[str, Counter]) -> bool:
    """Whether every brick's rows are in one part (as 4a writes them), so a task reads only its bricks' parts."""
    seen: set = set()
    for counts in bricks_of.values():
        if seen & counts.keys():
            return False
        seen |= counts.keys()
    return True


def brick_tasks(bricks_of: dict[str, Counter], partitions: int) -> list[bytes]:
    """4c's tasks as :func:`jobs.runtime.stage.task_rdd` payloads: the bricks in name order cut into at most
    ``partitions`` runs of similar row counts, each brick with its row count and the manifest parts holding it.

    Every brick is in exactly one task (its brick is loaded once); a manifest written by 4a holds whole
    bricks per part in brick order, so a task reads one or two parts.
    """
    rows, parts = Counter(), {}
    for uri, counts in bricks_of.items():
        for brick, n in counts.items():
            rows[brick] += n
            parts.setdefault(brick, []).append(uri)
    bricks = sorted(rows, key=lambda b: (b is None, b or ""))   # a row without a brick is rejected in its task
    return [json.dumps({"bricks": [[bricks[i], rows[bricks[i]], sorted(parts[bricks[i]])] for i in run]}).encode()
            for run in stage.balanced_runs([rows[b] for b in bricks], partitions)]


def task_row_chunks(task: dict) -> Iterator[pa.Table]:
    """The manifest rows of one :func:`brick_tasks` task, in runs of whole bricks of at most TASK_READ_ROWS rows
    (a bigger brick alone), each in :data:`ROW_ORDER`."""
    run, n = [], 0
    for brick, count, parts in task["bricks"]:
        if run and n + count > TASK_READ_ROWS:
            yield _read_bricks(run)
            run, n = [], 0
        run.append((brick, parts))
        n += count
    if run:
        yield _read_bricks(run)


def _read_bricks(bricks: list) -> pa.Table:
    """The rows of ``bricks`` ((name or None, [part uris]) pairs), sorted; other bricks' row groups are skipped
    by their statistics."""
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    names = [b for b, _ in bricks if b is not None]
    wanted = ds.field("brickname").isin(pa.array(names, pa.string()))
    if len(names) < len(bricks):
        wanted = wanted | ds.field("brickname").is_null()
    tables = []
    for uri in sorted({u for _, parts in bricks for u in parts}):
        fs, path = storage.resolve(uri)
        tables.append(pq.read_table(path, filesystem=fs, filters=wanted).cast(MANIFEST_SCHEMA))
    table = pa.concat_tables(tables) if tables else MANIFEST_SCHEMA.empty_table()
    return table.sort_by([(c, "ascending") for c in ROW_ORDER])


def inject_tasks(batches: Iterable[pa.RecordBatch], cfg: InjectionConfig, coadd_root: str,
                 git_sha: str) -> Iterator[pa.Table]:
    """:func:`brick_tasks` payloads -> Arrow stamp tables (:func:`inject_batches` over each run of a task's rows)."""
    for batch in batches:
        for payload in batch.column("payload").to_pylist():
            for rows in task_row_chunks(json.loads(payload)):
                yield from inject_batches(rows.to_batches(max_chunksize=OUTPUT_BATCH_ROWS), cfg, coadd_root, git_sha)


def resolve_coadd_root(coadds_uri: str) -> str:
    """Accept the sky directory or its ``coadd/`` folder (DR10 layout ``coadd/<bri>/<brick>/``)."""
    inner = storage.join(coadds_uri, "coadd")
    return inner if storage.exists(inner) else coadds_uri


def run(manifest_uri: str, coadds_uri: str | None, out_uri: str, partitions: int = 4, overwrite: bool = False,
        spark=None, hosts_uri: str | None = None) -> dict:
    """Run 4c with Spark and commit the stamps with ``_manifest.json``; returns that manifest.

    The host pixels come from the coadd bricks under ``coadds_uri`` or the host dataset ``hosts_uri``.
    """
    from jobs.spark import get_spark

    t0 = time.perf_counter()
    if (coadds_uri is None) == (hosts_uri is None):
        raise InvalidValueError("coadds/hosts", (coadds_uri, hosts_uri), "exactly one of --coadds and --hosts")
    m = outputs.require_input(manifest_uri, stage="4a_manifest")
    if hosts_uri:
        outputs.require_input(hosts_uri, stage="hosts")
    cfg = config_from_dict(m["config"])          # validated on the driver, before any task runs
    open_banks(cfg)                              # a wrong bank path fails here, not on executors
    coadd_root = resolve_coadd_root(coadds_uri) if coadds_uri else None
    if coadd_root and not storage.is_dir(coadd_root):
        raise InvalidValueError("coadds", coadds_uri, "no such coadd root: give the sky folder or its coadd/ "
                                "folder (local or s3://), e.g. the --dest of `dhs coadd-cache` + /coadd")
    bricks_of = check_manifest_parts(manifest_uri, m)
    outputs.prepare_output(out_uri, overwrite, (manifest_uri, coadds_uri, hosts_uri))
    git_sha = outputs.git_sha()
    spark = spark or get_spark("dhs-4c-inject")
    from pyspark.sql import functions as F

    if hosts_uri:
        hosts = read_dataset_df(spark, hosts_uri, HOST_SCHEMA).select(
            "host_id", *[F.col(c).alias(j) for c, j in HOST_JOIN_COLUMNS.items()])
        tasks = read_dataset_df(spark, manifest_uri).join(hosts, on="host_id", how="left")
        tasks = tasks.select(*MANIFEST_SCHEMA.names, *HOST_JOIN_COLUMNS.values())
        tasks = tasks.repartition(partitions, "host_id").sortWithinPartitions("split", "host_id", "task_id")
        process = lambda b: inject_batches(b, cfg, None, git_sha)   # noqa: E731
    elif bricks_are_grouped(bricks_of):
        # The driver cuts the bricks into tasks from the row counts it has just read (brick_tasks): no
        # shuffle of the manifest, no sampling job, and each task reads its own bricks' rows.
        tasks = stage.task_rdd(spark, brick_tasks(bricks_of, partitions))
        process = lambda b: inject_tasks(b, cfg, coadd_root, git_sha)   # noqa: E731
    else:
        # A manifest whose parts mix bricks (written before 4a planned by brick): every task would read every
        # part, so Spark shuffles the rows by brick instead (range partitions of whole bricks).
        print("[4c inject] the manifest's parts mix bricks: shuffling its rows by brick "
              "(re-run `dhs manifest` to write whole bricks per part and skip this)", file=sys.stderr)
        tasks = read_dataset_df(spark, manifest_uri).repartitionByRange(partitions, "brickname")
        tasks = tasks.sortWithinPartitions(*ROW_ORDER)
        process = lambda b: inject_batches(b, cfg, coadd_root, git_sha)   # noqa: E731
    run_id, reports = stage.run_partitions(tasks, process, out_uri, STAMP_SCHEMA)
    seconds = time.perf_counter() - t0
    summary = stage.summarize(reports)
    extra = {"partitions": partitions, "tasks": len(reports), "task_seconds": sum(r["seconds"] for r in reports),
             "peak_worker_rss_mb": summary["peak_rss_mb"],
             "stamps_per_s": summary["rows_total"] / seconds if seconds else None}
    manifest = stage.commit_stage("4c_inject", out_uri, run_id, reports, m["config"],
                                  {"manifest": manifest_uri, **({"hosts": hosts_uri} if hosts_uri else {"coadds": coadds_uri})},
                                  rows_in=m["rows_written"] + m.get("rows_rejected", 0),
                                  timings={"total_s": seconds}, extra=extra, replace=overwrite)
    print(stage.progress_line("4c inject", summary["rows_total"], summary["rows_rejected"], seconds), file=sys.stderr)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    p = stage.stage_parser("dhs inject", __doc__)
    p.add_argument("--manifest", required=True, help="4a manifest directory or s3:// URI")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--coadds", help="coadd root (sky dir or its coadd/ folder; local or s3://)")
    src.add_argument("--hosts", help="host dataset of `dhs hosts build` (real cutouts)")
    stage.add_output_args(p, "stamps")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    manifest = run(args.manifest, args.coadds, args.out, args.partitions, args.overwrite, hosts_uri=args.hosts)
    print(f"stamps: {manifest['rows_written']} written, {manifest['rows_rejected']} rejected -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
