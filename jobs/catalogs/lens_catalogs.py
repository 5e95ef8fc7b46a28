"""External lens / hard-negative catalogs read into one schema, and merged across catalogs.

    dhs catalogs read --kind lenscat --input lenscat_catalog.csv --out lenscat.parquet [--rejects R.parquet]
    dhs catalogs merge --input a.parquet b.parquet ... --out merged.parquet [--radius-arcsec 2]
    dhs catalogs crossmatch --catalog IN.parquet --out OUT.parquet [--footprint survey-bricks.fits.gz]
    dhs catalogs crossmatch --catalog IN.parquet --brick-metadata ls_dr10_south_bricks_metadata.csv --output-dir DIR

Every reader returns a :class:`CatalogRead`: the rows in :data:`CATALOG_SCHEMA` and the rejected
rows in :data:`REJECT_SCHEMA` (catalog, line, reason), with ``rows_in = rows_out + rows_rejected``
checked on construction: a malformed row is reported, never silently dropped. ``source_row`` is
the 1-based line number in a text file (header lines counted) or the 1-based row of a FITS table.

Classes, most confident first: ``known_lens > candidate > ring > merger > other``.

Galaxy Zoo 2 (Willett+2013) rule. The odd-feature answers (task 08) are conditional on "is there
anything odd?" (task 06), so a class needs: odd "yes" fraction >= 0.223 (Willett+2013 Table 3
threshold for task 08), at least 5 odd-feature votes (the paper's N >= 20 leaves only 48 of the
19,761 Stripe-82 galaxies, whose tasks have fewer votes), and then a majority (>= 0.5) of the
odd-feature votes for ring -> ``ring``; else merger or disturbed -> ``merger``; lens-or-arc
majorities stay ``other`` (grade ``lens_or_arc``: they may be real lenses, so never negatives).
``class_score`` holds the winning vote fraction (used to rank hard negatives).

Merge rule (:func:`merge_catalogs`): rows are linked when within ``radius_arcsec`` (2" default)
and groups are the connected chains of links (friends-of-friends). One row per group; its
position, name and grade come from the most confident member (class rank, then catalog
precedence :data:`CATALOG_PRECEDENCE`, then line); ``z`` and ``theta_e_arcsec`` from the first
member in that order that has them; ``source_catalogs`` lists every catalog of the group.
Inputs need only ``ra`` and ``dec``; column names match in any case (``RA``/``DEC``; lenscat's
``RA [deg]``), other :data:`CATALOG_SCHEMA` columns a table lacks are null for its rows (e.g.
``z`` of a ``dhs hardneg collect`` table), extra columns are not carried. Rows without a usable
position (null, non-finite, outside [0, 360) x [-90, 90] deg) are counted by reason in the
merge report, never merged.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dhs_gen.errors import ChoiceError, InvalidValueError, check_choice, check_range

CLASSES = ("known_lens", "candidate", "ring", "merger", "other")
CLASS_RANK = {c: i for i, c in enumerate(CLASSES)}
CATALOG_PRECEDENCE = ("slacs", "stein2021_training", "lenscat", "stein2021_candidates", "zoobot_rings", "gz2")

CATALOG_SCHEMA = pa.schema([
    ("name", pa.string()),
    ("ra", pa.float64()),                  # deg, [0, 360)
    ("dec", pa.float64()),                 # deg, [-90, 90]
    ("z", pa.float64()),                   # lens (deflector) redshift; null when unknown
    ("theta_e_arcsec", pa.float64()),      # Einstein radius, arcsec; null when unknown
    ("grade", pa.string()),                # catalog's own grade (confident / probable / A / B / vote answer)
    ("class", pa.string()),                # one of CLASSES
    ("class_score", pa.float64()),         # vote fraction behind the class (Galaxy Zoo), else null
    ("lens_type", pa.string()),            # galaxy / group / cluster (lenscat), else null
    ("source_catalog", pa.string()),
    ("source_row", pa.int64()),            # 1-based line (text) or table row (FITS)
])
MERGED_SCHEMA = pa.schema(list(CATALOG_SCHEMA) + [
    pa.field("source_catalogs", pa.list_(pa.string())),
    pa.field("member_names", pa.list_(pa.string())),
    pa.field("n_members", pa.int32()),
])
REJECT_SCHEMA = pa.schema([("source_catalog", pa.string()), ("line", pa.int64()), ("reason", pa.string())])

GZ2_ODD_YES_MIN = 0.223
GZ2_MIN_ODD_VOTES = 5
GZ2_MAJORITY = 0.5


@dataclass(frozen=True)
class CatalogRead:
    """Rows read from one catalog file and the rows rejected, with ``rows_in`` = sum of both."""

    table: pa.Table
    rejects: pa.Table
    rows_in: int

    def __post_init__(self):
        if self.rows_in != self.table.num_rows + self.rejects.num_rows:
            raise InvalidValueError("rows_in", self.rows_in, f"must equal rows_out {self.table.num_rows} + "
                                    f"rows_rejected {self.rejects.num_rows}")

    def counts(self) -> dict:
        """``rows_in``, ``rows_out``, ``rows_rejected`` and rows per class."""
        classes = self.table.column("class").to_pylist()
        return {"rows_in": self.rows_in, "rows_out": self.table.num_rows, "rows_rejected": self.rejects.num_rows,
                "by_class": {c: classes.count(c) for c in CLASSES if c in classes}}


class _Collector:
    """Accumulates validated rows and rejects of one catalog."""

    def __init__(self, catalog: str):
        self.catalog, self.rows, self.rejects, self.n_in = catalog, [], [], 0

    def reject(self, line: int, reason: str) -> None:
        self.n_in += 1
        self.rejects.append({"source_catalog": self.catalog, "line": int(line), "reason": reason})

    def add(self, line: int, name, ra, dec, cls: str, grade=None, z=None, theta_e=None, score=None, lens_type=None):
        try:
            ra_v = check_range("ra", ra, 0.0, 360.0, hi_open=True)
            dec_v = check_range("dec", dec, -90.0, 90.0)
            check_choice("class", cls, CLASSES)
        except (ValueError, ChoiceError) as err:
            return self.reject(line, str(err))
        self.n_in += 1
        self.rows.append({"name": str(name), "ra": ra_v, "dec": dec_v, "z": _opt_float(z),
                          "theta_e_arcsec": _opt_float(theta_e), "grade": grade, "class": cls,
                          "class_score": _opt_float(score), "lens_type": lens_type,
                          "source_catalog": self.catalog, "source_row": int(line)})

    def result(self) -> CatalogRead:
        return CatalogRead(pa.Table.from_pylist(self.rows, CATALOG_SCHEMA),
                           pa.Table.from_pylist(self.rejects, REJECT_SCHEMA), self.n_in)


def _opt_float(value, lo: float = -math.inf) -> float | None:
    """Float of a value, or None for missing / sentinel (-99) / non-numeric / non-finite."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > max(lo, -98.0) else None


