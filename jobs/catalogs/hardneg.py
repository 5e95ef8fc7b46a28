"""Real hard negatives: model false positives, ring galaxies and mergers, away from known lenses (seed 004 §7).

    dhs hardneg collect --rings GZ2.parquet [--mergers GZ2.parquet] [--scores SCORES.parquet]
                        --known-lenses LENSCAT.parquet [--known-lenses SLACS.parquet ...] --out DIR

Sources and their training weights (seed): model false positives 3.0x, rings 2.0x, mergers 1.5x.
Per source, in this order:

1. selection: model scores ``>= min_score_threshold``; ring / merger catalogs keep rows of that
   ``class`` (a full Galaxy Zoo catalog can be given for both);
2. exclusion: rows within ``exclusion_radius_arcsec`` of ANY known-lens catalog row (confident or
   candidate: a probable lens is not a safe negative) are removed;
3. top-k: the ``top_k_per_source`` highest ``rank_score`` (model score, or the vote fraction behind
   the class) are kept, ties broken by name then source row (deterministic).

Then an object found by several sources (within ``dedupe_radius_arcsec``) is kept once, with the
highest weight, all its sources listed in ``sources``. The report counts every row of every
source: ``rows_in = selected_out + excluded_near_known_lens + over_top_k`` (+ ``not_selected``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dhs_gen.errors import ConfigError, InvalidValueError

SOURCES = ("model_fp", "ring", "merger")
DEFAULT_WEIGHTS = {"model_fp": 3.0, "ring": 2.0, "merger": 1.5}

HARDNEG_SCHEMA = pa.schema([
    ("name", pa.string()),
    ("ra", pa.float64()),                 # deg
    ("dec", pa.float64()),                # deg
    ("hardneg_source", pa.string()),      # model_fp | ring | merger (the highest-weight source)
    ("weight", pa.float64()),             # training weight of that source
    ("rank_score", pa.float64()),         # model score or vote fraction used for the top-k
    ("class", pa.string()),               # ring | merger | other (model FPs)
    ("source_catalog", pa.string()),
    ("source_row", pa.int64()),
    ("sources", pa.list_(pa.string())),   # every source that found this object
    ("nearest_known_lens_arcsec", pa.float64()),  # null when none within 1 deg
])


@dataclass(frozen=True)
class HardNegativeConfig:
    """Hard-negative selection (seed defaults); validated on construction.

    Attributes
    ----------
    min_score_threshold : float
        Model score (probability, [0, 1]) at or above which a non-lens counts as a false positive.
    top_k_per_source : int
        Most rows kept per source.
    exclusion_radius_arcsec : float
        No negative within this angle (arcsec) of a known lens or candidate.
    source_weights : dict
        Training weight per source (model_fp, ring, merger).
    dedupe_radius_arcsec : float
        Objects of several sources closer than this (arcsec) are one object.
    """

    min_score_threshold: float = 0.8
    top_k_per_source: int = 5000
    exclusion_radius_arcsec: float = 5.0
    source_weights: dict = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    dedupe_radius_arcsec: float = 1.0

    def __post_init__(self):
        if not 0.0 <= float(self.min_score_threshold) <= 1.0:
            raise ConfigError("min_score_threshold", self.min_score_threshold, "a probability in [0, 1]")
        if int(self.top_k_per_source) != self.top_k_per_source or self.top_k_per_source < 1:
            raise ConfigError("top_k_per_source", self.top_k_per_source, "an integer >= 1")
        if not 0.0 <= float(self.exclusion_radius_arcsec) <= 3600.0:
            raise ConfigError("exclusion_radius_arcsec", self.exclusion_radius_arcsec, "arcsec in [0, 3600]")
        if not 0.0 < float(self.dedupe_radius_arcsec) <= 60.0:
            raise ConfigError("dedupe_radius_arcsec", self.dedupe_radius_arcsec, "arcsec in (0, 60]")
        if set(self.source_weights) != set(SOURCES) or any(not float(w) > 0 for w in self.source_weights.values()):
            raise ConfigError("source_weights", self.source_weights, f"a positive weight for each of {list(SOURCES)}")


def _column(table: pa.Table, names: tuple[str, ...], default=None):
    for n in names:
        if n in table.column_names:
            return table.column(n).to_pylist()
    if default is None:
        raise InvalidValueError("table columns", table.column_names, f"must include one of {list(names)}")
    return [default] * table.num_rows


def _candidates(table: pa.Table, source: str, cfg: HardNegativeConfig) -> tuple[list[dict], int]:
    """Rows of one source passing its selection (step 1), and the count not selected."""
    ra, dec = _column(table, ("ra",)), _column(table, ("dec",))
    names = _column(table, ("name", "anchor_id", "task_id"), default="")
    catalog = _column(table, ("source_catalog",), default=source)
    line = _column(table, ("source_row",), default=-1)
    if source == "model_fp":
        score = _column(table, ("score",))
        labels = _column(table, ("label",), default=0)
        # a model FP is a non-lens with a high score; rows labelled as lenses are never negatives
        keep = [s is not None and s >= cfg.min_score_threshold and int(lab or 0) == 0
                for s, lab in zip(score, labels, strict=True)]
        cls = ["other"] * table.num_rows
    else:
        cls = _column(table, ("class",))
        score = _column(table, ("class_score",), default=0.0)
        keep = [c == source for c in cls]
    rows = [{"name": str(names[i]) if names[i] != "" else f"{catalog[i]}:{line[i] if line[i] != -1 else i}",
             "ra": float(ra[i]), "dec": float(dec[i]), "hardneg_source": source,
             "weight": float(cfg.source_weights[source]), "rank_score": float(score[i] or 0.0),
             "class": cls[i], "source_catalog": catalog[i], "source_row": int(line[i] if line[i] != -1 else i),
             "sources": [source]}
            for i in range(table.num_rows) if keep[i]]
    return rows, table.num_rows - len(rows)


def collect_hard_negatives(model_scores: pa.Table | None = None, ring_catalog: pa.Table | None = None,
                           merger_catalog: pa.Table | None = None, known_lenses=(),
                           config: HardNegativeConfig | None = None) -> tuple[pa.Table, dict]:
    """Select, exclude, rank and merge hard negatives (module docstring).

    Parameters
    ----------
    model_scores : pyarrow.Table, optional
        Inference scores on real objects: ``ra``, ``dec`` (deg), ``score`` ([0, 1]), optional
        ``label`` (1 = known lens: never a negative) and ``name`` / ``anchor_id``.
    ring_catalog, merger_catalog : pyarrow.Table, optional
        ``jobs.catalogs.lens_catalogs.CATALOG_SCHEMA`` rows; those of class ``ring`` / ``merger`` are used.
    known_lenses : pyarrow.Table or sequence of them
        Every row (any class) is a position to keep away from: ``ra``, ``dec`` in deg.
    config : HardNegativeConfig, optional

    Returns
    -------
    table : pyarrow.Table
        :data:`HARDNEG_SCHEMA`, sorted by (weight desc, rank_score desc, name).
    report : dict
        Per-source counts and the config.
    """
    from jobs.catalogs.crossmatch import friends_of_friends, nearest_within

    cfg = config or HardNegativeConfig()
    lens_tables = [known_lenses] if isinstance(known_lenses, pa.Table) else list(known_lenses)
    lens_ra = np.concatenate([np.asarray(t.column("ra").to_pylist(), float) for t in lens_tables] or [np.zeros(0)])
    lens_dec = np.concatenate([np.asarray(t.column("dec").to_pylist(), float) for t in lens_tables] or [np.zeros(0)])
    report = {"config": asdict(cfg), "n_known_lens_positions": int(lens_ra.size), "sources": {}}
    kept: list[dict] = []
    for source, table in zip(SOURCES, (model_scores, ring_catalog, merger_catalog), strict=True):
        if table is None:
            continue
        rows, n_not_selected = _candidates(table, source, cfg)
        ra = np.array([r["ra"] for r in rows], float)
        dec = np.array([r["dec"] for r in rows], float)
        _, sep = nearest_within(ra, dec, lens_ra, lens_dec, 3600.0)
        for r, s in zip(rows, sep, strict=True):
            r["nearest_known_lens_arcsec"] = None if np.isnan(s) else float(s)
        near = ~np.isnan(sep) & (sep <= cfg.exclusion_radius_arcsec)
        rows = [r for r, bad in zip(rows, near, strict=True) if not bad]
        rows.sort(key=lambda r: (-r["rank_score"], r["name"], r["source_row"]))
        top = rows[: int(cfg.top_k_per_source)]
        kept.extend(top)
        report["sources"][source] = {"rows_in": table.num_rows, "not_selected": n_not_selected,
                                     "excluded_near_known_lens": int(near.sum()),
                                     "over_top_k": len(rows) - len(top), "selected_out": len(top),
                                     "weight": float(cfg.source_weights[source])}
    merged = _dedupe(kept, cfg.dedupe_radius_arcsec, friends_of_friends)
    report["duplicates_merged"] = len(kept) - len(merged)
    report["rows_out"] = len(merged)
    report["rows_out_by_source"] = {s: sum(r["hardneg_source"] == s for r in merged) for s in SOURCES}
    return pa.Table.from_pylist(merged, HARDNEG_SCHEMA), report


def _dedupe(rows: list[dict], radius_arcsec: float, fof) -> list[dict]:
    if not rows:
        return []
    groups = fof([r["ra"] for r in rows], [r["dec"] for r in rows], radius_arcsec)
    best: dict[int, dict] = {}
    for g, r in zip(groups, rows, strict=True):
        g = int(g)
        if g not in best:
            best[g] = dict(r)
            continue
        srcs = sorted(set(best[g]["sources"]) | set(r["sources"]), key=SOURCES.index)
        if (r["weight"], r["rank_score"]) > (best[g]["weight"], best[g]["rank_score"]):
            best[g] = dict(r)
        best[g]["sources"] = srcs
    out = list(best.values())
    out.sort(key=lambda r: (-r["weight"], -r["rank_score"], r["name"]))
    return out


def write_hard_negatives(table: pa.Table, report: dict, out_dir: str) -> dict:
    """Write ``hard_neg_lookup.parquet`` and ``hard_neg_report.json`` under ``out_dir``; returns their URIs."""
    from jobs.runtime import storage

    paths = {"table": storage.join(out_dir, "hard_neg_lookup.parquet"),
             "report": storage.join(out_dir, "hard_neg_report.json")}
    storage.write_parquet(table, paths["table"])
    storage.write_json(paths["report"], report)
    return paths


def _read_many(uris) -> pa.Table | None:
    from jobs.runtime import storage

    if not uris:
        return None
    tables = [storage.read_parquet(u) for u in uris]
    return pa.concat_tables(tables, promote_options="default")


def hardneg_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dhs hardneg collect``; prints the report as JSON."""
    p = argparse.ArgumentParser(prog="dhs hardneg", description="collect real hard negatives (seed 004 §7)")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--scores", nargs="*", default=[], help="model scores Parquet (ra, dec, score[, label])")
    c.add_argument("--rings", nargs="*", default=[], help="catalog Parquet(s) (dhs catalogs read); class ring used")
    c.add_argument("--mergers", nargs="*", default=[], help="catalog Parquet(s); class merger used")
    c.add_argument("--known-lenses", nargs="+", required=True, help="catalog Parquet(s) of lenses and candidates")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--min-score", type=float, default=0.8)
    c.add_argument("--top-k", type=int, default=5000)
    c.add_argument("--exclusion-radius-arcsec", type=float, default=5.0)
    args = p.parse_args(argv)
    cfg = HardNegativeConfig(args.min_score, args.top_k, args.exclusion_radius_arcsec)  # fails before reading
    known = [_read_many([u]) for u in args.known_lenses]
    table, report = collect_hard_negatives(_read_many(args.scores), _read_many(args.rings),
                                           _read_many(args.mergers), known, cfg)
    report["outputs"] = write_hard_negatives(table, report, args.out)
    print(json.dumps(report, indent=2))
    return 0


def class_counts(table: pa.Table) -> dict:
    """Rows per ``hardneg_source`` of a hard-negative table."""
    vc = pc.value_counts(table.column("hardneg_source")).to_pylist()
    return {d["values"]: d["counts"] for d in vc}


main = hardneg_main

if __name__ == "__main__":
    sys.exit(hardneg_main())
