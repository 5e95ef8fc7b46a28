"""Gen5 real-galaxy sources: COSMOS loader V2, image measurements and the HDF5 bank builder.

Reads a GalSim ``real_galaxy_catalog`` directory as distributed (catalog FITS table, the
``<catalog>_fits.fits`` parametric-fit table, image files holding one HDU per galaxy) with
astropy alone, or the HDF5 bank :func:`build_cosmos_bank` writes (h5py, imported lazily).

Measurements (all on background-subtracted images, flux per pixel):

* background: median of the outer border ring (``BORDER_PIX`` wide) per image.
* centroid: flux-weighted first moment inside a circle of 3 half-light radii, iterated from the
  peak of the smoothed image (:func:`flux_weighted_centroid`).
* half-light radius (arcsec): circular-aperture growth curve about that centroid (sep's exact
  sub-pixel aperture sums), radius enclosing half of the stamp's total flux — the same
  definition as SExtractor's ``FLUX_RADIUS`` (the catalog's ``flux_radius``, in 0.03" pixels).
* clumpiness S in [0, 1] (Conselice 2003, background-corrected): residual ``R = I - G(I)`` with
  ``G`` a Gaussian of sigma ``max(1 pix, 0.25 hlr)``; ``S = (sum R+ - N sigma_R / sqrt(2 pi)) /
  sum I+`` over pixels at ``0.25 hlr < r < 2 hlr``, where ``sigma_R`` is the residual noise on
  the border (the second term is the expected positive part of pure noise); clipped to [0, 1].

Resampling (:func:`resample_to_pixscale`) is area-weighted (:mod:`dhs_gen.resample`): each input
pixel's flux is shared among output pixels in proportion to their exact overlap; flux is conserved
exactly when the output grid covers the input. The catalog readers and the bank writer live in
:mod:`dhs_gen.cosmos_readers`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sep
from scipy import ndimage

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.cosmos_readers import (  # noqa: F401  (re-exported: these lived here)
    CUT_REASONS,
    STAMP_FLUX_RTOL,
    GalSimCatalog,
    HDF5Bank,
    SyntheticBank,
    _quality_cut,
    _write_bank,
)
from dhs_gen.errors import InvalidValueError, check_choice, check_range
from dhs_gen.resample import area_weighted_resample
from dhs_gen.utils import rng_for

BORDER_PIX = 4
"""Width (pixels) of the border ring whose median is the background."""


# ----------------------------------------------------------------------------- resampling
def resample_to_pixscale(image, src_pixscale: float, target_pixscale: float = PIXSCALE_DR10_ARCSEC,
                         out_size: int | None = None, center_arcsec=(0.0, 0.0)) -> np.ndarray:
    """Area-weighted resampling of a flux-per-pixel image onto another pixel grid.

    Parameters
    ----------
    image : array (H, W)
        Flux per input pixel (any unit).
    src_pixscale, target_pixscale : float
        Input and output pixel scales, arcsec per pixel.
    out_size : int, optional
        Output side, pixels. Default: the smallest grid covering the input, ``ceil(N src / dst)``
        per axis (flux then conserved to float rounding). A smaller grid crops (flux is lost).
    center_arcsec : (x, y) in arcsec
        Input position, relative to the input stamp centre (DESIGN grid), that lands on the
        output stamp centre; ``(0, 0)`` keeps the centres aligned.

    Returns
    -------
    ndarray (H', W') float64, flux per output pixel (same unit as ``image``).
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < 1:
        raise InvalidValueError("image", img, "must be a non-empty 2-D image (H, W)")
    src = check_range("src_pixscale", src_pixscale, 0.0, math.inf, lo_open=True)
    dst = check_range("target_pixscale", target_pixscale, 0.0, math.inf, lo_open=True)
    h, w = img.shape
    if out_size is None:
        oh, ow = (max(1, math.ceil(n * src / dst - 1e-9)) for n in (h, w))
    else:
        oh = ow = int(check_range("out_size", out_size, 1, 100_000))
    cx, cy = (check_range("center_arcsec", c) for c in center_arcsec)
    return area_weighted_resample(img, src, dst, (oh, ow), (cx, cy))[0]


