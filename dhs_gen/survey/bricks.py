r"""The DESI Legacy Surveys brick grid (DR8-DR10 ``survey-bricks.fits.gz``), derived exactly.

The sky is cut into 721 rows of constant declination, 0.25 deg high, centred on
``dec_c = -90 + 0.25 * row`` (row = 0 .. 720; the two polar rows are caps of one brick).
Row ``row`` spans ``[dec_c - 0.125, dec_c + 0.125)`` (clipped to +-90) and is split into an even
number of equal RA bricks, the smallest even number that keeps every brick at most 0.25 deg wide
at the row's edge nearest the equator:

.. math:: n_{ra} = 2 \left\lceil \tfrac{1}{2}\, \tfrac{360}{0.25} \cos(\max(0, |dec_c| - 0.125)) \right\rceil

Brick ``col`` spans RA ``[360 col / n_ra, 360 (col + 1) / n_ra)`` with its centre in the middle.
The name is ``RRRR{p|m}DDD``: the first four digits of the RA centre written to 1e-4 deg
(``"{:07.0f}".format(ra_c * 1e4)[:4]``, i.e. RA*10 truncated), ``p`` for ``dec_c >= 0``, then the
first three digits of ``|dec_c| * 1e4`` (|Dec|*10 truncated). ``brickid`` counts bricks from 1 in
(row, col) order; ``brickq = col % 2 + 2 * (row % 2)`` (1 on the south cap).

This is the rule of ``desiutil.brick.Bricks(bricksize=0.25)`` that generated the Legacy Surveys
table; tests check it against the real ``survey-bricks`` row (brick 2447p120, id 400014), the
BRICKNAME of all 6,826 real DR10 LRGs and the real cutouts' brick names.

Coadd pixel grid (``legacypipe.survey.wcs_for_brick``): a 3600 x 3600 TAN image at 0.262"/pix,
centred on the brick centre, ``CRPIX = (size + 1) / 2`` (1-based FITS pixels), north up and RA
increasing to the left (``CD1_1 = -pixscale``, ``CD2_2 = +pixscale``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, RangeError, check_range

BRICK_SIZE_DEG = 0.25
DR10_BRICK_SIZE_PIX = 3600
N_ROWS = 721
_ROW_DEC = -90.0 + BRICK_SIZE_DEG * np.arange(N_ROWS)          # row centres, deg


def _ncol_per_row() -> np.ndarray:
    dec_near_equator = np.maximum(0.0, np.abs(_ROW_DEC) - BRICK_SIZE_DEG / 2)
    n = 360.0 / BRICK_SIZE_DEG * np.cos(np.deg2rad(dec_near_equator))
    ncol = (np.ceil(n / 2) * 2).astype(np.int64)
    ncol[0] = ncol[-1] = 1                                      # polar caps
    return ncol


_NCOL = _ncol_per_row()
_FIRST_ID = np.concatenate([[1], 1 + np.cumsum(_NCOL)[:-1]])   # brickid of col 0 of each row
_NAME_RE = re.compile(r"^(\d{4})([pm])(\d{3})$")


@dataclass(frozen=True)
class BrickInfo:
    """One brick of the grid (all angles in degrees).

    Attributes
    ----------
    brickname : str
        e.g. ``"1501p020"``.
    brickid : int
        1-based running index in (row, col) order, as the survey-bricks table.
    brickq : int
        ``col % 2 + 2 * (row % 2)``, 1 on the south cap (processing quadrant).
    brickrow, brickcol : int
        Row (0 = south pole) and column (0 at RA 0) of the brick.
    ra, dec : float
        Centre, deg.
    ra1, ra2, dec1, dec2 : float
        Edges, deg (``ra1 <= ra < ra2``, ``dec1 <= dec < dec2`` is inside).
    """

    brickname: str
    brickid: int
    brickq: int
    brickrow: int
    brickcol: int
    ra: float
    dec: float
    ra1: float
    ra2: float
    dec1: float
    dec2: float


def _row_col(ra_deg, dec_deg) -> tuple[np.ndarray, np.ndarray]:
    """Row and column (int arrays) of the bricks holding (ra, dec), edges inclusive on the low side."""
    ra = np.mod(np.asarray(ra_deg, dtype=float), 360.0)
    dec = np.asarray(dec_deg, dtype=float)
    row = np.clip(np.floor((dec + 90.0 + BRICK_SIZE_DEG / 2) / BRICK_SIZE_DEG).astype(np.int64), 0, N_ROWS - 1)
    ncol = _NCOL[row]
    col = np.clip(np.floor(ra * ncol / 360.0).astype(np.int64), 0, ncol - 1)
    # ra * ncol / 360 can round across an edge that linspace-style edges put elsewhere: fix it exactly
    col = np.where((col > 0) & (ra < col * 360.0 / ncol), col - 1, col)
    col = np.where((col < ncol - 1) & (ra >= (col + 1) * 360.0 / ncol), col + 1, col)
    return row, col


def _names(row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """Brick names for (row, col) arrays, built digit by digit (vectorised over distinct bricks)."""
    key = row.ravel() * 4096 + col.ravel()
    uniq, inverse = np.unique(key, return_inverse=True)
    urow, ucol = uniq // 4096, uniq % 4096
    ncol = _NCOL[urow]
    ra_c = np.where(ncol == 1, 180.0, (ucol + 0.5) * 360.0 / ncol)
    dec_c = _ROW_DEC[urow]
    # same digits as _name_of: round to 1e-4 deg (half-to-even, like str.format), keep the leading ones
    ra_int = np.rint(ra_c * 10000).astype(np.int64) // 1000
    dec_int = np.rint(np.abs(dec_c) * 10000).astype(np.int64) // 1000
    chars = np.empty((uniq.size, 8), dtype=np.uint8)
    chars[:, :4] = (ra_int[:, None] // np.array([1000, 100, 10, 1])) % 10 + ord("0")
    chars[:, 4] = np.where(dec_c >= 0, ord("p"), ord("m"))
    chars[:, 5:] = (dec_int[:, None] // np.array([100, 10, 1])) % 10 + ord("0")
    names = chars.view("S8").ravel().astype("U8")
    return names[inverse].reshape(row.shape)


def _centre(row: int, col: int) -> tuple[float, float]:
    if _NCOL[row] == 1:
        return 180.0, float(_ROW_DEC[row])
    return (col + 0.5) * 360.0 / float(_NCOL[row]), float(_ROW_DEC[row])


def _name_of(row: int, col: int) -> str:
    ra_c, dec_c = _centre(row, col)
    # format to 1e-4 deg first, then truncate: 39.599999999999994 must read as 0396 (desiutil's rule)
    ra_digits = f"{ra_c * 10000:07.0f}"[:4]
    dec_digits = f"{abs(dec_c) * 10000:06.0f}"[:3]
    return f"{ra_digits}{'p' if dec_c >= 0 else 'm'}{dec_digits}"


def _info(row: int, col: int) -> BrickInfo:
    ra_c, dec_c = _centre(row, col)
    ncol = int(_NCOL[row])
    ra1, ra2 = (0.0, 360.0) if ncol == 1 else (col * 360.0 / ncol, (col + 1) * 360.0 / ncol)
    dec1 = max(-90.0, dec_c - BRICK_SIZE_DEG / 2)
    dec2 = min(90.0, dec_c + BRICK_SIZE_DEG / 2)
    brickq = 1 if row == 0 else col % 2 + 2 * (row % 2)
    return BrickInfo(brickname=_name_of(row, col), brickid=int(_FIRST_ID[row] + col), brickq=int(brickq),
                     brickrow=int(row), brickcol=int(col), ra=ra_c, dec=dec_c, ra1=ra1, ra2=ra2,
                     dec1=dec1, dec2=dec2)


def _check_dec(dec) -> None:
    dec = np.asarray(dec, dtype=float)
    bad = ~np.isfinite(dec) | (dec < -90.0) | (dec > 90.0)
    if np.any(bad):
        raise RangeError("dec_deg", float(dec[bad].ravel()[0]), -90.0, 90.0)


def brick_for(ra_deg: float, dec_deg: float) -> BrickInfo:
    """The brick holding one sky position.

    Parameters
    ----------
    ra_deg : float
        Right ascension, deg (any value; wrapped into [0, 360)).
    dec_deg : float
        Declination, deg, in [-90, 90].

    Returns
    -------
    BrickInfo
    """
    check_range("ra_deg", ra_deg)
    check_range("dec_deg", dec_deg, -90.0, 90.0)
    row, col = _row_col(ra_deg, dec_deg)
    return _info(int(row), int(col))


def bricknames_for(ra_deg, dec_deg) -> np.ndarray:
    """Brick names of many positions at once (vectorised; ~1e6 positions per second).

    Parameters
    ----------
    ra_deg, dec_deg : array-like of float
        Positions, deg; broadcast together. Dec must be finite and in [-90, 90].

    Returns
    -------
    ndarray of str (``<U8``), the broadcast shape of the inputs.
    """
    ra, dec = np.broadcast_arrays(np.asarray(ra_deg, dtype=float), np.asarray(dec_deg, dtype=float))
    if not np.all(np.isfinite(ra)):
        raise RangeError("ra_deg", float(ra[~np.isfinite(ra)].ravel()[0]), -math.inf, math.inf)
    _check_dec(dec)
    row, col = _row_col(ra, dec)
    return _names(row, col)


def brick_by_name(brickname: str) -> BrickInfo:
    """The brick of a name such as ``"1501p020"``.

    Raises
    ------
    InvalidValueError
        If the name is malformed or names no brick of the grid.
    """
    m = _NAME_RE.match(str(brickname))
    if not m:
        raise InvalidValueError("brickname", brickname, "must look like 'RRRRpDDD' or 'RRRRmDDD' (e.g. '1501p020')")
    ra_lo = int(m.group(1)) / 10.0
    dec_approx = (1 if m.group(2) == "p" else -1) * int(m.group(3)) / 10.0
    # names truncate |dec_c| to 0.1 deg (< half a row), so the nearest row centre is the brick's row
    row = int(round((dec_approx + 90.0) / BRICK_SIZE_DEG))
    if 0 <= row < N_ROWS:
        ncol = int(_NCOL[row])
        guess = int(math.floor((ra_lo + 0.05) * ncol / 360.0))
        for col in (guess - 1, guess, guess + 1):
            if 0 <= col < ncol and _name_of(row, col) == brickname:
                return _info(row, col)
    raise InvalidValueError("brickname", brickname, "names no brick of the Legacy Surveys 0.25 deg grid")


def brick_wcs(brickname: str, size_pix: int = DR10_BRICK_SIZE_PIX,
              pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC):
    """TAN WCS of a coadd centred on the brick (as ``legacypipe.survey.wcs_for_brick``).

    A centred sub-image of ``size_pix`` of the 3600-pixel brick (``3600 - size_pix`` even) has
    exactly this WCS: cutting ``(3600 - size_pix) / 2`` pixels from each side shifts CRPIX from
    1800.5 to ``(size_pix + 1) / 2``.

    Parameters
    ----------
    brickname : str
        Brick name.
    size_pix : int
        Image width = height, pixels.
    pixscale_arcsec : float
        Pixel scale, arcsec per pixel.

    Returns
    -------
    astropy.wcs.WCS
        ``RA---TAN`` / ``DEC--TAN``, CRVAL = brick centre (deg), CRPIX = ``(size_pix + 1) / 2``,
        CD = ``[[-s, 0], [0, s]]`` with ``s = pixscale_arcsec / 3600`` deg per pixel.
    """
    from astropy.wcs import WCS

    if int(size_pix) != size_pix or size_pix < 1:
        raise InvalidValueError("size_pix", size_pix, "must be a positive integer number of pixels")
    scale = check_range("pixscale_arcsec", pixscale_arcsec, 0.0, 3600.0, lo_open=True) / 3600.0
    info = brick_by_name(brickname)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [info.ra, info.dec]
    wcs.wcs.crpix = [(size_pix + 1) / 2.0, (size_pix + 1) / 2.0]
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (int(size_pix), int(size_pix))
    return wcs


def wcs_header_cd(wcs):
    """FITS header cards of a TAN WCS written with ``CD`` keywords, as real DR10 coadds are.

    astropy writes ``PC`` + ``CDELT`` by default; both mean the same, but tools that grep for
    ``CD1_1`` (and humans comparing headers) expect the DR10 form.
    """
    header = wcs.to_header()
    for key in ("PC1_1", "PC1_2", "PC2_1", "PC2_2", "CDELT1", "CDELT2"):
        header.remove(key, ignore_missing=True)
    cd = wcs.wcs.cd if wcs.wcs.has_cd() else wcs.pixel_scale_matrix
    for i in range(2):
        for j in range(2):
            header[f"CD{i + 1}_{j + 1}"] = (float(cd[i][j]), "deg per pixel")
    return header


def neighbour_bricks(ra_deg: float, dec_deg: float, n: int) -> list[BrickInfo]:
    """The ``n`` bricks whose centres are nearest to (ra, dec), nearest first (deg in, deg out)."""
    if int(n) != n or not 1 <= n <= 200:
        raise InvalidValueError("n", n, "must be an integer number of bricks in [1, 200]")
    centre = brick_for(ra_deg, dec_deg)
    span = int(math.ceil(math.sqrt(n))) + 1
    candidates = {}
    for row in range(max(0, centre.brickrow - span), min(N_ROWS, centre.brickrow + span + 1)):
        guess = _row_col(ra_deg, _ROW_DEC[row])[1]
        for col in range(int(guess) - span - 1, int(guess) + span + 2):
            c = col % int(_NCOL[row])
            candidates[(row, c)] = _info(row, c)

    def dist(b: BrickInfo) -> float:
        cos_d = (math.sin(math.radians(dec_deg)) * math.sin(math.radians(b.dec))
                 + math.cos(math.radians(dec_deg)) * math.cos(math.radians(b.dec))
                 * math.cos(math.radians(b.ra - ra_deg)))
        return math.acos(max(-1.0, min(1.0, cos_d)))

    return sorted(candidates.values(), key=lambda b: (dist(b), b.brickid))[: int(n)]
