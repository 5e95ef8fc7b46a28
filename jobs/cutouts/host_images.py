"""Real host images from cutout files of any survey, and the one host stamp every arc is rendered into.

A :class:`HostImage` is a cutout as read: g, r, z in nanomaggies per *native* pixel, its pixel
scale, its inverse variance and maskbits when the file has them, its WCS, the PSF FWHM it carries
and where every number came from. :func:`host_stamp` turns one into the :class:`HostStamp` that
stage 4c renders into (0.262"/pix, a square stamp, the host's sub-pixel position), by the same
:func:`jobs.cutouts.coadds.cut_stamp` as a DR10 brick when the cutout is already on the DR10 grid, so a
cutout of a brick renders bit-identically to the brick.

Layouts read from a folder (``local:DIR``):

* Legacy Surveys viewer ``cutout.fits`` with inverse variance: an empty primary HDU, then per band
  an ``IMAGETYP = image`` and an ``IMAGETYP = invvar`` HDU (``BAND`` keyword), TAN WCS; a PSF file
  beside it (``copsf_<rest>`` for ``cutout_<rest>``, one ``BAND`` HDU per band) gives the measured FWHM.
* ``(bands, H, W)`` cubes with a TAN WCS at any pixel scale (band letters from ``BANDS`` /
  ``BAND<i>`` keywords, else ``--bands``): Legacy Surveys viewer products keep surface brightness
  (nanomaggies per 0.262" pixel *area*) when resampled; other surveys' counts go through a declared
  zeropoint (``--zeropoint``, e.g. 30 for DES, 27 for HSC) and, without a usable WCS, a declared
  pixel scale. A ``psf_<name>`` file beside such a cube (same band planes) gives the PSF.
* DR10 ``.npz`` cutouts (key ``cutout`` (H, W, 3), ``meta_ra``, ``meta_dec``, ``meta_pixel_scale``).
* Per-band stacks: ``g.fits``, ``r.fits``, ``z.fits`` each an (N, H, W) cube of N hosts (the DES
  LRG-host layout), through the declared zeropoint and pixel scale.

Units: every image is converted to nanomaggies (``10 ** ((22.5 - zp) / 2.5)`` per count for a
declared zeropoint), inverse variance to 1/nanomaggies^2 with the same factor squared.
"""

from __future__ import annotations

import glob
import math
import os
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.imaging.measure import border_pixels, robust_sigma
from dhs_gen.imaging.resample import area_weighted_resample
from dhs_gen.survey.bricks import bricknames_for
from jobs.catalogs.crossmatch import open_fits
from jobs.cutouts.coadds import CoaddBrick, HostStamp, cut_stamp, cut_stamp_at
from jobs.cutouts.cutout import BANDS, MAX_ZERO_FRACTION, CutoutUnavailable

GAUSS_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
PSF_MEASURE_ZOOM = 8           # PSF images are interpolated 8x finer before the half-maximum area is taken
NOISE_BORDER_PIX = 4           # width of the frame whose MAD estimates the noise when a file has no invvar
PIXSCALE_MATCH_RTOL = 1e-4     # a file within this of 0.262"/pix is on the DR10 grid (no resampling)


@dataclass(frozen=True)
class Declared:
    """What the user states about files that do not say it themselves (``dhs hosts build`` options)."""

    zeropoint: float | None = None          # AB zeropoint of the counts; None: the files are nanomaggies
    pixscale_arcsec: float | None = None    # used when a file has no usable WCS
    bands: str | None = None                # band letters of cube planes without BAND keywords
    psf_fwhm_arcsec: tuple | None = None    # g, r, z: the last resort for the PSF
    match_fwhm_arcsec: tuple | None = None  # g, r, z: convolve sharper images to this seeing

    @property
    def flux_scale(self) -> float:
        """Factor from the files' pixel values to nanomaggies."""
        return 1.0 if self.zeropoint is None else 10.0 ** ((22.5 - self.zeropoint) / 2.5)


@dataclass
class HostImage:
    """One host cutout as read: g, r, z nanomaggies per native pixel, and where each value came from."""

    name: str
    image: np.ndarray                        # (3, H, W) float64, nanomaggies per native pixel
    pixscale_arcsec: float
    invvar: np.ndarray | None = None         # (3, H, W), 1/nanomaggies^2
    maskbits: np.ndarray | None = None       # (H, W) int32
    wcs: object = None
    ra: float | None = None                  # deg: the host position (catalog, else the WCS centre)
    dec: float | None = None
    psf_fwhm_arcsec: tuple | None = None
    psf_source: str | None = None
    psf_images: dict | None = None           # band -> PSF image at the native pixel scale, when a file gives one
    provenance: list = field(default_factory=list)