# ----------------------------------------------------------------------------- measurements
def border_pixels(image: np.ndarray, width: int = BORDER_PIX) -> np.ndarray:
    """1-D array of the pixels in the outer ring of ``width`` pixels of a 2-D image."""
    w = max(1, min(width, min(image.shape) // 4))
    mask = np.ones(image.shape, bool)
    mask[w:-w, w:-w] = False
    return image[mask]


def robust_sigma(values: np.ndarray) -> float:
    """Gaussian-equivalent standard deviation from the median absolute deviation."""
    v = np.asarray(values, dtype=float)
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def flux_weighted_centroid(image, n_iter: int = 4, radius_hlr: float = 3.0) -> tuple[float, float]:
    """Flux-weighted centroid ``(x, y)`` in pixel indices (x = column) of a galaxy stamp.

    First moment of the image inside a circle of ``radius_hlr`` half-light radii (at least 3
    pixels), iterated ``n_iter`` times: start at the peak of the sigma-1.5-pixel smoothed image
    with a circle of ``min(H, W) / 4`` pixels, then re-centre and re-measure the half-light
    radius each time. The circle keeps stamp-edge neighbours and most sky noise out; the
    weights are not clipped at 0, so symmetric noise does not pull the centroid.
    """
    img = np.asarray(image, dtype=float)
    smooth = ndimage.gaussian_filter(img, 1.5)
    yy, xx = np.indices(img.shape, dtype=float)
    y0, x0 = (float(v) for v in np.unravel_index(np.argmax(smooth), img.shape))
    radius = max(3.0, min(img.shape) / 4.0)
    for _ in range(n_iter):
        wgt = img * (((xx - x0) ** 2 + (yy - y0) ** 2) <= radius**2)
        if not wgt.sum() > 0:
            break
        x0, y0 = float((wgt * xx).sum() / wgt.sum()), float((wgt * yy).sum() / wgt.sum())
        hlr_pix = half_light_radius(img, 1.0, (x0, y0))
        if not math.isfinite(hlr_pix):
            break
        radius = max(3.0, radius_hlr * hlr_pix)
    return x0, y0


def half_light_radius(image, pixscale: float, center_pix=None) -> float:
    """Radius (arcsec) of the circle about ``center_pix`` enclosing half the stamp's total flux.

    Parameters
    ----------
    image : array (H, W)
        Background-subtracted flux per pixel; its sum is the total flux.
    pixscale : float
        Arcsec per pixel.
    center_pix : (x, y) pixel indices, optional
        Default :func:`flux_weighted_centroid`.

    Returns
    -------
    float, arcsec (NaN when the total flux is not positive).
    """
    img = np.array(image, dtype=np.float64, order="C")  # sep needs a writable C array
    pixscale = check_range("pixscale", pixscale, 0.0, math.inf, lo_open=True)
    total = float(img.sum())
    if not total > 0:
        return math.nan
    x0, y0 = center_pix if center_pix is not None else flux_weighted_centroid(img)
    h, w = img.shape
    rmax = math.hypot(max(x0, w - 1 - x0), max(y0, h - 1 - y0)) + 1.0
    r, _flag = sep.flux_radius(img, np.array([x0]), np.array([y0]), np.array([rmax]), 0.5,
                               normflux=np.array([total]), subpix=5)
    return float(r[0]) * pixscale


def clumpiness(image, hlr_pix: float, center_pix) -> float:
    """Background-corrected Conselice smoothness S in [0, 1]; see the module docstring."""
    img = np.asarray(image, dtype=float)
    if not (hlr_pix > 0 and math.isfinite(hlr_pix)):
        return math.nan
    resid = img - ndimage.gaussian_filter(img, max(1.0, 0.25 * hlr_pix))
    yy, xx = np.indices(img.shape, dtype=float)
    r = np.hypot(xx - center_pix[0], yy - center_pix[1])
    ann = (r > 0.25 * hlr_pix) & (r < 2.0 * hlr_pix)
    denom = float(np.clip(img[ann], 0, None).sum())
    if denom <= 0:
        return math.nan
    noise = robust_sigma(border_pixels(resid)) / math.sqrt(2.0 * math.pi) * ann.sum()
    return float(np.clip((np.clip(resid[ann], 0, None).sum() - noise) / denom, 0.0, 1.0))


# ----------------------------------------------------------------------------- sources
@dataclass(frozen=True)
class COSMOSSource:
    """One real galaxy: background-subtracted image and its measurements.

    Attributes
    ----------
    image : ndarray (H, W) float64, read-only
        Flux per pixel in the catalog's image unit (ACS: counts/s), border median subtracted,
        non-finite pixels set to 0 (``n_nonfinite`` counts them).
    pixscale : float, arcsec per pixel.
    half_light_radius : float, arcsec (growth curve, see module docstring).
    clumpiness : float in [0, 1] (NaN if unmeasurable).
    catalog_id : int, the catalog IDENT.
    flux : float, total of ``image`` (image unit).
    flux_radius_catalog : float, arcsec (catalog ``flux_radius`` x catalog pixel scale) or NaN.
    mag : float, catalog MAG (AB) or NaN.
    band : str, e.g. "F814W" ("" when unknown).
    index : int, position in the loader.
    n_nonfinite : int, NaN/inf pixels replaced by 0.
    """

    image: np.ndarray = field(repr=False)
    pixscale: float
    half_light_radius: float
    clumpiness: float
    catalog_id: int
    flux: float
    flux_radius_catalog: float = math.nan
    mag: float = math.nan
    band: str = ""
    index: int = -1
    n_nonfinite: int = 0


def prepare_image(raw) -> tuple[np.ndarray, int]:
    """float64 copy with non-finite pixels set to 0 and the border median subtracted; (image, n_nonfinite)."""
    img = np.array(raw, dtype=np.float64)
    bad = ~np.isfinite(img)
    img[bad] = 0.0
    good_border = border_pixels(np.where(bad, np.nan, img))
    good_border = good_border[np.isfinite(good_border)]
    if good_border.size:
        img -= np.median(good_border)
    img[bad] = 0.0
    return img, int(bad.sum())


def measure_source(raw, pixscale: float, meta: dict, index: int) -> COSMOSSource:
    """Build a :class:`COSMOSSource` from a raw stamp (flux per pixel) and catalog metadata."""
    img, n_bad = prepare_image(raw)
    center = flux_weighted_centroid(img)
    hlr = meta.get("hlr_arcsec")
    hlr = half_light_radius(img, pixscale, center) if hlr is None else float(hlr)
    clump = meta.get("clumpiness")
    clump = clumpiness(img, hlr / pixscale, center) if clump is None else float(clump)
    img.setflags(write=False)
    return COSMOSSource(image=img, pixscale=float(pixscale), half_light_radius=hlr, clumpiness=clump,
                        catalog_id=int(meta.get("catalog_id", index)), flux=float(img.sum()),
                        flux_radius_catalog=float(meta.get("flux_radius_arcsec", math.nan)),
                        mag=float(meta.get("mag", math.nan)), band=str(meta.get("band", "")),
                        index=index, n_nonfinite=n_bad)


MODES = ("galsim", "hdf5", "synthetic")


class COSMOSLoaderV2:
    """Deterministic access to real galaxy stamps (seed 004, section 6).

    Parameters
    ----------
    cosmos_path : str or Path
        ``galsim``: a real_galaxy_catalog directory or catalog file; ``hdf5``: a bank file from
        :func:`build_cosmos_bank`; ``synthetic``: ignored (procedural stand-ins, tests only).
    mode : {"galsim", "hdf5", "synthetic"}
    band : str, optional
        galsim mode: keep only catalogs of this band (required when a directory mixes bands).
    n_synthetic : int
        Number of synthetic sources (synthetic mode only).
    pixel_scale : float, optional
        Expected native pixel scale, arcsec/pix; galsim mode checks it against the catalog.
    """

    def __init__(self, cosmos_path, mode: str = "galsim", band: str | None = None, n_synthetic: int = 64,
                 pixel_scale: float | None = None):
        self.mode = check_choice("mode", mode, MODES)
        self.cosmos_path = None if cosmos_path is None else str(cosmos_path)
        if mode != "synthetic":
            if cosmos_path is None or not Path(cosmos_path).exists():
                raise InvalidValueError("cosmos_path", self.cosmos_path, f"does not exist (mode={mode!r})")
        if mode == "galsim":
            self._reader = GalSimCatalog(Path(cosmos_path), band=band, pixel_scale=pixel_scale)
        elif mode == "hdf5":
            self._reader = HDF5Bank(Path(cosmos_path))
        else:
            self._reader = SyntheticBank(int(check_range("n_synthetic", n_synthetic, 1, 1e6)))

    def __len__(self) -> int:
        return len(self._reader)

    def get_source_by_index(self, index: int) -> COSMOSSource:
        """Source number ``index`` (0 <= index < len(self))."""
        i = int(check_range("index", index, 0, len(self) - 1))
        raw, pixscale, meta = self._reader.read(i)
        return measure_source(raw, pixscale, meta, i)

    def index_for_seed(self, seed) -> int:
        """Index chosen by ``seed`` (rng from :func:`dhs_gen.utils.rng_for`, salt "cosmos_v2")."""
        return int(rng_for(str(seed), "cosmos_v2").integers(len(self)))

    def get_source(self, seed) -> COSMOSSource:
        """Deterministic source for ``seed`` (any str/int key)."""
        return self.get_source_by_index(self.index_for_seed(seed))

    def resample_to_pixscale(self, image, target_pixscale: float = PIXSCALE_DR10_ARCSEC,
                             src_pixscale: float | None = None, out_size: int | None = None) -> np.ndarray:
        """:func:`resample_to_pixscale` with the loader's native pixel scale as default source scale."""
        src = self._reader.pixscale if src_pixscale is None else src_pixscale
        return resample_to_pixscale(image, src, target_pixscale, out_size=out_size)


def build_cosmos_bank(galsim_path, output_h5, n_sources: int, stamp_size: int, pixel_scale: float, seed,
                      target_pixscale: float = PIXSCALE_DR10_ARCSEC, band: str | None = None,
                      min_snr: float = 20.0, max_edge_flux_frac: float = 0.05,
                      max_neighbour_flux_frac: float = 0.1, max_flux_loss: float = 0.02) -> dict:
    """Select, cut, resample to the target grid and write real galaxies to an HDF5 bank.

    Parameters
    ----------
    galsim_path : str or Path
        GalSim real_galaxy_catalog directory or catalog file.
    output_h5 : str or Path
        Output HDF5 path.
    n_sources : int
        Sources wanted (fewer are written when the catalog runs out; the summary says so).
    stamp_size : int
        Output stamp side, pixels of ``target_pixscale``.
    pixel_scale : float
        Native pixel scale, arcsec/pix (checked against the catalog's PIXEL_SCALE).
    seed : int or str
        Order in which candidates are tried (rng_for(seed, "cosmos_bank").permutation).
    target_pixscale : float
        Output pixel scale, arcsec/pix.
    min_snr : float
        Cut: total flux / (noise sigma * sqrt(pixels within 2 hlr)).
    max_edge_flux_frac : float
        Cut: fraction of |flux| in the border ring of the native stamp (neighbours / truncation).
    max_neighbour_flux_frac : float
        Cut: flux of the brightest other sep detection relative to the galaxy.
    max_flux_loss : float
        Cut: flux fraction falling outside the output stamp ("too big").

    Returns
    -------
    dict: n_requested, n_candidates, n_written, cuts (reason -> count), output path; also stored
    as HDF5 attributes.
    """
    return _write_bank(galsim_path, output_h5, n_sources, stamp_size, pixel_scale, seed, target_pixscale,
                               band, min_snr, max_edge_flux_frac, max_neighbour_flux_frac, max_flux_loss)


__all__ = ["COSMOSLoaderV2", "COSMOSSource", "build_cosmos_bank", "clumpiness",
           "flux_weighted_centroid", "half_light_radius", "resample_to_pixscale"]