def _text_lines(path) -> Iterable[tuple[int, str]]:
    from jobs.runtime import storage

    text = storage.read_bytes(str(path)).decode("utf-8")
    return enumerate(text.splitlines(), start=1)


def read_lenscat(path) -> CatalogRead:
    """lenscat CSV (name, RA [deg], DEC [deg], zlens, type, grading, ref): confident -> known_lens, probable -> candidate."""
    out, grading_class = _Collector("lenscat"), {"confident": "known_lens", "probable": "candidate"}
    lines = list(_text_lines(path))
    if not lines:
        raise InvalidValueError("lenscat", str(path), "is empty: expected a header line and data lines")
    header = next(csv.reader([lines[0][1]]))
    col = {h: i for i, h in enumerate(header)}
    for want in ("name", "RA [deg]", "DEC [deg]", "zlens", "type", "grading"):
        if want not in col:
            raise InvalidValueError("lenscat header", header, f"must contain {want!r}")
    # one physical line, one record: a stray quote on one line must not swallow the lines after it
    for line, text in lines[1:]:
        try:
            rec = next(csv.reader([text], strict=True), [])
        except csv.Error as err:
            out.reject(line, f"unparseable CSV line ({err})")
            continue
        if len(rec) != len(header):
            out.reject(line, f"{len(rec)} fields, header has {len(header)}")
            continue
        grading = rec[col["grading"]].strip()
        if grading not in grading_class:
            out.reject(line, f"grading={grading!r} is not one of {list(grading_class)}")
            continue
        # zlens holds a number, or 'measured' / 'not measured' / '-' without the value; 0 is a placeholder
        out.add(line, rec[col["name"]], rec[col["RA [deg]"]], rec[col["DEC [deg]"]], grading_class[grading],
                grade=grading, z=_opt_float(rec[col["zlens"]], lo=0.0), lens_type=rec[col["type"]].strip() or None)
    return out.result()


