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
source: ``rows_in = not_selected + no_position + excluded_near_known_lens + over_top_k + selected_out``.
A selected row without a usable position (null / non-finite ``ra``, ``dec``, or outside
[0, 360) x [-90, 90] deg: e.g. scored DES hosts) is counted in ``no_position`` with its reason in
``no_position_by_reason``, never used. Column names of every input are matched in any case
(``RA``/``ra``; lenscat's ``RA [deg]`` too).

Python, as in the seed (paths to Parquet / CSV / FITS tables; writes ``output_dir`` when given)::

    table, report = collect_hard_negatives(model_scores_path="scores/", ring_catalog_path="gz2.parquet",
                                           merger_catalog_path="gz2.parquet", known_lens_path="lenscat.parquet",
                                           output_dir="./hard_negatives/", config=HardNegativeConfig())
"""

from __future__ import annotations

import argparse
import json
import math
import os
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
    ("grade", pa.string()),               # the input catalog's grade, null when it has none
    ("class_score", pa.float64()),        # the input catalog's class_score (vote fraction), else null
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


def _find(table: pa.Table, names: tuple[str, ...]):
    """The first of ``names`` present in ``table`` (any case), or None."""
    from jobs.catalogs.crossmatch import column_ci

    lower = {c.lower() for c in table.column_names}
    for n in names:
        if n.lower() in lower:
            return column_ci(table, n)
    return None


def _column(table: pa.Table, names: tuple[str, ...], default=None, what: str = "table"):
    col = _find(table, names)
    if col is not None:
        return col.to_pylist()
    if default is None:
        raise InvalidValueError(f"{what} columns", table.column_names, f"must include one of {list(names)} (any case)")
    return [default] * table.num_rows


RA_NAMES, DEC_NAMES = ("ra", "ra [deg]"), ("dec", "dec [deg]")


def _position_problem(ra, dec) -> str | None:
    """Why (ra, dec) in deg is not a usable position, or None when it is."""
    if ra is None or dec is None:
        return "null_position"
    try:
        ra, dec = float(ra), float(dec)
    except (TypeError, ValueError):
        return "non_numeric_position"
    if not (math.isfinite(ra) and math.isfinite(dec)):
        return "non_finite_position"
    if not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
        return "position_out_of_range"
    return None


def _candidates(table: pa.Table, source: str, cfg: HardNegativeConfig) -> tuple[list[dict], int, dict]:
    """Rows of one source passing its selection (step 1), the count not selected, and the
    selected rows without a usable position, by reason."""
    what = "model scores" if source == "model_fp" else f"{source} catalog"
    ra, dec = _column(table, RA_NAMES, what=what), _column(table, DEC_NAMES, what=what)
    names = _column(table, ("name", "anchor_id", "task_id"), default="")
    catalog = _column(table, ("source_catalog",), default=source)
    line = _column(table, ("source_row",), default=-1)
    grade = _column(table, ("grade",), default="")
    if source == "model_fp":
        score = _column(table, ("score",), what=what)
        labels = _column(table, ("label",), default=0)
        # a model FP is a non-lens with a high score; rows labelled as lenses are never negatives
        keep = [s is not None and s >= cfg.min_score_threshold and int(lab or 0) == 0
                for s, lab in zip(score, labels, strict=True)]
        cls, class_score = ["other"] * table.num_rows, [None] * table.num_rows
    else:
        # a catalog without a class column is a list of that class only (the seed's ring_galaxies.parquet)
        cls = _column(table, ("class",), default=source)
        class_score = _column(table, ("class_score",), default="")
        class_score = [None if v == "" else v for v in class_score]
        score = [v if v is not None else 0.0 for v in class_score]
        keep = [c == source for c in cls]
    rows, no_position = [], {}
    for i in range(table.num_rows):
        if not keep[i]:
            continue
        problem = _position_problem(ra[i], dec[i])
        if problem is not None:
            no_position[problem] = no_position.get(problem, 0) + 1
            continue
        row_no = int(line[i]) if line[i] not in (-1, None) else i
        cat = catalog[i] if catalog[i] is not None else source
        rows.append({"name": str(names[i]) if names[i] not in ("", None) else f"{cat}:{row_no}",
                     "ra": float(ra[i]), "dec": float(dec[i]), "hardneg_source": source,
                     "weight": float(cfg.source_weights[source]), "rank_score": float(score[i] or 0.0),
                     "class": cls[i], "grade": None if grade[i] in ("", None) else str(grade[i]),
                     "class_score": None if class_score[i] is None else float(class_score[i]),
                     "source_catalog": cat, "source_row": row_no, "sources": [source]})
    n_not_selected = table.num_rows - sum(keep)
    return rows, n_not_selected, no_position


def _as_table(value, what: str) -> pa.Table | None:
    """A table, or one read from a path (Parquet file or dataset folder, CSV, FITS)."""
    from jobs.runtime import storage

    if value is None or isinstance(value, pa.Table):
        return value
    if isinstance(value, (str, os.PathLike)):
        return storage.read_table(os.fspath(value))
    raise InvalidValueError(what, type(value).__name__, "must be a pyarrow.Table or a path to a table file")


def _pick(table, path, what: str):
    if table is not None and path is not None:
        raise InvalidValueError(f"{what}_path", path, f"give {what} as a table or as a path, not both")
    return _as_table(path if path is not None else table, what)


def collect_hard_negatives(model_scores: pa.Table | None = None, ring_catalog: pa.Table | None = None,
                           merger_catalog: pa.Table | None = None, known_lenses=(),
                           config: HardNegativeConfig | None = None, *, model_scores_path=None,
                           ring_catalog_path=None, merger_catalog_path=None, known_lens_path=None,
                           output_dir: str | None = None) -> tuple[pa.Table, dict]:
    """Select, exclude, rank and merge hard negatives (module docstring).

    Each input is a table or a path (Parquet file or dataset folder, CSV, FITS); the ``*_path``
    keywords are the seed's names for the same inputs (``known_lens_path``: one path or a list).

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
    output_dir : str, optional
        When given, the table and report are written there (:func:`write_hard_negatives`) and
        ``report["outputs"]`` holds their URIs.

    Returns
    -------
    table : pyarrow.Table
        :data:`HARDNEG_SCHEMA`, sorted by (weight desc, rank_score desc, name).
    report : dict
        Per-source counts and the config.
    """
    from jobs.catalogs.crossmatch import friends_of_friends, nearest_within

    cfg = config or HardNegativeConfig()
    if not isinstance(cfg, HardNegativeConfig):
        raise InvalidValueError("config", type(cfg).__name__, "must be a HardNegativeConfig")
    model_scores = _pick(model_scores, model_scores_path, "model_scores")
    ring_catalog = _pick(ring_catalog, ring_catalog_path, "ring_catalog")
    merger_catalog = _pick(merger_catalog, merger_catalog_path, "merger_catalog")
    if known_lens_path is not None:
        if known_lenses is not None and (isinstance(known_lenses, pa.Table) or len(known_lenses)):
            raise InvalidValueError("known_lens_path", known_lens_path, "give known lenses as tables or paths, not both")
        known_lenses = known_lens_path
    if known_lenses is None:
        known_lenses = ()
    if isinstance(known_lenses, (pa.Table, str, os.PathLike)):
        known_lenses = [known_lenses]
    lens_tables = [_as_table(t, "known_lenses") for t in known_lenses]
    lens_ra, lens_dec, n_lens_unusable = [], [], 0
    for t in lens_tables:
        for r, d in zip(_column(t, RA_NAMES, what="known lenses"), _column(t, DEC_NAMES, what="known lenses"),
                        strict=True):
            if _position_problem(r, d) is None:
                lens_ra.append(float(r))
                lens_dec.append(float(d))
            else:
                n_lens_unusable += 1
    lens_ra, lens_dec = np.asarray(lens_ra, float), np.asarray(lens_dec, float)
    report = {"config": asdict(cfg), "n_known_lens_positions": int(lens_ra.size),
              "n_known_lens_rows_without_position": n_lens_unusable, "sources": {}}
    kept: list[dict] = []
    for source, table in zip(SOURCES, (model_scores, ring_catalog, merger_catalog), strict=True):
        if table is None:
            continue
        rows, n_not_selected, no_position = _candidates(table, source, cfg)
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
                                     "no_position": sum(no_position.values()),
                                     "no_position_by_reason": dict(sorted(no_position.items())),
                                     "excluded_near_known_lens": int(near.sum()),
                                     "over_top_k": len(rows) - len(top), "selected_out": len(top),
                                     "weight": float(cfg.source_weights[source])}
        if source != "model_fp" and _find(table, ("class",)) is None:
            report["sources"][source]["class_column"] = f"absent: every row taken as {source}"
    merged = _dedupe(kept, cfg.dedupe_radius_arcsec, friends_of_friends)
    report["duplicates_merged"] = len(kept) - len(merged)
    report["rows_out"] = len(merged)
    report["rows_out_by_source"] = {s: sum(r["hardneg_source"] == s for r in merged) for s in SOURCES}
    table = pa.Table.from_pylist(merged, HARDNEG_SCHEMA)
    if output_dir is not None:
        report["outputs"] = write_hard_negatives(table, report, os.fspath(output_dir))
    return table, report


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
    """Several table files (Parquet / CSV / FITS) as one table; columns of the same name in
    different cases are one column (the first file's spelling), missing ones null-filled."""
    from jobs.runtime import storage

    if not uris:
        return None
    tables = [storage.read_table(u) for u in uris]
    spelling: dict[str, str] = {}
    for t in tables:
        for c in t.column_names:
            spelling.setdefault(c.lower(), c)
    tables = [t.rename_columns([spelling[c.lower()] for c in t.column_names]) for t in tables]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise InvalidValueError("inputs", list(uris), f"must have compatible column types ({err})") from err


def hardneg_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dhs hardneg collect``; prints the report as JSON."""
    p = argparse.ArgumentParser(prog="dhs hardneg", description="collect real hard negatives (seed 004 §7)")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--scores", "--model-scores", nargs="*", default=[],
                   help="model scores (`dhs score` output: ra, dec, score[, label]); rows without a position "
                   "are counted in the report (no_position), never used")
    c.add_argument("--rings", "--ring-catalog", nargs="*", default=[], help="catalog(s) (dhs catalogs read); class ring used "
                   "(a catalog without a class column is all rings)")
    c.add_argument("--mergers", "--merger-catalog", nargs="*", default=[], help="catalog(s); class merger used")
    c.add_argument("--known-lenses", nargs="+", required=True,
                   help="catalog(s) of lenses and candidates (Parquet / CSV / FITS; ra, dec in any case)")
    c.add_argument("--out", "--output-dir", required=True, help="output directory")
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
