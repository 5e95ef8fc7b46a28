"""Gen6 bank builder: isolated galaxies from real deep ground-based multi-band scenes -> NPZ.

Input scenes (``fits_dir``, read in sorted name order, byte-identical duplicates skipped):

* FITS: the first HDU holding a 3-D cube ``(bands, H, W)`` with a celestial WCS (which gives the
  pixel scale, checked against ``src_pixscale_arcsec``); optional same-shape HDUs named
  ``VARIANCE`` and ``MASK``. Band names from ``band_order`` (HSC cutouts: g, r, i, z, y).
  2-D images (e.g. the HST cut-outs) and files without a celestial WCS (PSF cubes) are skipped,
  with the reason in the summary.
* NPZ scenes (scarlet's layout): ``images (B, H, W)``, optional ``filters``, ``variance``,
  ``mask`` (bit mask; bits in ``bad_mask_bits`` mark bad pixels) or ``weights`` (0 = bad). They have no WCS: their pixel scale is taken to be ``src_pixscale_arcsec``.

Per scene: pick g, r, z; subtract each band's border-ring median; set bad pixels to 0; detect on
the g+r+z sum with ``sep`` (threshold in sigma of the summed noise, multi-threshold deblending);
per object (brightest first) keep its segment grown by ``wing_pix`` (its faint wings) minus
the other objects' segments dilated by ``neighbour_dilate_pix`` (their wings), zero the rest
(sky and neighbours), resample every band area-weighted to ``target_pixscale_arcsec`` with the
barycentre of the kept light (all three bands) on the stamp centre, pad/crop to
``stamp_size`` and convert to nanomaggies (``src_zeropoint_ab``; HSC coadds: 27.0). All
bands of a template share one segmentation, so the colours are the scene's own.

Cuts, counted in the summary: ``touches_edge`` (more than ``max_edge_flux_frac`` of the
segment's flux on the scene's outermost pixels: truncated),
``low_snr`` (isophotal S/N on the detection image below ``min_snr``), ``nonpositive_flux``
(a band's isophotal flux <= 0), ``too_big`` (more than ``max_flux_loss`` of the flux outside
the stamp).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import sep
from astropy.io import fits
from astropy.wcs import WCS
from astropy.wcs.utils import proj_plane_pixel_scales
from scipy import ndimage

from dhs_gen.conventions import DR10_BANDS, ZEROPOINT_AB
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.imaging.measure import border_pixels, half_light_radius, robust_sigma
from dhs_gen.imaging.resample import resample_to_pixscale

BANDS = tuple(DR10_BANDS)
HSC_BAND_ORDER = ("g", "r", "i", "z", "y")
HSC_ZEROPOINT_AB = 27.0
"""HSC coadd images: AB magnitude of one image unit."""

HSC_BAD_MASK_BITS = 1 | 2 | 16 | 256
"""HSC mask planes BAD, SAT, EDGE, NO_DATA (bit numbers of the HSC pipeline's default planes)."""

CUT_REASONS = ("touches_edge", "low_snr", "nonpositive_flux", "too_big")


class _Scene:
    def __init__(self, name, images, bands, pixscale=None, variance=None, bad=None):
        self.name, self.images, self.bands = name, np.asarray(images, np.float64), tuple(bands)
        self.pixscale, self.variance = pixscale, variance
        self.bad = np.zeros(self.images.shape, bool) if bad is None else np.asarray(bad, bool)


def _read_fits(path: Path, band_order):
    with fits.open(path) as hdul:
        cube = next((h for h in hdul if h.data is not None and h.data.ndim == 3), None)
        if cube is None:
            return "no 3-D (bands, H, W) cube: not a multi-band scene"
        wcs = WCS(cube.header, naxis=2)
        if not wcs.has_celestial:
            return "no celestial WCS (a PSF or non-sky cube)"
        named = {h.name.upper(): h.data for h in hdul if h.data is not None and h.data.shape == cube.data.shape}
        pixscale = float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)
        if cube.data.shape[0] != len(band_order):
            return f"{cube.data.shape[0]} planes but band_order has {len(band_order)}"
        bad = (np.asarray(named["MASK"]).astype(np.int64) & HSC_BAD_MASK_BITS) != 0 if "MASK" in named else None
        return _Scene(path.name, cube.data, band_order, pixscale, named.get("VARIANCE"), bad)


