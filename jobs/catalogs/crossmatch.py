"""Sky matching (KD-tree on unit vectors) and the DR10 brick cross-match of a catalog.

    dhs catalogs crossmatch --catalog IN.parquet --out OUT.parquet [--footprint survey-bricks.fits.gz]

Positions are matched on the unit sphere: two points ``theta`` apart are ``2 sin(theta / 2)``
apart as 3-vectors (the chord), so a Euclidean KD-tree radius query on unit vectors is an exact
angular-radius query, with no RA wrap-around or pole special cases.

The brick cross-match adds, for every row, the DR10 brick that holds it (``dhs_gen.survey.bricks``, the
exact Legacy Surveys grid), the brick centre and the row's pixel position in that brick's coadd
TAN WCS (3600 x 3600 at 0.262"/pix). Pixel positions are 0-based (numpy / legacypipe ``bx, by``
convention: the centre of the first pixel is 0); add 1 for FITS 1-based pixels. Rows whose brick
is not in a given footprint table are flagged ``in_footprint = False``, never dropped.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.survey import bricks

ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0

BRICK_COLUMNS = [
    pa.field("brickname", pa.string()),
    pa.field("brick_ra", pa.float64()),       # brick centre, deg
    pa.field("brick_dec", pa.float64()),      # deg
    pa.field("brick_x_pix", pa.float64()),    # 0-based column in the brick's 3600 x 3600 coadd
    pa.field("brick_y_pix", pa.float64()),    # 0-based row
    pa.field("in_footprint", pa.bool_()),     # brick listed in the footprint table (True when none given)
]


def unit_vectors(ra_deg, dec_deg) -> np.ndarray:
    """(N, 3) unit vectors of sky positions given in degrees."""
    ra = np.deg2rad(np.asarray(ra_deg, dtype=float))
    dec = np.deg2rad(np.asarray(dec_deg, dtype=float))
    cos_dec = np.cos(dec)
    return np.stack([cos_dec * np.cos(ra), cos_dec * np.sin(ra), np.sin(dec)], axis=-1).reshape(-1, 3)


def chord_from_arcsec(radius_arcsec: float) -> float:
    """Chord length (unit-sphere units) of an angular separation in arcsec."""
    radius = check_range("radius_arcsec", radius_arcsec, 0.0, 180.0 * 3600.0)
    return 2.0 * np.sin(radius / ARCSEC_PER_RAD / 2.0)


def separation_arcsec_from_chord(chord) -> np.ndarray:
    """Angular separation (arcsec) from chord lengths between unit vectors."""
    return 2.0 * np.arcsin(np.clip(np.asarray(chord, dtype=float) / 2.0, 0.0, 1.0)) * ARCSEC_PER_RAD


def match_within(ra1_deg, dec1_deg, ra2_deg, dec2_deg, radius_arcsec: float):
    """All pairs (i in set 1, j in set 2) closer than ``radius_arcsec``.

    Parameters
    ----------
    ra1_deg, dec1_deg, ra2_deg, dec2_deg : array-like of float
        Positions of the two sets, deg.
    radius_arcsec : float
        Matching radius, arcsec (pairs at exactly the radius are included).

    Returns
    -------
    i1, i2 : ndarray of int
        Indices of matched pairs, sorted by (i1, separation).
    sep_arcsec : ndarray of float
        Their separations, arcsec.
    """
    v1, v2 = unit_vectors(ra1_deg, dec1_deg), unit_vectors(ra2_deg, dec2_deg)
    if len(v1) == 0 or len(v2) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    chord = chord_from_arcsec(radius_arcsec)
    # a hair more than the chord so that float rounding never loses a pair at the radius
    hits = cKDTree(v2).query_ball_point(v1, r=chord * (1 + 1e-12) + 1e-15)
    i1 = np.repeat(np.arange(len(v1)), [len(h) for h in hits])
    i2 = np.fromiter((j for h in hits for j in h), dtype=int, count=len(i1))
    sep = separation_arcsec_from_chord(np.linalg.norm(v1[i1] - v2[i2], axis=1))
    keep = sep <= radius_arcsec
    i1, i2, sep = i1[keep], i2[keep], sep[keep]
    order = np.lexsort((sep, i1))
    return i1[order], i2[order], sep[order]


def nearest_within(ra_deg, dec_deg, ref_ra_deg, ref_dec_deg, radius_arcsec: float):
    """For each position, the nearest reference position within ``radius_arcsec``.

    Returns
    -------
    index : ndarray of int
        Index into the reference set, -1 where none is within the radius.
    sep_arcsec : ndarray of float
        Separation to it, arcsec (NaN where none).
    """
    v = unit_vectors(ra_deg, dec_deg)
    index, sep = np.full(len(v), -1), np.full(len(v), np.nan)
    ref = unit_vectors(ref_ra_deg, ref_dec_deg)
    if len(v) == 0 or len(ref) == 0:
        return index, sep
    dist, j = cKDTree(ref).query(v, k=1)
    s = separation_arcsec_from_chord(dist)
    ok = s <= radius_arcsec
    index[ok], sep[ok] = j[ok], s[ok]
    return index, sep


def friends_of_friends(ra_deg, dec_deg, radius_arcsec: float) -> np.ndarray:
    """Group label per position: positions linked by chains of pairs within ``radius_arcsec`` share one.

    Labels are 0 .. n_groups-1, numbered by the first member's index (stable for a given order).
    """
    v = unit_vectors(ra_deg, dec_deg)
    n = len(v)
    if n == 0:
        return np.zeros(0, dtype=int)
    pairs = cKDTree(v).query_pairs(r=chord_from_arcsec(radius_arcsec), output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber by first appearance so labels follow the input order
    _, first = np.unique(labels, return_index=True)
    rank = np.empty(len(first), dtype=int)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[labels]


def read_footprint(uri: str) -> set[str]:
    """Brick names of a ``survey-bricks``-style table (column ``brickname``, any case): FITS, CSV or Parquet."""
    from jobs.runtime import storage

    table = storage.read_table(uri)
    return {str(n).strip() for n in column_ci(table, "brickname", "footprint").to_pylist()}


def open_fits(uri):
    """``astropy.io.fits`` HDU list of a local or ``s3://`` FITS file, gzip-compressed or not."""
    import gzip
    import io

    from astropy.io import fits

    from jobs.runtime import storage

    data = storage.read_bytes(str(uri))
    if data[:2] == b"\x1f\x8b":  # gzip magic: .fits.gz tables are whole-file compressed
        data = gzip.decompress(data)
    return fits.open(io.BytesIO(data))