def measure_psf_fwhm(psf: np.ndarray, pixscale_arcsec: float) -> float:
    """FWHM (arcsec) of a pixelised PSF image, in the convention of :func:`dhs_gen.physics.psf.make_psf`.

    The half-maximum contour is found on the image interpolated ``PSF_MEASURE_ZOOM`` times finer
    (cubic); the FWHM is the diameter of the circle of the same area (exact for circular profiles,
    the geometric mean for elliptical ones). A PSF image is the profile integrated over pixels,
    which adds ``pixscale^2 / 12`` to its variance; that is removed in quadrature, so a kernel made
    with FWHM ``f`` measures ``f``.
    """
    img = np.asarray(psf, dtype=float)
    if img.ndim != 2 or min(img.shape) < 3 or not np.all(np.isfinite(img)) or img.max() <= 0:
        raise InvalidValueError("psf", img, "must be a finite 2-D image with a positive peak")
    fine = ndimage.zoom(img, PSF_MEASURE_ZOOM, order=3)
    # zoom maps the end pixels onto each other: a fine pixel is (n - 1) / (N - 1) input pixels wide
    step_y, step_x = ((n - 1) / (m - 1) for n, m in zip(img.shape, fine.shape, strict=True))
    area_pix = np.count_nonzero(fine >= 0.5 * fine.max()) * step_y * step_x
    measured = 2.0 * math.sqrt(area_pix / math.pi)
    pixel_term = GAUSS_FWHM_PER_SIGMA**2 / 12.0
    return math.sqrt(max(measured**2 - pixel_term, 0.0)) * pixscale_arcsec


def on_dr10_grid(pixscale_arcsec: float) -> bool:
    """True for a pixel scale within :data:`PIXSCALE_MATCH_RTOL` of 0.262"/pix: cut as is, never resampled."""
    return abs(pixscale_arcsec / PIXSCALE_DR10_ARCSEC - 1.0) <= PIXSCALE_MATCH_RTOL


def _wcs_pixscale(header) -> tuple[object, float | None]:
    """(WCS, arcsec per pixel) of a header with a celestial TAN WCS, else (None, None)."""
    from astropy.wcs import WCS

    if "CTYPE1" not in header:
        return None, None
    wcs = WCS(header, naxis=2)
    scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
    # a placeholder WCS (CDELT = 1 deg, as some survey tools write) is no pixel scale
    return (wcs, scale) if 1e-3 < scale < 60.0 else (None, None)


def _wcs_centre(wcs, shape) -> tuple[float, float]:
    ra, dec = wcs.pixel_to_world_values((shape[-1] - 1) / 2.0, (shape[-2] - 1) / 2.0)
    return float(ra) % 360.0, float(dec)


def _psf_beside(path: str, prefixes: tuple) -> str | None:
    """The PSF file beside a cutout: ``<prefix><rest>`` for each prefix, in that order."""
    folder, base = os.path.split(path)
    for old, new in prefixes:
        if base.startswith(old):
            cand = os.path.join(folder, new + base[len(old):])
            if os.path.exists(cand):
                return cand
    return None


def _measured_psf(host: HostImage, psf_path: str, band_planes: dict) -> None:
    host.psf_images = {b: band_planes[b] for b in BANDS}
    host.psf_fwhm_arcsec = tuple(measure_psf_fwhm(band_planes[b], host.pixscale_arcsec) for b in BANDS)
    host.psf_source = f"measured on {os.path.basename(psf_path)} (half-maximum area)"