def _read_npz(path: Path, band_order, bad_mask_bits):
    with np.load(path, allow_pickle=False) as z:
        if "images" not in z.files or z["images"].ndim != 3:
            return "no 'images' (bands, H, W) array"
        images = z["images"]
        bands = tuple(str(b) for b in z["filters"]) if "filters" in z.files else tuple(band_order)
        if len(bands) != images.shape[0]:
            return f"{images.shape[0]} planes but {len(bands)} band names"
        variance, bad = (z["variance"] if "variance" in z.files else None), None
        if "mask" in z.files:
            bad = (z["mask"].astype(np.int64) & bad_mask_bits) != 0
        elif "weights" in z.files:
            # Only the zero weights are used: what scarlet's "weights" scale as (1/var or 1/sigma)
            # is not recorded, so the noise is measured on the border instead.
            bad = z["weights"] <= 0
        return _Scene(path.name, images, bands, None, variance, bad)


def _read_scenes(fits_dir: Path, src_pixscale, band_order, bad_mask_bits):
    scenes, skipped, seen = [], {}, set()
    for path in sorted(p for p in fits_dir.iterdir() if p.is_file()):
        name = path.name.lower()
        if name.endswith((".fits", ".fits.gz", ".fits.fz", ".fit")):
            scene = _read_fits(path, band_order)
        elif name.endswith(".npz"):
            scene = _read_npz(path, band_order, bad_mask_bits)
        else:
            continue
        if isinstance(scene, str):
            skipped[path.name] = scene
            continue
        if scene.pixscale is not None and abs(scene.pixscale / src_pixscale - 1.0) > 0.02:
            skipped[path.name] = f"pixel scale {scene.pixscale:.4g}\" != src_pixscale_arcsec {src_pixscale}"
            continue
        missing = [b for b in BANDS if b not in scene.bands]
        if missing:
            skipped[path.name] = f"missing band(s) {missing}"
            continue
        digest = hashlib.blake2b(np.ascontiguousarray(scene.images).tobytes(), digest_size=16).hexdigest()
        if digest in seen:
            skipped[path.name] = "duplicate of an earlier scene (same pixels)"
            continue
        seen.add(digest)
        scenes.append(scene)
    return scenes, skipped


def _prepare(scene: _Scene):
    """g, r, z planes background-subtracted with bad pixels at 0, and the per-band noise sigma."""
    sel = [scene.bands.index(b) for b in BANDS]
    img, bad = scene.images[sel].copy(), scene.bad[sel] | ~np.isfinite(scene.images[sel])
    sigma = np.empty(len(BANDS))
    for k in range(len(BANDS)):
        border = border_pixels(np.where(bad[k], np.nan, img[k]))
        border = border[np.isfinite(border)]
        img[k] -= np.median(border)
        if scene.variance is not None:
            var = np.asarray(scene.variance[sel[k]], np.float64)
            sigma[k] = math.sqrt(np.median(var[np.isfinite(var) & ~bad[k]]))
        else:
            sigma[k] = robust_sigma(border)
    img[bad] = 0.0
    return img, sigma, int(bad.any(axis=0).sum())