def brick_pixels(ra_deg, dec_deg, brick_ra_deg, brick_dec_deg) -> tuple[np.ndarray, np.ndarray]:
    """0-based pixel (x, y) of positions in the 3600 x 3600 DR10 coadd of the brick centred at (brick_ra, brick_dec).

    The gnomonic (TAN) projection of ``dhs_gen.survey.bricks.brick_wcs`` written out, vectorised over rows
    (one astropy WCS per brick is ~100x slower for catalogs spread over many bricks; tests check
    this against astropy): standard coordinates ``xi, eta`` (deg) about the brick centre, then
    ``x = CRPIX - 1 - xi / s``, ``y = CRPIX - 1 + eta / s`` with ``CRPIX = (3600 + 1) / 2`` and
    ``s = 0.262 / 3600`` deg per pixel (RA increases to the left).
    """
    ra, dec = np.deg2rad(np.asarray(ra_deg, float)), np.deg2rad(np.asarray(dec_deg, float))
    ra0, dec0 = np.deg2rad(np.asarray(brick_ra_deg, float)), np.deg2rad(np.asarray(brick_dec_deg, float))
    dra = ra - ra0
    cos_c = np.sin(dec0) * np.sin(dec) + np.cos(dec0) * np.cos(dec) * np.cos(dra)
    xi = np.rad2deg(np.cos(dec) * np.sin(dra) / cos_c)
    eta = np.rad2deg((np.cos(dec0) * np.sin(dec) - np.sin(dec0) * np.cos(dec) * np.cos(dra)) / cos_c)
    scale = PIXSCALE_DR10_ARCSEC / 3600.0
    crpix0 = (bricks.DR10_BRICK_SIZE_PIX + 1) / 2.0 - 1.0
    return crpix0 - xi / scale, crpix0 + eta / scale