def read_viewer_fits(path: str, hdul) -> HostImage:
    """Legacy Surveys viewer ``cutout.fits`` with invvar HDUs (module docstring)."""
    planes: dict = {}
    wcs = scale = None
    for hdu in hdul:
        head = hdu.header
        kind, band = str(head.get("IMAGETYP", "")).strip().lower(), str(head.get("BAND", "")).strip()
        if hdu.data is None or hdu.data.ndim != 2 or kind not in ("image", "invvar") or not band:
            continue
        planes[(kind, band)] = np.asarray(hdu.data, dtype=float)
        if wcs is None and kind == "image":
            wcs, scale = _wcs_pixscale(head)
    missing = [b for b in BANDS if ("image", b) not in planes]
    if missing:
        raise CutoutUnavailable(f"missing_band:{missing[0]}", os.path.basename(path))
    if wcs is None:
        raise CutoutUnavailable("no_wcs", os.path.basename(path))
    image = np.stack([planes[("image", b)] for b in BANDS])
    invvar = (np.stack([planes[("invvar", b)] for b in BANDS])
              if all(("invvar", b) in planes for b in BANDS) else None)
    ra, dec = _wcs_centre(wcs, image.shape)
    host = HostImage(os.path.basename(path).rsplit(".fits", 1)[0], image, scale, invvar, None, wcs, ra, dec,
                     provenance=[f"Legacy Surveys viewer cutout {os.path.basename(path)} (image"
                                 f"{' + invvar' if invvar is not None else ''} HDUs, nanomaggies)"])
    psf_path = _psf_beside(path, (("cutout_", "copsf_"), ("", "psf_")))
    if psf_path:
        with open_fits(psf_path) as ph:
            by_band = {str(h.header.get("BAND", "")).strip(): np.asarray(h.data, float)
                       for h in ph if h.data is not None and h.data.ndim == 2}
        if all(b in by_band for b in BANDS):
            _measured_psf(host, psf_path, by_band)
    return host


def read_cube_fits(path: str, hdul, declared: Declared, surface_brightness: bool) -> HostImage:
    """A ``(bands, H, W)`` FITS cube: WCS or declared pixel scale, nanomaggies or declared zeropoint."""
    hdu = next((h for h in hdul if getattr(h, "data", None) is not None and h.data.ndim == 3), None)
    if hdu is None:
        raise CutoutUnavailable("corrupt_fits", f"{os.path.basename(path)}: no (bands, H, W) image")
    head, data = hdu.header, np.asarray(hdu.data, dtype=float)
    n = data.shape[0]
    bands = head.get("BANDS", "").strip() or "".join(str(head.get(f"BAND{i}", "")).strip() for i in range(n))
    if len(bands) != n:
        bands = declared.bands or (BANDS if n == 3 else "")
    if len(bands) != n:
        raise CutoutUnavailable("unknown_bands", f"{os.path.basename(path)}: {n} planes; give --bands")
    missing = [b for b in BANDS if b not in bands]
    if missing:
        raise CutoutUnavailable(f"missing_band:{missing[0]}", f"{os.path.basename(path)} has bands {bands!r}")
    wcs, scale = _wcs_pixscale(head)
    notes = [f"FITS cube {os.path.basename(path)} (bands {bands})"]
    if scale is None:
        if declared.pixscale_arcsec is None:
            raise CutoutUnavailable("no_pixscale", f"{os.path.basename(path)}: no usable WCS; give --pixscale-arcsec")
        scale = declared.pixscale_arcsec
        notes.append(f"pixel scale {scale}\"/pix as declared")
    idx = [bands.index(b) for b in BANDS]
    image = data[idx] * declared.flux_scale
    if declared.zeropoint is not None:
        notes.append(f"counts at zeropoint {declared.zeropoint:g} x {declared.flux_scale:.6g} -> nanomaggies")
    elif surface_brightness and not on_dr10_grid(scale):
        image = image * (scale / PIXSCALE_DR10_ARCSEC) ** 2
        notes.append("surface brightness per 0.262\" pixel -> flux per native pixel")
    ra, dec = _wcs_centre(wcs, image.shape) if wcs is not None else (None, None)
    host = HostImage(os.path.basename(path).rsplit(".fits", 1)[0], image, scale, None, None, wcs, ra, dec,
                     provenance=notes)
    psf_path = _psf_beside(path, (("cutout_", "copsf_"), ("", "psf_")))
    if psf_path:
        with open_fits(psf_path) as ph:
            cube = next((np.asarray(h.data, float) for h in ph if h.data is not None and h.data.ndim == 3), None)
        if cube is not None and cube.shape[0] == n:
            _measured_psf(host, psf_path, {b: cube[bands.index(b)] for b in BANDS})
    return host