def build_deep_source_bank(fits_dir: str, out_npz: str, n_sources: int, stamp_size: int,
                           src_pixscale_arcsec: float, target_pixscale_arcsec: float, *,
                           band_order=HSC_BAND_ORDER, src_zeropoint_ab: float = HSC_ZEROPOINT_AB,
                           detect_thresh: float = 1.5, min_area_pix: int = 5, min_snr: float = 10.0,
                           neighbour_dilate_pix: int = 2, wing_pix: int = 3, max_flux_loss: float = 0.02,
                           max_edge_flux_frac: float = 0.01,
                           bad_mask_bits: int = HSC_BAD_MASK_BITS) -> dict:
    """Build a compact NPZ bank of isolated deep ground-based galaxy templates (g, r, z).

    Parameters
    ----------
    fits_dir : str
        Folder of multi-band scenes (see module docstring).
    out_npz : str
        Output file (written exactly at this path; loadable with ``allow_pickle=False``).
    n_sources : int
        Templates wanted; fewer are written when the scenes run out (``n_written``).
    stamp_size : int
        Output stamp side, pixels of ``target_pixscale_arcsec``.
    src_pixscale_arcsec : float
        Scene pixel scale, arcsec/pix (HSC: 0.168); checked against each FITS WCS.
    target_pixscale_arcsec : float
        Output pixel scale, arcsec/pix (DR10: 0.262).
    band_order : sequence of str
        Band of each cube plane when the file does not name them.
    src_zeropoint_ab : float
        AB magnitude of one scene image unit; images and fluxes are stored in nanomaggies.
    detect_thresh : float
        sep detection threshold, in sigma of the g+r+z noise.
    min_area_pix, min_snr, neighbour_dilate_pix, wing_pix, max_flux_loss, max_edge_flux_frac
        Detection minimum area (scene pixels), isophotal S/N cut, dilation (scene pixels) of the
        neighbours' masks, width (scene pixels) of the ring of faint wings kept around the
        object's segment, largest flux fraction allowed outside the stamp, largest fraction of
        the segment's flux on the scene's outermost pixel ring (more: truncated).

    Returns
    -------
    dict
        ``out_npz, n_requested, n_scenes, n_detected, n_written, cuts, skipped_files``.

    NPZ arrays: ``images (N, 3, S, S) float32`` (nanomaggies per target pixel, bands g, r, z),
    ``source_file (N,) str``, ``object_index (N,) int32`` (sep index in the scene),
    ``x_pix, y_pix (N,)`` (barycentre, scene pixels, x = column), ``flux (N, 3)`` (isophotal,
    nanomaggies), ``snr (N,)``, ``hlr_arcsec (N,)`` (r band), ``src_pixscale_arcsec (N,)``,
    ``target_pixscale_arcsec ()``, ``bands (3,) str``.
    """
    n_sources = int(check_range("n_sources", n_sources, 1, 10_000_000))
    stamp_size = int(check_range("stamp_size", stamp_size, 3, 4096))
    src = check_range("src_pixscale_arcsec", src_pixscale_arcsec, 0.0, math.inf, lo_open=True)
    dst = check_range("target_pixscale_arcsec", target_pixscale_arcsec, 0.0, math.inf, lo_open=True)
    to_nmgy = 10.0 ** ((ZEROPOINT_AB - check_range("src_zeropoint_ab", src_zeropoint_ab, 0.0, 50.0)) / 2.5)
    fits_dir = Path(fits_dir)
    if not fits_dir.is_dir():
        raise InvalidValueError("fits_dir", str(fits_dir), "is not a directory")
    scenes, skipped = _read_scenes(fits_dir, src, tuple(band_order), int(bad_mask_bits))
    cuts, rows, n_detected = dict.fromkeys(CUT_REASONS, 0), [], 0
    for scene in scenes:
        if len(rows) >= n_sources:
            break
        img, sigma, _ = _prepare(scene)
        det, det_sigma = np.ascontiguousarray(img.sum(axis=0)), float(np.sqrt((sigma**2).sum()))
        objs, seg = sep.extract(det, detect_thresh, err=det_sigma, minarea=min_area_pix, deblend_nthresh=32,
                                deblend_cont=0.005, segmentation_map=True)
        n_detected += len(objs)
        h, w = det.shape
        for k in np.argsort(-objs["flux"], kind="stable").tolist():
            if len(rows) >= n_sources:
                break
            row, reason = _template(img, det_sigma, objs[k], seg, k, scene, src, dst, stamp_size, to_nmgy,
                                    min_snr, neighbour_dilate_pix, wing_pix, max_flux_loss,
                                    max_edge_flux_frac)
            if reason:
                cuts[reason] += 1
            else:
                rows.append(row)
    if not rows:
        raise InvalidValueError("fits_dir", str(fits_dir), f"yielded no template (cuts={cuts}, skipped={skipped})")
    arrays = {key: np.array([r[key] for r in rows]) for key in rows[0]}
    arrays["images"] = arrays["images"].astype(np.float32)
    arrays["target_pixscale_arcsec"], arrays["bands"] = np.array(dst), np.array(BANDS)
    Path(out_npz).parent.mkdir(parents=True, exist_ok=True)
    with open(out_npz, "wb") as fh:  # a file handle: numpy would append ".npz" to a bare name
        np.savez_compressed(fh, **arrays)
    return {"out_npz": str(out_npz), "n_requested": n_sources, "n_scenes": len(scenes), "n_detected": n_detected,
            "n_written": len(rows), "cuts": cuts, "skipped_files": skipped}