def _whitespace_table(path, catalog: str, required: tuple[str, ...], sep: str | None):
    """Header (from the first non-empty line, ``#`` stripped) and (line, fields) of the data lines."""
    header, rows = None, []
    for line, text in _text_lines(path):
        if not text.strip():
            continue
        if header is None:
            header = text.lstrip("#").strip().split(sep)
            header = [h.strip() for h in header]
            missing = [r for r in required if r not in header]
            if missing:
                raise InvalidValueError(f"{catalog} header", header, f"must contain {missing}")
            continue
        if text.lstrip().startswith("#"):
            continue
        rows.append((line, [f.strip() for f in text.split(sep)]))
    if header is None:
        raise InvalidValueError(catalog, str(path), "has no header line")
    return {h: i for i, h in enumerate(header)}, len(header), rows


def read_slacs(path) -> CatalogRead:
    """SLACS (Sonnenfeld 2024) whitespace table with a ``#`` header: all known lenses, theta_Ein in arcsec."""
    out = _Collector("slacs")
    col, width, rows = _whitespace_table(path, "slacs", ("name", "RA", "dec", "zd", "theta_Ein"), None)
    for line, f in rows:
        if len(f) != width:
            out.reject(line, f"{len(f)} fields, header has {width}")
            continue
        out.add(line, f[col["name"]], f[col["RA"]], f[col["dec"]], "known_lens", grade="confident",
                z=_opt_float(f[col["zd"]], lo=0.0), theta_e=_opt_float(f[col["theta_Ein"]], lo=0.0))
    return out.result()


def _read_stein(path, catalog: str, training: bool) -> CatalogRead:
    out = _Collector(catalog)
    required = ("ra", "dec", "z_spec", "inds") + (() if training else ("grade",))
    col, width, rows = _whitespace_table(path, catalog, required, "\t")
    for line, f in rows:
        if len(f) != width:
            out.reject(line, f"{len(f)} fields, header has {width}")
            continue
        if training:
            cls, grade = "known_lens", "training"
        else:
            grade = f[col["grade"]]
            if grade not in ("A", "B"):
                out.reject(line, f"grade={grade!r} is not one of ['A', 'B']")
                continue
            cls = "candidate"
        # z_spec = -99 means no spectrum; photometric redshifts are not lens redshifts we trust here
        out.add(line, f"Stein2021:{f[col['inds']]}", f[col["ra"]], f[col["dec"]], cls, grade=grade,
                z=_opt_float(f[col["z_spec"]], lo=0.0))
    return out.result()


def read_stein_training(path) -> CatalogRead:
    """Stein+2021 lenses used for training (TSV): known_lens, grade 'training'."""
    return _read_stein(path, "stein2021_training", training=True)


def read_stein_candidates(path) -> CatalogRead:
    """Stein+2021 new candidates (TSV, grade A/B): candidate."""
    return _read_stein(path, "stein2021_candidates", training=False)


def gz2_class(odd_yes, n_odd_votes, ring, merger, disturbed, lens_or_arc) -> tuple[str, str, float | None]:
    """(class, grade, class_score) of one Galaxy Zoo 2 galaxy from vote fractions (module docstring rule)."""
    if not (odd_yes >= GZ2_ODD_YES_MIN and n_odd_votes >= GZ2_MIN_ODD_VOTES):
        return "other", "not_odd", None
    if ring >= GZ2_MAJORITY:
        return "ring", "ring", float(ring)
    if max(merger, disturbed) >= GZ2_MAJORITY:
        return "merger", "merger" if merger >= disturbed else "disturbed", float(max(merger, disturbed))
    if lens_or_arc >= GZ2_MAJORITY:
        return "other", "lens_or_arc", float(lens_or_arc)
    return "other", "odd_other", None