def read_npz(path: str) -> HostImage:
    """A DR10 ``.npz`` cutout: ``cutout`` (H, W, 3) g, r, z nanomaggies, ``meta_ra`` / ``meta_dec``."""
    with np.load(path, allow_pickle=False) as d:
        if "cutout" not in d.files:
            raise CutoutUnavailable("corrupt_npz", f"{os.path.basename(path)}: no 'cutout' array")
        cube = np.transpose(np.asarray(d["cutout"], dtype=float), (2, 0, 1))
        scale = float(d["meta_pixel_scale"]) if "meta_pixel_scale" in d.files else PIXSCALE_DR10_ARCSEC
        ra = float(d["meta_ra"]) if "meta_ra" in d.files else None
        dec = float(d["meta_dec"]) if "meta_dec" in d.files else None
        name = str(d["meta_galaxy_id"]) if "meta_galaxy_id" in d.files else os.path.basename(path)[:-4]
    return HostImage(name, cube, scale, None, None, None, ra, dec,
                     provenance=[f"DR10 npz {os.path.basename(path)} (nanomaggies, {scale}\"/pix)"])


def read_band_stacks(folder: str, declared: Declared) -> list[HostImage]:
    """``g.fits``, ``r.fits``, ``z.fits``, each (N, H, W): N hosts (declared zeropoint and pixel scale)."""
    if declared.pixscale_arcsec is None:
        raise InvalidValueError("pixscale_arcsec", None, f"per-band stacks in {folder} have no WCS: give --pixscale-arcsec")
    cubes = {}
    for b in BANDS:
        with open_fits(os.path.join(folder, f"{b}.fits")) as hdul:
            cubes[b] = np.asarray(hdul[0].data, dtype=float) * declared.flux_scale
    n = cubes["g"].shape[0]
    if any(c.shape != cubes["g"].shape or c.ndim != 3 for c in cubes.values()):
        raise InvalidValueError("band stacks", {b: c.shape for b, c in cubes.items()}, "one (N, H, W) cube per band")
    unit = "nanomaggies" if declared.zeropoint is None else (
        f"counts at zeropoint {declared.zeropoint:g} x {declared.flux_scale:.6g} -> nanomaggies")
    return [HostImage(f"{os.path.basename(os.path.normpath(folder))}_{i:03d}", np.stack([cubes[b][i] for b in BANDS]),
                      declared.pixscale_arcsec,
                      provenance=[f"per-band stacks {folder}/{{g,r,z}}.fits plane {i} ({unit}); "
                                  f"{declared.pixscale_arcsec}\"/pix as declared"]) for i in range(n)]


def read_fits_host(path: str, hdul, declared: Declared, surface_brightness: bool = True) -> HostImage:
    """A FITS host cutout of either layout: viewer ``cutout.fits`` with invvar HDUs, or a (bands, H, W) cube."""
    viewer = any(str(h.header.get("IMAGETYP", "")).strip().lower() == "invvar" for h in hdul)
    return read_viewer_fits(path, hdul) if viewer else read_cube_fits(path, hdul, declared, surface_brightness)


def read_folder(folder: str, declared: Declared, surface_brightness: bool = True) -> tuple[list[HostImage], list]:
    """Every host image in a folder (all layouts above), and ``(file, reason, detail)`` for files that fail."""
    if all(os.path.exists(os.path.join(folder, f"{b}.fits")) for b in BANDS):
        return read_band_stacks(folder, declared), []
    hosts, failed = [], []
    psf_files = set()
    paths = sorted(glob.glob(os.path.join(folder, "*.fits")) + glob.glob(os.path.join(folder, "*.fits.gz"))
                   + glob.glob(os.path.join(folder, "*.npz")))
    for path in paths:
        base = os.path.basename(path)
        if base.lower().startswith(("copsf_", "psf_")):
            psf_files.add(path)
            continue
        try:
            if path.endswith(".npz"):
                hosts.append(read_npz(path))
                continue
            with open_fits(path) as hdul:
                hosts.append(read_fits_host(path, hdul, declared, surface_brightness))
        except CutoutUnavailable as err:
            failed.append((base, err.reason, err.detail))
        except (OSError, ValueError) as err:
            failed.append((base, "corrupt_file", f"{type(err).__name__}: {err}"[:200]))
    return hosts, failed


# ------------------------------------------------------------------------------------------------
# One host image -> the stamp 4c renders into
# ------------------------------------------------------------------------------------------------