def _template(img, det_sigma, obj, seg, k, scene, src, dst, stamp_size, to_nmgy, min_snr, dilate, wing_pix,
              max_loss, max_edge):
    """One template row dict, or (None, cut reason)."""
    own = seg == k + 1
    det = img.sum(axis=0)
    edge = np.zeros_like(own)
    edge[[0, -1], :] = edge[:, [0, -1]] = True
    if (det * (own & edge)).sum() > max_edge * (det * own).sum():  # truncated by the scene border
        return None, "touches_edge"
    if obj["flux"] / (det_sigma * math.sqrt(own.sum())) < min_snr:
        return None, "low_snr"
    neighbours = (seg > 0) & ~own
    if dilate > 0 and neighbours.any():
        neighbours = ndimage.binary_dilation(neighbours, iterations=int(dilate)) & ~own
    # Keep the segment plus a wing ring (light below the detection isophote); zero the rest: sky
    # noise and the background's residual error summed over a whole scene would swamp faint objects.
    keep = ndimage.binary_dilation(own, iterations=int(wing_pix)) & ~neighbours if wing_pix > 0 else own
    masked = np.where(keep[None], img, 0.0) * to_nmgy
    iso_flux = (masked * own[None]).sum(axis=(1, 2))
    if np.any(iso_flux <= 0) or np.any(masked.sum(axis=(1, 2)) <= 0):
        return None, "nonpositive_flux"
    h, w = own.shape
    # Centre on the barycentre of exactly the light kept (segment + wings, neighbours removed):
    # sep's isophotal barycentre ignores the wings, which a neighbour's mask can make lopsided.
    det_kept = masked.sum(axis=0)
    yy, xx = np.indices(own.shape, dtype=float)
    x, y = float((det_kept * xx).sum() / det_kept.sum()), float((det_kept * yy).sum() / det_kept.sum())
    if not (0 <= x <= w - 1 and 0 <= y <= h - 1):  # noise-dominated wings: fall back to sep's
        x, y = float(obj["x"]), float(obj["y"])
    centre = ((x - (w - 1) / 2.0) * src, (y - (h - 1) / 2.0) * src)
    stamps = np.stack([resample_to_pixscale(b, src, dst, out_size=stamp_size, center_arcsec=centre) for b in masked])
    totals = masked.sum(axis=(1, 2))
    if np.any(np.abs(1.0 - stamps.sum(axis=(1, 2)) / totals) > max_loss):
        return None, "too_big"
    r_band = masked[BANDS.index("r")]
    return {"images": stamps, "source_file": scene.name, "object_index": np.int32(k), "x_pix": x, "y_pix": y,
            "flux": iso_flux, "snr": float(obj["flux"] / (det_sigma * math.sqrt(own.sum()))),
            "hlr_arcsec": half_light_radius(r_band, src, (x, y)),
            "src_pixscale_arcsec": src}, None
