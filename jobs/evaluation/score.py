"""Score stamps or anchor cutouts with a trained checkpoint: one output row per input row.

    dhs score --checkpoint CKPT --input STAMPS --out SCORES [--batch-size N] [--mask core|outer]

Output rows carry the id (``task_id`` or ``anchor_id``), ``score`` (sigmoid probability in
[0, 1]), ``score_status`` and every input column except the pixel columns (``image``,
``invvar``). When the checkpoint carries a fitted temperature T (``extra["temperature"]``, see
:mod:`jobs.training.calibration`) the score is the calibrated ``sigmoid(logit / T)``; the
manifest records the T used (``extra.temperature``, null for the plain sigmoid). Rows that cannot be scored (``cutout_ok = 0``, no image, image bytes that do not
match ``image_shape``) are kept with a null score and their status, and counted: nothing is
dropped. Stamps of the seed's Gen5 pipeline, which carry a ``stamp_npz`` blob instead of ``image``,
are decoded with :func:`dhs_gen.validation.quality_checks.decode_stamp_npz` (g, r, z required:
``missing_band`` otherwise). Preprocessing is ``jobs.training.preprocess.normalize_stamps``, the one shared with training.

Leakage masks (Gen5-Prime gates) name the region that is *masked*, after normalisation, to
0 (the normalised sky level): ``--mask core`` blanks pixels whose centre is within
``--mask-radius-pix`` of the stamp centre (the model sees the outskirts only: "core masked");
``--mask outer`` blanks everything else (the model sees the core only: "core alone").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dhs_gen.augmentation.negatives import core_mask
from dhs_gen.errors import InvalidValueError, check_choice, check_range
from dhs_gen.validation.quality_checks import decode_stamp_npz
from jobs.runtime import stage, storage
from jobs.runtime.schema import decode_image
from jobs.training.model import DEVICES, resolve_device

ID_COLUMNS = ("task_id", "anchor_id")
MASKS = ("core", "outer")
DEFAULT_CORE_RADIUS_PIX = 5.0  # the seed's core-dropout radius (5 px = 1.31 arcsec at 0.262"/pix)
DEFAULT_BATCH_SIZE = 256
_MODEL_CACHE: dict = {}  # checkpoint URI -> (model, meta), one load per executor process


def apply_mask(x: np.ndarray, mask: str | None, radius_pix: float) -> np.ndarray:
    """Blank (set to 0) the ``core`` or the ``outer`` region of normalised stamps (N, B, H, W), in place."""
    if mask is None:
        return x
    check_choice("mask", mask, MASKS)
    radius_pix = check_range("radius_pix", radius_pix, 0.0, np.inf, lo_open=True)  # a 0-pixel mask masks nothing
    # The disc core dropout blanks in training, so the leakage gates blank exactly what it blanked.
    inside = core_mask(x.shape[-2], x.shape[-1], radius_pix)
    x[..., inside if mask == "core" else ~inside] = 0.0
    return x


def scored_schema(input_schema: pa.Schema) -> pa.Schema:
    """Output schema: the id column, ``score`` (float64), ``score_status``, then the other non-pixel columns."""
    names = [n for n in input_schema.names if n not in storage.PIXEL_COLUMNS]
    id_col = next((c for c in ID_COLUMNS if c in names), None)
    head = [input_schema.field(id_col)] if id_col else []
    rest = [input_schema.field(n) for n in names if n != id_col and n not in ("score", "score_status")]
    return pa.schema(head + [pa.field("score", pa.float64()), pa.field("score_status", pa.string())] + rest)


def _status_and_images(table: pa.Table) -> tuple[list[str], dict[tuple, list[int]], list]:
    """Per row: status; rows grouped by image shape; the decoded float32 images (None if unusable)."""
    n = table.num_rows
    images = table.column("image").to_pylist() if "image" in table.column_names else [None] * n
    shapes = table.column("image_shape").to_pylist() if "image_shape" in table.column_names else [None] * n
    legacy = table.column("stamp_npz").to_pylist() if "stamp_npz" in table.column_names else [None] * n
    ok_col = table.column("cutout_ok").to_pylist() if "cutout_ok" in table.column_names else [1] * n
    status, decoded, by_shape = [], [], {}
    for i in range(n):
        arr = None
        if ok_col[i] is not None and int(ok_col[i]) == 0:
            status.append("cutout_not_ok")
        elif images[i] is None and legacy[i] is not None:
            try:
                arr, bands = decode_stamp_npz(legacy[i])
                status.append(("ok" if np.all(np.isfinite(arr)) else "nonfinite_pixels") if bands == "grz"
                              else "missing_band")
            except ValueError:
                status.append("bad_image")
        elif images[i] is None or shapes[i] is None or len(shapes[i]) != 3:
            status.append("no_image")
        else:
            try:
                arr = decode_image(images[i], shapes[i])
                status.append("ok" if np.all(np.isfinite(arr)) else "nonfinite_pixels")
            except ValueError:
                status.append("bad_image")
        if status[-1] == "ok":
            by_shape.setdefault(tuple(arr.shape), []).append(i)
        decoded.append(arr if status[-1] == "ok" else None)
    return status, by_shape, decoded


def predict_proba(model, images: np.ndarray, mask: str | None = None,
                  radius_pix: float = DEFAULT_CORE_RADIUS_PIX, batch_size: int = DEFAULT_BATCH_SIZE,
                  temperature: float | None = None) -> np.ndarray:
    """Sigmoid probabilities of a model on raw stamps, temperature-scaled when a temperature is given.

    Parameters
    ----------
    model : torch.nn.Module
        Gives logits of shape (N,) for normalised inputs (N, B, H, W).
    images : ndarray (N, B, H, W)
        Stamps in nanomaggies per pixel.
    mask, radius_pix
        Optional leakage mask (see module doc) and its radius in pixels.
    batch_size : int
        Stamps per forward pass.
    temperature : float, optional
        T > 0 (dimensionless): probabilities are ``sigmoid(logit / T)``
        (:func:`jobs.training.calibration.calibrated_proba`). None: the plain sigmoid.

    Returns
    -------
    ndarray (N,) float64, probabilities in [0, 1].
    """
    import torch

    from jobs.training.calibration import calibrated_proba
    from jobs.training.preprocess import normalize_stamps

    out = np.empty(len(images), dtype=np.float64)
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = np.array(normalize_stamps(np.asarray(images[start:start + batch_size], dtype=np.float32)),
                         dtype=np.float32)  # a writable copy: the mask is applied in place
            x = apply_mask(x, mask, radius_pix)
            logits = model(torch.from_numpy(x).to(device)).reshape(-1)
            if temperature is None:
                out[start:start + len(x)] = torch.sigmoid(logits.double()).cpu().numpy()
            else:
                out[start:start + len(x)] = calibrated_proba(logits.double().cpu().numpy(), temperature)
    return out


def score_table(table: pa.Table, model, mask: str | None = None, radius_pix: float = DEFAULT_CORE_RADIUS_PIX,
                batch_size: int = DEFAULT_BATCH_SIZE, temperature: float | None = None) -> pa.Table:
    """Stamps or anchors (Arrow table) -> scored table in :func:`scored_schema` (pure; no Spark).

    Parameters
    ----------
    table : pyarrow.Table
        Rows with ``image`` bytes and ``image_shape`` (``jobs.runtime.schema``), images in nanomaggies.
    model : torch.nn.Module
        As in :func:`predict_proba`.
    mask, radius_pix, batch_size, temperature
        As in :func:`predict_proba`.

    Returns
    -------
    pyarrow.Table
        One row per input row, same order; ``score`` is null where ``score_status != "ok"``.
    """
    status, by_shape, decoded = _status_and_images(table)
    scores = np.full(table.num_rows, np.nan)
    for rows in by_shape.values():
        scores[rows] = predict_proba(model, np.stack([decoded[i] for i in rows]), mask, radius_pix, batch_size,
                                     temperature)
    schema = scored_schema(table.schema)
    columns = {n: table.column(n) for n in table.column_names if n in schema.names}
    columns["score"] = pa.array(scores, pa.float64(), mask=np.isnan(scores))
    columns["score_status"] = pa.array(status, pa.string())
    return pa.table([columns[n] for n in schema.names], schema=schema)


def load_model(checkpoint_uri: str, device: str = "cpu"):
    """(model, meta) of a checkpoint (local path or s3://) on ``device`` (cpu | cuda | auto), loaded once
    per process and cached."""
    from jobs.training.model import load_checkpoint, resolve_device

    key = (checkpoint_uri, str(resolve_device(device)))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = load_checkpoint(checkpoint_uri, map_location=resolve_device(device))
    return _MODEL_CACHE[key]


def model_temperature(checkpoint_uri: str) -> float | None:
    """The fitted temperature of a checkpoint (``extra["temperature"]``), or None for the plain sigmoid."""
    from jobs.training.calibration import checkpoint_temperature

    return checkpoint_temperature(load_model(checkpoint_uri)[1])


def _score_batches(batches: Iterable[pa.RecordBatch], checkpoint_uri: str, mask, radius_pix, batch_size,
                   device: str = "cpu"):
    import torch

    model, _ = load_model(checkpoint_uri, device)
    if next(model.parameters()).device.type == "cpu":
        torch.set_num_threads(1)  # one core per Spark task: executors run one task per core
    temperature = model_temperature(checkpoint_uri)
    for batch in batches:
        if batch.num_rows:
            yield from score_table(pa.Table.from_batches([batch]), model, mask, radius_pix, batch_size,
                                   temperature).to_batches()


def transform(df, checkpoint_uri: str, mask: str | None = None, radius_pix: float = DEFAULT_CORE_RADIUS_PIX,
              batch_size: int = DEFAULT_BATCH_SIZE):
    """DataFrame of stamps (or anchors) -> DataFrame of scores (:func:`scored_schema`), via ``mapInArrow``."""
    from pyspark.sql.pandas.types import to_arrow_schema

    out = scored_schema(to_arrow_schema(df.schema))
    return df.mapInArrow(lambda b: _score_batches(b, checkpoint_uri, mask, radius_pix, batch_size),
                         stage.spark_schema(out))


def _open_parquet(uri: str) -> pq.ParquetFile:
    fs, path = storage.resolve(uri)
    return pq.ParquetFile(fs.open_input_file(path))


def score_units(units: Iterable[pa.RecordBatch], checkpoint_uri: str, mask, radius_pix, batch_size,
                out_schema: pa.Schema, device: str = "cpu") -> Iterator[pa.Table]:
    """Batches of (uri, row_group) work units -> scored tables; reads ``batch_size`` stamps at a time."""
    def stamps():
        for unit in units:
            for uri, rg in zip(unit.column("uri").to_pylist(), unit.column("row_group").to_pylist(), strict=True):
                yield from _open_parquet(uri).iter_batches(batch_size=batch_size, row_groups=[rg])

    for batch in _score_batches(stamps(), checkpoint_uri, mask, radius_pix, batch_size, device):
        yield pa.Table.from_batches([batch]).cast(out_schema)


def run(checkpoint_uri: str, input_uri: str, out_uri: str, batch_size: int = DEFAULT_BATCH_SIZE,
        mask: str | None = None, radius_pix: float = DEFAULT_CORE_RADIUS_PIX, partitions: int | None = None,
        overwrite: bool = False, spark=None, device: str = "cpu") -> dict:
    """Score a committed stamps/anchor dataset with Spark and commit the scores; returns the manifest.

    ``device`` (cpu | cuda | auto) is where each executor runs the model.
    """
    from jobs.runtime import outputs
    from jobs.spark import get_spark

    t0 = time.perf_counter()
    if mask is not None:
        check_choice("mask", mask, MASKS)
    check_range("radius_pix", radius_pix, 0.0, np.inf, lo_open=True)
    batch_size = int(check_range("batch_size", batch_size, 1, 1 << 20))
    resolve_device(device)                           # cuda without a GPU fails here, before Spark starts
    temperature = model_temperature(checkpoint_uri)  # a bad checkpoint fails here, before Spark starts
    files = outputs.dataset_files(input_uri)
    units, rows_in, in_schema = [], 0, None
    for uri in files:
        pf = _open_parquet(uri)
        in_schema = in_schema or pf.schema_arrow
        rows_in += pf.metadata.num_rows
        units += [(uri, rg) for rg in range(pf.metadata.num_row_groups)]
    if in_schema is None:
        raise InvalidValueError("input", input_uri, "must be a dataset holding at least one Parquet part file")
    out_schema = scored_schema(in_schema)
    outputs.prepare_output(out_uri, overwrite, (input_uri, checkpoint_uri))
    spark = spark or get_spark("dhs-score")
    n_parts = max(1, partitions or min(len(units), 4 * spark.sparkContext.defaultParallelism))
    df = spark.createDataFrame(units, "uri string, row_group int").repartition(n_parts)
    run_id, reports = stage.run_partitions(
        df, lambda b: score_units(b, checkpoint_uri, mask, radius_pix, batch_size, out_schema, device), out_uri,
        out_schema)
    status = Counter()
    for r in reports:
        if r["path"]:
            status.update(_open_parquet(r["path"]).read(columns=["score_status"]).column(0).to_pylist())
    seconds = time.perf_counter() - t0
    config = {"checkpoint": checkpoint_uri, "batch_size": batch_size, "mask": mask, "mask_radius_pix": radius_pix,
              "device": device}
    extra = {"score_status": dict(sorted(status.items())), "n_scored": status.get("ok", 0),
             "temperature": temperature,
             "score_definition": "sigmoid(logit)" if temperature is None else "sigmoid(logit / temperature)"}
    manifest = stage.commit_stage("score", out_uri, run_id, reports, config,
                                  {"input": input_uri, "checkpoint": checkpoint_uri}, rows_in=rows_in,
                                  timings={"total_s": seconds}, extra=extra, replace=overwrite)
    print(stage.progress_line("score", rows_in, rows_in - status.get("ok", 0), seconds), file=sys.stderr)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs score", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--checkpoint", required=True, help="model checkpoint (local path or s3://)")
    p.add_argument("--input", required=True, help="stamps or anchor dataset (directory with _manifest.json)")
    p.add_argument("--out", required=True, help="output directory or s3:// URI")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"stamps per forward pass (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--mask", choices=MASKS, default=None, help="leakage mask: region blanked before scoring")
    p.add_argument("--mask-radius-pix", type=float, default=DEFAULT_CORE_RADIUS_PIX,
                   help=f"core radius in pixels (default {DEFAULT_CORE_RADIUS_PIX:g})")
    p.add_argument("--partitions", type=stage.partition_count, default=None,
                   help="Spark partitions (default: one per row group, capped)")
    p.add_argument("--device", choices=DEVICES, default="cpu", help="where executors run the model (default cpu)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    manifest = run(args.checkpoint, args.input, args.out, args.batch_size, args.mask, args.mask_radius_pix,
                   args.partitions, args.overwrite, device=args.device)
    print(json.dumps({"out": args.out, "rows_in": manifest.get("rows_in"), **manifest.get("extra", {})},
                     default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