def _blur(image: np.ndarray, fwhm_arcsec: float, pixscale_arcsec: float) -> np.ndarray:
    # mirrored edges: sky continues as sky, and the total flux is kept exactly
    return ndimage.gaussian_filter(image, fwhm_arcsec / GAUSS_FWHM_PER_SIGMA / pixscale_arcsec, mode="reflect")


def matching_kernel_fwhm(native: float, target: float, psf: np.ndarray | None, pixscale_arcsec: float) -> float:
    """FWHM (arcsec) of the Gaussian that takes a PSF of FWHM ``native`` to ``target``.

    With the PSF image, the kernel is solved for on it (bisection on the measured FWHM of the
    convolved PSF: exact for any PSF shape, wings included); without, ``sqrt(target^2 - native^2)``,
    exact for Gaussian PSFs.
    """
    guess = math.sqrt(target**2 - native**2)
    if psf is None:
        return guess
    lo, hi = 0.0, 2.0 * target
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        if measure_psf_fwhm(_blur(psf, mid, pixscale_arcsec), pixscale_arcsec) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def match_seeing(image: np.ndarray, fwhm_arcsec, target_arcsec, pixscale_arcsec: float,
                 psf_images: dict | None = None) -> tuple[np.ndarray, str]:
    """Convolve each band with the Gaussian that takes its PSF FWHM to the target (only where sharper).

    The kernel (:func:`matching_kernel_fwhm`, solved on the band's PSF image when given) is stated
    in the returned note. Mirrored edges keep the total flux of each band exactly.
    """
    out, notes = np.array(image, dtype=float), []
    for i, (b, native, target) in enumerate(zip(BANDS, fwhm_arcsec, target_arcsec, strict=True)):
        if native >= target:
            continue
        psf = None if psf_images is None else psf_images.get(b)
        k_fwhm = matching_kernel_fwhm(native, target, psf, pixscale_arcsec)
        out[i] = _blur(out[i], k_fwhm, pixscale_arcsec)
        how = "solved on the PSF image" if psf is not None else "in quadrature"
        notes.append(f"{b}: Gaussian FWHM {k_fwhm:.3f}\" ({native:.3f}\" -> {target:.3f}\", {how})")
    return out, "seeing matched: " + ", ".join(notes) if notes else ""


def noise_invvar(image: np.ndarray, shape: tuple) -> np.ndarray:
    """Constant inverse variance per band (1/nanomaggies^2; 0 where none) of ``shape``, from the MAD of
    the border frame of ``image`` (the whole cutout on the 0.262" grid: its frame is the farthest sky)."""
    sig = np.array([robust_sigma(border_pixels(plane, NOISE_BORDER_PIX)) for plane in image])
    iv = np.where((sig > 0) & np.isfinite(sig), 1.0 / np.where(sig > 0, sig, 1.0) ** 2, 0.0)
    return np.broadcast_to(iv[:, None, None], shape).astype(np.float32)