def read_gz2(path) -> CatalogRead:
    """Galaxy Zoo 2 Willett+2013 table 5 (FITS; ra/dec in degrees, float32): ring / merger / other."""
    from jobs.catalogs.crossmatch import open_fits

    out, prefix = _Collector("gz2"), "t08_odd_feature_"
    with open_fits(path) as hdul:
        data = hdul[1].data
        cols = {n: np.asarray(data[n], dtype=float) for n in
                ("ra", "dec", "t06_odd_a14_yes_fraction", "t06_odd_a14_yes_count", f"{prefix}a19_ring_fraction",
                 f"{prefix}a24_merger_fraction", f"{prefix}a21_disturbed_fraction",
                 f"{prefix}a20_lens_or_arc_fraction")}
        objid = np.asarray(data["objid"])
    for i in range(len(objid)):
        cls, grade, score = gz2_class(cols["t06_odd_a14_yes_fraction"][i], cols["t06_odd_a14_yes_count"][i],
                                      cols[f"{prefix}a19_ring_fraction"][i], cols[f"{prefix}a24_merger_fraction"][i],
                                      cols[f"{prefix}a21_disturbed_fraction"][i],
                                      cols[f"{prefix}a20_lens_or_arc_fraction"][i])
        out.add(i + 1, f"GZ2:{objid[i]}", cols["ra"][i], cols["dec"][i], cls, grade=grade, score=score)
    return out.result()


_JNAME = re.compile(r"^J(\d{2})(\d{2})(\d{2}(?:\.\d*)?)([+-])(\d{2})(\d{2})(\d{2}(?:\.\d*)?)$")


def radec_from_jname(jname: str) -> tuple[float, float]:
    """(ra, dec) in degrees from an IAU J-name ``Jhhmmss.ss+ddmmss.s``.

    Raises
    ------
    InvalidValueError
        Not a J-name, or minutes/seconds >= 60, hours >= 24, degrees > 90.
    """
    m = _JNAME.match(str(jname).strip())
    if not m:
        raise InvalidValueError("jname", jname, "must look like 'Jhhmmss.ss+ddmmss.s'")
    h, mi, s, sign, d, dm, ds = m.groups()
    h, mi, s, d, dm, ds = int(h), int(mi), float(s), int(d), int(dm), float(ds)
    if h >= 24 or mi >= 60 or s >= 60 or dm >= 60 or ds >= 60 or d > 90:
        raise InvalidValueError("jname", jname, "hours < 24, minutes and seconds < 60, degrees <= 90")
    dec = d + dm / 60.0 + ds / 3600.0
    return 15.0 * (h + mi / 60.0 + s / 3600.0), (-dec if sign == "-" else dec)


def read_zoobot_rings(path) -> CatalogRead:
    """Zoobot example ring catalog (CSV: id_str J-name, ring 0/1): ring or other."""
    out = _Collector("zoobot_rings")
    reader = csv.reader([text for _, text in _text_lines(path)])
    header = next(reader)
    col = {h: i for i, h in enumerate(header)}
    for want in ("id_str", "ring"):
        if want not in col:
            raise InvalidValueError("zoobot header", header, f"must contain {want!r}")
    for rec in reader:
        line = reader.line_num
        try:
            ra, dec = radec_from_jname(rec[col["id_str"]])
        except (InvalidValueError, IndexError) as err:
            out.reject(line, str(err))
            continue
        label = rec[col["ring"]].strip()
        if label not in ("0", "1"):
            out.reject(line, f"ring={label!r} is not one of ['0', '1']")
            continue
        out.add(line, rec[col["id_str"]], ra, dec, "ring" if label == "1" else "other",
                grade=f"ring={label}", score=1.0 if label == "1" else None)
    return out.result()


READERS: dict[str, Callable[..., CatalogRead]] = {
    "lenscat": read_lenscat,
    "slacs": read_slacs,
    "stein2021_training": read_stein_training,
    "stein2021_candidates": read_stein_candidates,
    "gz2": read_gz2,
    "zoobot_rings": read_zoobot_rings,
}
DEFAULT_FILES = {
    "lenscat": "lens_catalogs/lenscat_catalog.csv",
    "slacs": "lens_catalogs/SLACS_Sonnenfeld2024_table.cat",
    "stein2021_training": "lens_catalogs/stein2021_training_lenses.tsv",
    "stein2021_candidates": "lens_catalogs/stein2021_new_lens_candidates.tsv",
    "gz2": "galaxyzoo/gz2_willett2013_table5.fits.gz",
    "zoobot_rings": "galaxyzoo/zoobot_example_ring_catalog_basic.csv",
}


