"""``dhs ensemble``: several checkpoints scored as one model (seed 000, option C).

    dhs ensemble --checkpoints A.pt B.pt [C.pt ...] --input STAMPS --out SCORES [--partitions N] [--overwrite]

Each member scores the input with ``dhs score`` (its own calibrated probability,
``sigmoid(logit / T)`` with the temperature fitted on its validation split), committed under
``SCORES/_members/<i>``; the ensemble's score is the mean of the members' calibrated
probabilities, row by row. A row is ``ok`` only when every member scored it (else it keeps the
first member's non-ok status and a null score). The output has the schema of ``dhs score`` output,
so ``dhs evaluate --scores SCORES`` evaluates the ensemble like one model, with its own report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dhs_gen.errors import InvalidValueError
from jobs.evaluation import score
from jobs.runtime import outputs, stage, storage

MEMBERS_DIR = "_members"


def combine(tables: list[pa.Table]) -> pa.Table:
    """Row-aligned member score tables -> the ensemble table (mean of the members' scores)."""
    first = tables[0]
    id_col = next(c for c in score.ID_COLUMNS if c in first.column_names)
    order = [pc.sort_indices(t, [(id_col, "ascending")]) for t in tables]
    tables = [t.take(o) for t, o in zip(tables, order, strict=True)]
    ids = tables[0].column(id_col)
    for t in tables[1:]:
        if not t.column(id_col).equals(ids):
            raise InvalidValueError("members", id_col, "every member must score the same rows")
    scores = np.stack([t.column("score").to_numpy(zero_copy_only=False).astype(float) for t in tables])
    status = [t.column("score_status").to_pylist() for t in tables]
    ok = np.all(np.array(status) == "ok", axis=0)
    mean = np.full(len(ok), np.nan)
    mean[ok] = scores[:, ok].mean(axis=0)
    first_bad = [next((s[i] for s in status if s[i] != "ok"), "ok") for i in range(len(ok))]
    out = tables[0]
    out = out.set_column(out.schema.get_field_index("score"), "score", pa.array(mean, pa.float64(), mask=~ok))
    return out.set_column(out.schema.get_field_index("score_status"), "score_status", pa.array(first_bad, pa.string()))


def run(checkpoints: list[str], input_uri: str, out_uri: str, partitions: int | None = None,
        overwrite: bool = False, spark=None) -> dict:
    """Score with every member, combine, commit; returns the ensemble's manifest."""
    if len(checkpoints) < 2:
        raise InvalidValueError("checkpoints", checkpoints, "an ensemble needs at least two checkpoints")
    t0 = time.perf_counter()
    outputs.require_input(input_uri)
    outputs.prepare_output(out_uri, overwrite, [input_uri, *checkpoints])
    members, tables = [], []
    for i, ckpt in enumerate(checkpoints):
        uri = storage.join(out_uri, MEMBERS_DIR, str(i))
        m = score.run(ckpt, input_uri, uri, partitions=partitions, overwrite=True, spark=spark)
        members.append({"checkpoint": ckpt, "scores": uri, "temperature": m["extra"]["temperature"]})
        tables.append(storage.read_parquet(outputs.dataset_files(uri)))
    table = combine(tables)
    counts = dict(sorted(zip(*np.unique(table.column("score_status").to_pylist(), return_counts=True),
                             strict=True)))
    return outputs.write_single_part(
        "ensemble", table, [], out_uri, {"checkpoints": checkpoints, "combine": "mean of calibrated probabilities"},
        {"input": input_uri, **{f"checkpoint_{i}": c for i, c in enumerate(checkpoints)}}, overwrite, {"total_s": time.perf_counter() - t0},
        extra={"members": members, "score_status": {str(k): int(v) for k, v in counts.items()},
               "score_definition": "mean over members of sigmoid(logit / temperature)"})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs ensemble", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--checkpoints", nargs="+", required=True, help="two or more checkpoints (local or s3://)")
    p.add_argument("--input", required=True, help="stamps or anchor dataset (directory with _manifest.json)")
    p.add_argument("--out", required=True, help="output directory (local or s3://)")
    p.add_argument("--partitions", type=stage.partition_count, default=None, help="Spark partitions per member")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    m = run(args.checkpoints, args.input, args.out, args.partitions, args.overwrite)
    print(json.dumps({"out": args.out, "rows": m["rows_written"], **m["extra"]}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
