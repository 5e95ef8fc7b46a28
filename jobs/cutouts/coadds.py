"""Read DR10-layout coadd bricks and cut grz stamps (stage 4c, inside Spark partitions).

A brick is read once per partition with fitsio (cfitsio; an ``s3://`` file is first copied to a temporary
file): for each band ``image``, ``invvar`` and ``psfsize`` (float32), plus the brick's
``maskbits`` (int32) and its TAN WCS, from
``<root>/<bri>/<brick>/legacysurvey-<brick>-{image,invvar,psfsize}-<band>.fits.fz`` and
``legacysurvey-<brick>-maskbits.fits.fz``.

Bad data never raises out of here: a missing or unreadable file is recorded in
``CoaddBrick.problems`` and every stamp of that brick is returned with ``ok = False`` and one
of the reject reasons below (snake_case, exact strings, counted in stage manifests):

``missing_brick``        the brick's folder is absent (no file of it at all)
``missing_band:<b>``     a file of band <b> (image, invvar or psfsize) is absent
``corrupt_fits:<b>``     a file of band <b> cannot be read as FITS image data (or has the wrong shape)
``checksum_mismatch:<b>`` a file of band <b> (or maskbits) fails its own CHECKSUM / DATASUM
``missing_maskbits``     the maskbits file is absent
``corrupt_fits:maskbits`` the maskbits file cannot be read
``off_brick_edge``       the stamp is not fully inside the brick image
``zero_invvar``          a band has no coverage (invvar = 0) at the stamp centre pixel
``nonfinite_pixels``     NaN/inf in the image or invvar stamp

Stamp centring: the stamp's central pixel (index ``size // 2`` on each axis) is the brick pixel
nearest to (ra, dec) through the WCS. The object then sits ``(dx_pix, dy_pix)`` = position minus
that pixel's centre (each in [-0.5, 0.5]) from it; in the project's stamp grid
(:mod:`dhs_gen.conventions`, origin at the stamp centre, between pixels when ``size`` is even)
it sits at ``lens_offset_arcsec = ((dx + c) * pixscale, (dy + c) * pixscale)`` with ``c = 0.5`` for
even sizes and 0 for odd ones. x runs along columns (RA decreasing), y along rows (Dec increasing).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from jobs.runtime import storage

FILE_KINDS = ("image", "invvar", "psfsize")
DEFAULT_BANDS = "grz"


def coadd_file(root: str, brickname: str, kind: str, band: str | None = None) -> str:
    """URI of one coadd file in the DR10 layout (``kind`` image | invvar | psfsize | maskbits)."""
    suffix = f"{kind}-{band}" if band else kind
    return storage.join(root, brickname[:3], brickname, f"legacysurvey-{brickname}-{suffix}.fits.fz")


@dataclass
class CoaddBrick:
    """One coadd brick in memory (arrays ``(H, W)``; float32 maps, int32 maskbits).

    Attributes
    ----------
    brickname : str
    bands : str
        Bands asked for, e.g. ``"grz"``.
    image, invvar, psfsize : dict band -> ndarray
        Nanomaggies per pixel; 1/nanomaggies^2; PSF FWHM in arcsec. Bands with a problem are absent.
    maskbits : ndarray or None
        DR10 maskbits (int32), None if unreadable.
    wcs : astropy.wcs.WCS or None
        From the first readable image header.
    pixscale_arcsec : float or None
        From the WCS, arcsec per pixel.
    problems : dict
        band (or ``"maskbits"``) -> reason, e.g. ``"missing file legacysurvey-X-image-r.fits.fz"``.
    """

    brickname: str
    bands: str
    image: dict = field(default_factory=dict)
    invvar: dict = field(default_factory=dict)
    psfsize: dict = field(default_factory=dict)
    maskbits: np.ndarray | None = None
    wcs: object = None
    pixscale_arcsec: float | None = None
    problems: dict = field(default_factory=dict)
    shape: tuple | None = None


@dataclass
class HostStamp:
    """The host pixels one manifest row is rendered into: a stamp cut from a brick or a host cutout (or why not).

    Attributes
    ----------
    image, invvar : ndarray (B, H, W) float32 or None
        Nanomaggies per pixel; 1/nanomaggies^2.
    maskbits : ndarray (H, W) int32 or None
    psf_fwhm_arcsec : tuple of float
        psfsize map at the stamp's central pixel, per band, arcsec.
    median_invvar : tuple of float
        Median of the invvar stamp per band (positive pixels), 1/nanomaggies^2.
    psfdepth_nmgy : tuple of float
        5-sigma point-source flux (nmgy) from the median invvar and a Gaussian of the local FWHM:
        ``5 sqrt(4 pi sigma_psf^2 / invvar)`` with sigma_psf in pixels.
    x_pix, y_pix : float
        Position of (ra, dec) in the brick image, 0-based pixels (x = column).
    x0, y0 : int
        Brick pixel of the stamp's corner (index [0, 0]).
    dx_pix, dy_pix : float
        Sub-pixel offset of (ra, dec) from the stamp's central pixel centre, pixels, in [-0.5, 0.5].
    lens_offset_arcsec : tuple (x, y)
        Position of (ra, dec) in the stamp grid of :mod:`dhs_gen.conventions`, arcsec.
    pixscale_arcsec : float
        Of the stamp grid (the brick's WCS scale), arcsec per pixel.
    ok : bool
    reject_reason : str or None
    """

    brickname: str
    bands: str
    size_pix: int
    ok: bool
    reject_reason: str | None = None
    image: np.ndarray | None = None
    invvar: np.ndarray | None = None
    maskbits: np.ndarray | None = None
    psf_fwhm_arcsec: tuple = ()
    median_invvar: tuple = ()
    psfdepth_nmgy: tuple = ()
    x_pix: float = float("nan")
    y_pix: float = float("nan")
    x0: int = 0
    y0: int = 0
    dx_pix: float = float("nan")
    dy_pix: float = float("nan")
    lens_offset_arcsec: tuple = (0.0, 0.0)
    pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC


#: A :class:`TileReader` decompresses its whole image once the rows it was asked for add up to this
#: fraction of the image. cfitsio decompresses a section's tiles at the cost per tile of a whole read
#: (a 64-row section of a 600-row file: 0.51 ms, the whole file: 5.8 ms), so sections pay until the
#: requests cover the image; overlapping stamps decompress their shared tiles twice.
WHOLE_READ_AFTER_ROW_FRACTION = 1.0


class TileReadError(ValueError):
    """A tile of a coadd file that cannot be decompressed (a file without checksums, damaged past its
    first tile): the stamps that touch it are rejected as ``corrupt_fits:<band>``."""

    def __init__(self, label: str, detail: str):
        super().__init__(f"corrupt FITS ({label}): {detail}")
        self.label, self.detail = label, detail

    def __reduce__(self):
        return type(self), (self.label, self.detail)


class TileReader:
    """One image of a (tile-compressed) FITS file, read by sections: a slice decompresses only the
    tiles it touches. Survey-scale 4c cuts ~10 stamps from a 3600x3600 brick: reading them this way
    decompresses a few tile rows per stamp instead of every file whole. A brick many stamps fall on
    is decompressed whole once the requests reach :data:`WHOLE_READ_AFTER_ROW_FRACTION` of its rows.

    ``reader[y0:y1, x0:x1]`` and ``reader[iy, ix]`` give numpy values of ``dtype``; ``shape`` is the image's.
    """

    def __init__(self, fits_file, hdu, dtype, expected_rows: int = 0, label: str = ""):
        self.label = label           # the band (or "maskbits") a decoding error is reported under
        self._file = fits_file       # the open file the sections read from
        self._hdu = hdu
        self.shape = tuple(int(n) for n in hdu.get_dims())
        self.dtype = np.dtype(dtype)
        self._rows_read = 0
        self._whole: np.ndarray | None = None
        self._sections_only = False
        if expected_rows >= WHOLE_READ_AFTER_ROW_FRACTION * self.shape[0]:   # the caller's plan: a dense brick
            self._read_whole()

    def _decode(self, rows: slice, cols: slice) -> np.ndarray:
        try:
            return np.asarray(self._hdu[rows, cols]).astype(self.dtype, copy=False)
        except Exception as err:  # noqa: BLE001 - any decoding failure is a property of the file
            raise TileReadError(self.label, f"{type(err).__name__}: {err}"[:200]) from None

    def _read_whole(self) -> None:
        self._whole = self._decode(slice(0, self.shape[0]), slice(0, self.shape[1]))
        self._file.close()           # the decompressed image is all that is needed now
        self._file = self._hdu = None

    @staticmethod
    def _section(key: slice, n: int) -> slice:
        """``key`` as a forward, in-bounds slice of an axis of length ``n`` (what a section read takes)."""
        start, stop, step = key.indices(n)
        if step != 1 or start < 0 or stop < start:
            raise ValueError(f"a TileReader section must be a forward slice with step 1 (got {key!r})")
        return slice(start, stop)

    def __getitem__(self, key):
        if self._whole is not None:
            return self._whole[key]
        rows, cols = key
        point = isinstance(rows, int | np.integer) and isinstance(cols, int | np.integer)
        if point:   # one pixel: a 1x1 section
            rows, cols = slice(int(rows), int(rows) + 1), slice(int(cols), int(cols) + 1)
        if not (isinstance(rows, slice) and isinstance(cols, slice)):
            raise TypeError(f"a TileReader reads [iy, ix] or [y0:y1, x0:x1], not {key!r}")
        rows, cols = (self._section(k, n) for k, n in ((rows, self.shape[0]), (cols, self.shape[1])))
        self._rows_read += rows.stop - rows.start
        if not self._sections_only and self._rows_read >= WHOLE_READ_AFTER_ROW_FRACTION * self.shape[0]:
            try:
                self._read_whole()
                return self._whole[key]
            except TileReadError:   # a damaged tile somewhere: stay with sections, rejecting only what touches it
                self._sections_only = True
        values = self._decode(rows, cols)
        return values[0, 0] if point else values


#: Characters cfitsio reads as its extended file-name syntax (``file.fits[1]``, ``[col ...]`` filters).
_CFITSIO_SYNTAX = frozenset("[]")


@contextmanager
def _local_file(uri: str):
    """A local path holding the bytes of ``uri`` that cfitsio reads as a plain file name: the file itself (for
    ``s3://``, a temporary copy), through a temporary link when its path has brackets. Links and copies are
    removed on exit (a file cfitsio has opened stays readable after its name is removed)."""
    with ExitStack() as stack:
        if storage.is_s3(uri):
            tmp = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".fits.fz"))
            with storage.open_input(uri) as f:
                shutil.copyfileobj(f, tmp)
            tmp.flush()
            path = tmp.name
        else:
            path = storage.resolve(uri)[1]
        if _CFITSIO_SYNTAX & set(path):
            link = os.path.join(stack.enter_context(tempfile.TemporaryDirectory(prefix="dhs-fits-")), "file.fits.fz")
            os.symlink(os.path.abspath(path), link)
            path = link
        yield path


def _verify_checksums(hdu, header) -> None:
    """Raise ``ValueError("checksum mismatch: ...")`` when an HDU whose ``header`` carries CHECKSUM and DATASUM
    fails them. The checksums of a tile-compressed HDU cover its compressed bytes: no decompression."""
    if "CHECKSUM" in header and "DATASUM" in header:
        try:
            hdu.verify_checksum()
        except ValueError as err:   # fitsio: "data checksum failed" / "hdu checksum failed"
            raise ValueError(f"checksum mismatch: HDU {hdu.get_extnum()}: {err}") from None


def _read_fits_image(uri: str, dtype=None, expected_rows: int = 0, label: str = ""):
    """(data, header) of the first HDU with 2-D image data; raises on any problem (caller classifies).

    Read with fitsio (cfitsio: the Legacy Surveys' own reader; it decompresses a 600x600 RICE file 2x
    faster than astropy, which spends Python bookkeeping on every tile). ``dtype`` given: ``data`` is a
    :class:`TileReader` of that dtype (pixels decompressed when sliced; ``expected_rows``: how many rows
    the caller will slice, see :class:`TileReader`), else the whole image as an array. ``header`` is
    fitsio's (:func:`_astropy_header` makes the one a WCS is built from).

    Files that carry ``CHECKSUM`` / ``DATASUM`` (real DR10 files do) are verified on opening, every HDU
    up to the image: flipped bytes that still decode raise a checksum mismatch instead of becoming wrong pixels.
    Truncated, garbage, bit-flipped and tile-damaged files all raise (tested); a file that crashed cfitsio itself
    would take its worker down instead, and Spark would retry the task and then fail the job.
    """
    import fitsio

    with _local_file(uri) as path:
        fits_file = fitsio.FITS(path)
    reader = None   # a TileReader owns the open file; otherwise it is closed here
    try:
        for hdu in fits_file:
            header = hdu.read_header()
            _verify_checksums(hdu, header)
            dims = hdu.get_dims() if hdu.get_exttype() == "IMAGE_HDU" else ()
            if len(dims) == 2 and min(dims) > 0:
                if dtype is None:
                    return np.asarray(hdu.read()), header
                _ = hdu[0:1, 0:1]   # the first tile: a corrupt stream fails here, as a whole read would
                reader = TileReader(fits_file, hdu, dtype, expected_rows, label)
                return reader, header
        raise ValueError("no 2-D image HDU")
    finally:
        if reader is None:
            fits_file.close()


def _astropy_header(header):
    """``astropy.io.fits.Header`` of a fitsio header's cards (what :class:`astropy.wcs.WCS` reads). A tile-compressed
    HDU's header is its table's: its image's axes (``ZNAXISn``, ``ZBITPIX``) replace the table's, so that a WCS
    built from it has the image's ``pixel_shape``."""
    from astropy.io import fits

    cards = "".join(r["card_string"].ljust(80)[:80] for r in header.records() if r.get("card_string"))
    out = fits.Header.fromstring(cards)
    if out.get("ZIMAGE"):
        for key in ("BITPIX", *(f"NAXIS{i}" for i in range(1, int(out.get("ZNAXIS", 0)) + 1)), "NAXIS"):
            if f"Z{key}" in out:
                out[key] = out[f"Z{key}"]
    return out


def _load(brick: CoaddBrick, key: str, uri: str, dtype=None, expected_rows: int = 0):
    """Read one file, recording a problem under ``key`` instead of raising; returns (data, header) or None."""
    if not storage.exists(uri):
        brick.problems.setdefault(key, f"missing file {uri.rsplit('/', 1)[-1]}")
        return None
    try:
        return _read_fits_image(uri, dtype, expected_rows, key)
    except Exception as err:  # noqa: BLE001 - any read failure is a property of the data, not a crash
        brick.problems.setdefault(key, f"corrupt FITS: {type(err).__name__}: {err}"[:300])
        return None


def load_brick(coadd_root_uri: str, brickname: str, bands: str = DEFAULT_BANDS, tiles: bool = False,
               n_stamps: int = 0, stamp_size_pix: int = 64) -> CoaddBrick:
    """Read the image, invvar and psfsize of each band plus maskbits of one brick.

    ``tiles=True``: the maps are :class:`TileReader` objects that decompress only the tiles a stamp
    touches (4c, with few stamps per brick; ``n_stamps`` of ``stamp_size_pix`` expected: a brick with
    many is decompressed whole at once); else whole arrays. The pixels are identical either way.

    Parameters
    ----------
    coadd_root_uri : str
        The ``coadd/`` folder (local path or ``s3://``) holding ``<bri>/<brick>/``.
    brickname : str
        Brick name, e.g. ``"1501p020"``.
    bands : str
        Bands to read, e.g. ``"grz"``.

    Returns
    -------
    CoaddBrick
        Never raises for missing or corrupt files: see ``CoaddBrick.problems``.
    """
    from astropy.wcs import WCS

    brick = CoaddBrick(brickname=str(brickname), bands=str(bands))
    folder = storage.join(coadd_root_uri, str(brickname)[:3], str(brickname))
    if not storage.is_dir(folder) or not storage.list_files(folder):   # not one file: the brick is absent
        brick.problems["brick"] = f"missing brick folder {folder}"
        return brick
    for b in bands:
        maps = {}
        for kind in FILE_KINDS:
            # psfsize is read one pixel (one tile row) per stamp: by sections unless the stamps cover its rows
            rows_per_stamp = 1 if kind == "psfsize" else int(stamp_size_pix)
            got = _load(brick, b, coadd_file(coadd_root_uri, brickname, kind, b), np.float32 if tiles else None,
                        int(n_stamps) * rows_per_stamp)
            if got is None:
                break
            maps[kind] = got
        if b in brick.problems:
            continue
        shapes = {m[0].shape for m in maps.values()} | ({brick.shape} if brick.shape else set())
        if len(shapes) != 1:
            brick.problems[b] = f"corrupt FITS: inconsistent shapes {sorted(shapes)}"
            continue
        brick.shape = shapes.pop()
        for kind, (data, _header) in maps.items():
            getattr(brick, kind)[b] = data if tiles else data.astype(np.float32, copy=False)
        if brick.wcs is None:
            try:
                brick.wcs = WCS(_astropy_header(maps["image"][1]))
                brick.pixscale_arcsec = float(np.sqrt(abs(np.linalg.det(brick.wcs.pixel_scale_matrix))) * 3600.0)
            except Exception as err:  # noqa: BLE001
                brick.problems[b] = f"corrupt FITS: bad WCS: {err}"[:300]
    got = _load(brick, "maskbits", coadd_file(coadd_root_uri, brickname, "maskbits"), np.int32 if tiles else None,
                int(n_stamps) * int(stamp_size_pix))
    if got is not None:
        if brick.shape is not None and got[0].shape != brick.shape:
            brick.problems["maskbits"] = f"corrupt FITS: maskbits shape {got[0].shape} != {brick.shape}"
        else:
            brick.maskbits = got[0] if tiles else got[0].astype(np.int32, copy=False)
    return brick


def _reason_for_problem(key: str, text: str) -> str:
    if key == "brick":
        return "missing_brick"
    if "checksum mismatch" in text:
        return f"checksum_mismatch:{key}"
    if key == "maskbits":
        return "missing_maskbits" if text.startswith("missing") else "corrupt_fits:maskbits"
    return f"missing_band:{key}" if text.startswith("missing") else f"corrupt_fits:{key}"


def cut_stamp(brick: CoaddBrick, ra: float, dec: float, size_pix: int = 64) -> HostStamp:
    """Cut a ``(bands, size, size)`` stamp centred on the brick pixel nearest to (ra, dec).

    Parameters
    ----------
    brick : CoaddBrick
        From :func:`load_brick`.
    ra, dec : float
        Stamp centre, deg.
    size_pix : int
        Stamp side, pixels.

    Returns
    -------
    HostStamp
        ``ok`` False with a ``reject_reason`` (module docstring) for bad data; never raises for it.
    """
    try:  # a brick with problems may have no WCS: cut_stamp_at reports the problem first
        x, y = (float(v) for v in brick.wcs.all_world2pix(np.array([[ra, dec]], dtype=float), 0)[0])
    except Exception:  # noqa: BLE001 - a position the WCS cannot map is off this brick
        x = y = float("nan")
    return cut_stamp_at(brick, x, y, size_pix)


def cut_stamp_at(brick: CoaddBrick, x: float, y: float, size_pix: int = 64) -> HostStamp:
    """:func:`cut_stamp` at a brick pixel position ``(x, y)`` (0-based, x = column) instead of a sky position."""
    size = int(size_pix)
    out = HostStamp(brickname=brick.brickname, bands=brick.bands, size_pix=size, ok=False)
    for key in ["brick", *brick.bands, "maskbits"]:
        if key in brick.problems:
            out.reject_reason = _reason_for_problem(key, brick.problems[key])
            return out
    out.x_pix, out.y_pix = x, y
    height, width = brick.shape
    if not (np.isfinite(x) and np.isfinite(y)):
        out.reject_reason = "off_brick_edge"
        return out
    ix, iy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    out.dx_pix, out.dy_pix = x - ix, y - iy
    x0, y0 = ix - size // 2, iy - size // 2
    out.x0, out.y0 = x0, y0
    centre_shift = 0.5 if size % 2 == 0 else 0.0
    ps = out.pixscale_arcsec = brick.pixscale_arcsec
    out.lens_offset_arcsec = ((out.dx_pix + centre_shift) * ps, (out.dy_pix + centre_shift) * ps)
    if x0 < 0 or y0 < 0 or x0 + size > width or y0 + size > height:
        out.reject_reason = "off_brick_edge"
        return out
    sl = (slice(y0, y0 + size), slice(x0, x0 + size))
    try:
        image = np.stack([brick.image[b][sl] for b in brick.bands]).astype(np.float32)
        invvar = np.stack([brick.invvar[b][sl] for b in brick.bands]).astype(np.float32)
        out.psf_fwhm_arcsec = tuple(float(brick.psfsize[b][iy, ix]) for b in brick.bands)
        maskbits = np.array(brick.maskbits[sl])
    except TileReadError as err:   # a damaged tile of a file read by sections (whole reads fail at load)
        out.reject_reason = f"corrupt_fits:{err.label}"
        return out
    if np.any(invvar[:, size // 2, size // 2] <= 0):
        out.reject_reason = "zero_invvar"
        return out
    if not (np.all(np.isfinite(image)) and np.all(np.isfinite(invvar)) and np.all(np.isfinite(out.psf_fwhm_arcsec))):
        out.reject_reason = "nonfinite_pixels"
        return out
    medians = [float(np.median(iv[iv > 0])) if np.any(iv > 0) else 0.0 for iv in invvar]
    sigma_psf_pix = [f / 2.3548200450309493 / ps for f in out.psf_fwhm_arcsec]
    out.median_invvar = tuple(medians)
    out.psfdepth_nmgy = tuple(5.0 * float(np.sqrt(4 * np.pi * s**2 / m)) if m > 0 else float("inf")
                              for s, m in zip(sigma_psf_pix, medians, strict=True))
    out.image, out.invvar, out.maskbits = image, invvar, maskbits
    out.ok = True
    return out