def read_catalog(kind: str, path) -> CatalogRead:
    """Read one catalog file with the reader registered under ``kind`` (see :data:`READERS`)."""
    return READERS[check_choice("kind", kind, READERS)](path)


_COLUMN_ALIASES = {"ra": ("ra", "ra [deg]"), "dec": ("dec", "dec [deg]")}


def conform_catalog(table: pa.Table, what: str = "catalog") -> tuple[pa.Table, list[str]]:
    """A catalog table in :data:`CATALOG_SCHEMA`, columns matched in any case; the names filled with nulls.

    Raises
    ------
    InvalidValueError
        No ``ra`` / ``dec`` column, or a column that cannot be cast to its schema type.
    """
    from jobs.catalogs.crossmatch import column_ci

    lower = {c.lower() for c in table.column_names}
    arrays, missing = [], []
    for f in CATALOG_SCHEMA:
        found = next((a for a in _COLUMN_ALIASES.get(f.name, (f.name,)) if a in lower), None)
        if found is None:
            if f.name in ("ra", "dec"):
                raise InvalidValueError(f"{what} columns", table.column_names, f"must include {f.name!r} (any case)")
            missing.append(f.name)
            arrays.append(pa.nulls(table.num_rows, f.type))
            continue
        col = column_ci(table, found, what)
        try:
            arrays.append(col.cast(f.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as err:
            raise InvalidValueError(f"{what} column {found!r}", str(col.type), f"must cast to {f.type} ({err})") from err
    return pa.Table.from_arrays(arrays, schema=CATALOG_SCHEMA), missing


def _position_problem(ra, dec) -> str | None:
    if ra is None or dec is None:
        return "null_position"
    if not (math.isfinite(ra) and math.isfinite(dec)):
        return "non_finite_position"
    if not (0.0 <= ra < 360.0 and -90.0 <= dec <= 90.0):
        return "position_out_of_range"
    return None


def merge_catalogs(tables: Iterable[pa.Table], radius_arcsec: float = 2.0, report: dict | None = None) -> pa.Table:
    """One row per object across catalogs (rule in the module docstring).

    Parameters
    ----------
    tables : iterable of pyarrow.Table
        ``ra``, ``dec`` (deg) and any of the other :data:`CATALOG_SCHEMA` columns, names in any case.
    radius_arcsec : float
        Linking radius, arcsec, in (0, 60].
    report : dict, optional
        Filled with ``rows_in``, ``columns_filled_null`` (per input), ``rows_without_position`` and
        ``rows_without_position_by_reason``.

    Returns
    -------
    pyarrow.Table
        :data:`MERGED_SCHEMA`, one row per group, ordered by the representative's (ra, dec).

    Raises
    ------
    InvalidValueError
        A table without ``ra`` / ``dec``, or a ``class`` not in :data:`CLASSES`.
    """
    from jobs.catalogs.crossmatch import friends_of_friends

    radius = check_range("radius_arcsec", radius_arcsec, 0.0, 60.0, lo_open=True)
    conformed, filled = [], []
    for i, t in enumerate(tables):
        ct, missing = conform_catalog(t, f"input {i}")
        conformed.append(ct)
        filled.append(missing)
    table = pa.concat_tables(conformed) if conformed else CATALOG_SCHEMA.empty_table()
    rows, dropped = [], {}
    for row in table.to_pylist():
        problem = _position_problem(row["ra"], row["dec"])
        if problem is not None:
            dropped[problem] = dropped.get(problem, 0) + 1
            continue
        if row["class"] is not None and row["class"] not in CLASS_RANK:
            raise InvalidValueError("class", row["class"], f"must be one of {list(CLASSES)} or null")
        rows.append(row)
    if report is not None:
        report.update({"rows_in": table.num_rows, "columns_filled_null": filled,
                       "rows_without_position": sum(dropped.values()),
                       "rows_without_position_by_reason": dict(sorted(dropped.items()))})
    if not rows:
        return MERGED_SCHEMA.empty_table()
    groups = friends_of_friends(np.array([r["ra"] for r in rows], float), np.array([r["dec"] for r in rows], float),
                                radius)
    precedence = {c: i for i, c in enumerate(CATALOG_PRECEDENCE)}
    members: dict[int, list[dict]] = {}
    for g, row in zip(groups, rows, strict=True):
        members.setdefault(int(g), []).append(row)
    merged = []
    for group in members.values():
        # a null class ranks after "other"; null catalog / row sort last
        group.sort(key=lambda r: (CLASS_RANK.get(r["class"], len(CLASSES)),
                                  precedence.get(r["source_catalog"], len(precedence)),
                                  r["source_catalog"] is None, r["source_catalog"] or "",
                                  r["source_row"] is None, r["source_row"] or 0))
        best = dict(group[0])
        for key in ("z", "theta_e_arcsec", "lens_type"):
            best[key] = next((r[key] for r in group if r[key] is not None), None)
        best["source_catalogs"] = sorted({r["source_catalog"] for r in group if r["source_catalog"] is not None})
        best["member_names"] = [r["name"] for r in group]
        best["n_members"] = len(group)
        merged.append(best)
    merged.sort(key=lambda r: (r["ra"], r["dec"], r["name"] or ""))
    return pa.Table.from_pylist(merged, MERGED_SCHEMA)


def _parse_args(argv):
    p = argparse.ArgumentParser(prog="dhs catalogs", description="external catalogs: read, merge, crossmatch")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("read", help="read one catalog file into the common schema")
    r.add_argument("--kind", required=True, choices=sorted(READERS))
    r.add_argument("--input", required=True)
    r.add_argument("--out", required=True, help="catalog Parquet file")
    r.add_argument("--rejects", help="rejected rows Parquet (default: OUT with .rejects.parquet)")
    m = sub.add_parser("merge", help="merge catalogs (`read` / `hardneg collect` output; Parquet, CSV or FITS; "
                       "ra, dec in any case, missing columns null) by sky position")
    m.add_argument("--input", required=True, nargs="+")
    m.add_argument("--out", required=True)
    m.add_argument("--radius-arcsec", type=float, default=2.0)
    x = sub.add_parser("crossmatch", help="add DR10 brickname, brick centre and brick pixel x/y")
    x.add_argument("--catalog", required=True, help="catalog (Parquet, CSV or FITS; RA/DEC in any case)")
    dest = x.add_mutually_exclusive_group(required=True)
    dest.add_argument("--out", help="output Parquet")
    dest.add_argument("--output-dir", help="output folder (the seed's form): writes crossmatched.parquet there")
    x.add_argument("--footprint", "--brick-metadata", dest="footprint",
                   help="brick table of the footprint (survey-bricks FITS, or the DR10 bricks metadata CSV / Parquet): "
                        "rows outside it go to <out>_outside_footprint.parquet")
    return p.parse_args(argv)


def catalogs_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dhs catalogs read|merge|crossmatch``; prints counts as JSON."""
    import json

    from jobs.runtime import storage

    args = _parse_args(argv)
    if args.cmd == "read":
        res = read_catalog(args.kind, args.input)
        storage.write_parquet(res.table, args.out)
        rejects = args.rejects or re.sub(r"\.parquet$", "", args.out) + ".rejects.parquet"
        storage.write_parquet(res.rejects, rejects)
        report = {"kind": args.kind, "input": args.input, "out": args.out, "rejects": rejects, **res.counts()}
    elif args.cmd == "merge":
        counts: dict = {}
        merged = merge_catalogs([storage.read_table(u) for u in args.input], args.radius_arcsec, counts)
        storage.write_parquet(merged, args.out)
        counts["columns_filled_null"] = dict(zip(args.input, counts["columns_filled_null"], strict=True))
        report = {"inputs": args.input, "out": args.out, **counts, "rows_out": merged.num_rows,
                  "radius_arcsec": args.radius_arcsec}
    else:
        from jobs.catalogs.crossmatch import crossmatch_file

        out = args.out or storage.join(args.output_dir, "crossmatched.parquet")
        report = crossmatch_file(args.catalog, out, args.footprint)
    print(json.dumps(report, indent=2))
    return 0


main = catalogs_main

if __name__ == "__main__":
    sys.exit(catalogs_main())