def column_ci(table: pa.Table, name: str, what: str = "catalog"):
    """The column ``name`` matched case-insensitively (Legacy Surveys catalogs spell ``RA``/``DEC``)."""
    cols = {c.lower(): c for c in table.column_names}
    if name.lower() not in cols:
        raise InvalidValueError(what, table.column_names, f"needs a {name!r} column (any case)")
    return table.column(cols[name.lower()])


def crossmatch_bricks(table: pa.Table, footprint: set[str] | None = None) -> pa.Table:
    """Add ``brickname``, brick centre, brick pixel x/y and ``in_footprint`` to a catalog table.

    Parameters
    ----------
    table : pyarrow.Table
        Rows with ``ra``, ``dec`` in degrees, any case (e.g. ``RA``/``DEC`` of a DR10 sweep, or
        ``jobs.catalogs.lens_catalogs.CATALOG_SCHEMA``); existing brick columns, in any case, are replaced.
    footprint : set of str, optional
        Brick names of the survey footprint; without it every row with a position is ``in_footprint``.

    Returns
    -------
    pyarrow.Table
        The input columns (same rows, same order) followed by :data:`BRICK_COLUMNS`; a row without a
        finite position has null brick columns and ``in_footprint`` False.
    """
    ra = column_ci(table, "ra").to_numpy(zero_copy_only=False).astype(float)
    dec = column_ci(table, "dec").to_numpy(zero_copy_only=False).astype(float)
    ok = np.isfinite(ra) & np.isfinite(dec) & (np.abs(dec) <= 90.0)
    names = np.full(len(ra), None, dtype=object)
    brick_ra, brick_dec = np.full(len(ra), np.nan), np.full(len(ra), np.nan)
    x, y = np.full(len(ra), np.nan), np.full(len(ra), np.nan)
    if ok.any():
        good = np.asarray(bricks.bricknames_for(ra[ok] % 360.0, dec[ok])).astype(str)
        centres = {str(n): bricks.brick_by_name(str(n)) for n in np.unique(good)}
        names[ok] = good
        brick_ra[ok] = [centres[n].ra for n in good]
        brick_dec[ok] = [centres[n].dec for n in good]
        x[ok], y[ok] = brick_pixels(ra[ok] % 360.0, dec[ok], brick_ra[ok], brick_dec[ok])
    in_fp = ok.copy() if footprint is None else ok & np.isin(names.astype(str), sorted(footprint))
    values = [names.tolist(), brick_ra, brick_dec, x, y, in_fp]
    ours = {f.name.lower() for f in BRICK_COLUMNS}
    out = table.drop_columns([c for c in table.column_names if c.lower() in ours])
    for field, value in zip(BRICK_COLUMNS, values, strict=True):
        arr = pa.array(value, field.type, from_pandas=True)
        out = out.append_column(field, arr)
    return out


def crossmatch_file(catalog_uri: str, out_uri: str, footprint_uri: str | None = None) -> dict:
    """Read a catalog (Parquet, CSV or FITS), cross-match it with the brick grid, write it; returns counts."""
    from jobs.runtime import storage

    table = storage.read_table(catalog_uri)
    footprint = read_footprint(footprint_uri) if footprint_uri else None
    out = crossmatch_bricks(table, footprint)
    n_in = int(np.sum(out.column("in_footprint").to_numpy(zero_copy_only=False)))
    no_pos = int(out.column("brickname").null_count)
    report = {"rows_in": table.num_rows, "rows_out": out.num_rows, "in_footprint": n_in,
              "outside_footprint": out.num_rows - n_in - no_pos, "no_position": no_pos,
              "bricks": len({n for n in out.column("brickname").to_pylist() if n})}
    if footprint is not None:
        # filtered to the footprint; the other rows are kept beside it, never dropped
        inside = out.column("in_footprint")
        outside_uri = re.sub(r"\.parquet$", "", str(out_uri)) + "_outside_footprint.parquet"
        storage.write_parquet(out.filter(pc.invert(inside)), outside_uri)
        out = out.filter(inside)
        report.update(rows_out=out.num_rows, outside_file=outside_uri)
    storage.write_parquet(out, out_uri)
    return report