def host_stamp(host: HostImage, size_pix: int, psf_fwhm_arcsec: tuple, ra=None, dec=None) -> HostStamp:
    """Standardise a host image into a ``size_pix`` stamp at 0.262"/pix (``ok`` False with a reason when not).

    On the DR10 grid the stamp is cut exactly as from a brick (:func:`cut_stamp_at`: the host at its
    nearest pixel, through the WCS when there is one, else at the cutout centre); otherwise the
    image is resampled, flux-conserving, onto a stamp centred on the cutout centre.
    ``psf_fwhm_arcsec`` is the PSF the row is rendered with. Reject reasons: ``cutout_too_small``,
    ``missing_coverage:<band>`` (more than 1% of the stamp exactly 0), ``zero_invvar``,
    ``nonfinite_pixels``, ``no_noise_estimate`` (a band whose border frame has no scatter).
    """
    size = int(check_range("size_pix", size_pix, 8, 4096, integer=True))
    ra = host.ra if ra is None else ra
    dec = host.dec if dec is None else dec
    b, h, w = host.image.shape
    on_grid = on_dr10_grid(host.pixscale_arcsec)
    if on_grid:
        invvar = host.invvar if host.invvar is not None else np.ones_like(host.image)
        brick = CoaddBrick(brickname=str(bricknames_for(ra, dec)) if ra is not None else "", bands=BANDS,
                           image={band: host.image[i].astype(np.float32) for i, band in enumerate(BANDS)},
                           invvar={band: invvar[i].astype(np.float32) for i, band in enumerate(BANDS)},
                           psfsize={band: np.full((h, w), psf_fwhm_arcsec[i], np.float32) for i, band in enumerate(BANDS)},
                           maskbits=host.maskbits if host.maskbits is not None else np.zeros((h, w), np.int32),
                           wcs=host.wcs, pixscale_arcsec=host.pixscale_arcsec, shape=(h, w))
        if host.wcs is not None and ra is not None:
            stamp = cut_stamp(brick, ra, dec, size)
        else:
            stamp = cut_stamp_at(brick, (w - 1) / 2.0, (h - 1) / 2.0, size)
        if stamp.reject_reason == "off_brick_edge":
            stamp.reject_reason = "cutout_too_small"
        stamp.psf_fwhm_arcsec = tuple(float(f) for f in psf_fwhm_arcsec)   # as given, not via the float32 map
        grid_image = host.image
    else:
        stamp = HostStamp(brickname="", bands=BANDS, size_pix=size, ok=False)
        if min(h, w) < size * PIXSCALE_DR10_ARCSEC / host.pixscale_arcsec - 1e-6:
            stamp.reject_reason = "cutout_too_small"
            return stamp
        # the whole cutout on the 0.262" grid, its side of the stamp's parity so the central
        # size x size pixels are exactly the stamp (same pixel edges), and its frame gives the noise
        n = math.ceil(max(h, w) * host.pixscale_arcsec / PIXSCALE_DR10_ARCSEC)
        n += (n - size) % 2
        grid_image, _ = area_weighted_resample(host.image, host.pixscale_arcsec, PIXSCALE_DR10_ARCSEC, (n, n))
        o = (n - size) // 2
        stamp.image = grid_image[:, o:o + size, o:o + size].astype(np.float32)
        stamp.invvar = np.ones_like(stamp.image)
        stamp.maskbits = np.zeros((size, size), np.int32)
        stamp.dx_pix = stamp.dy_pix = 0.0 if size % 2 else -0.5   # the cutout centre, from the central pixel
        stamp.psf_fwhm_arcsec = tuple(float(f) for f in psf_fwhm_arcsec)
        stamp.ok = bool(np.all(np.isfinite(stamp.image)))
        stamp.reject_reason = None if stamp.ok else "nonfinite_pixels"
    if not stamp.ok:
        return stamp
    for i, band in enumerate(BANDS):
        if np.mean(stamp.image[i] == 0.0) > MAX_ZERO_FRACTION:
            stamp.ok, stamp.reject_reason = False, f"missing_coverage:{band}"
            return stamp
    if host.invvar is None or not on_grid:   # a resampled invvar would ignore the noise correlations it made
        stamp.invvar = noise_invvar(grid_image, stamp.image.shape)
        if np.any(stamp.invvar[:, 0, 0] <= 0):
            stamp.ok, stamp.reject_reason = False, "no_noise_estimate"
    return stamp


def crop_stamp(stamp: HostStamp, size_pix: int) -> HostStamp:
    """The central ``size_pix`` stamp of a larger one, the host kept at the central pixel (as :func:`cut_stamp`)."""
    big, size = stamp.size_pix, int(size_pix)
    out = HostStamp(brickname=stamp.brickname, bands=stamp.bands, size_pix=size, ok=False,
                    psf_fwhm_arcsec=stamp.psf_fwhm_arcsec, dx_pix=stamp.dx_pix, dy_pix=stamp.dy_pix,
                    pixscale_arcsec=stamp.pixscale_arcsec)
    if size > big:
        out.reject_reason = "cutout_too_small"
        return out
    o = big // 2 - size // 2
    sl = (slice(None), slice(o, o + size), slice(o, o + size))
    out.image, out.invvar = stamp.image[sl], stamp.invvar[sl]
    out.maskbits = None if stamp.maskbits is None else stamp.maskbits[sl[1:]]
    centre_shift = 0.5 if size % 2 == 0 else 0.0
    ps = stamp.pixscale_arcsec
    out.lens_offset_arcsec = ((stamp.dx_pix + centre_shift) * ps, (stamp.dy_pix + centre_shift) * ps)
    if np.any(out.invvar[:, size // 2, size // 2] <= 0):
        out.reject_reason = "zero_invvar"
        return out
    if not (np.all(np.isfinite(out.image)) and np.all(np.isfinite(out.invvar))):
        out.reject_reason = "nonfinite_pixels"
        return out
    out.ok = True
    return out
