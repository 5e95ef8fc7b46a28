"""A standardised cutout: any (bands, H, W) image -> g, r, z nanomaggies per 0.262" pixel, with provenance.

Every cutout source of :mod:`jobs.cutouts.sources` ends in :func:`standardize`, so anchors and hosts
share one conversion: band selection, unit scaling, surface-brightness to flux, flux-conserving
resampling, centre crop, coverage check. A position without usable pixels raises
:class:`CutoutUnavailable` with a short reason code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import DhsError, check_range
from dhs_gen.imaging.resample import area_weighted_resample

BANDS = "grz"
MAX_ZERO_FRACTION = 0.01


class CutoutUnavailable(DhsError):
    """No usable pixels for a position: ``reason`` is a short code, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class Cutout:
    """Standardised pixels: ``image`` (3, H, W) float32 g, r, z nanomaggies per 0.262" pixel."""

    image: np.ndarray
    invvar: np.ndarray | None
    provenance: str


def standardize(image, pixscale_arcsec: float, bands: str, size_pix: int, source: str, scale: float = 1.0,
                scale_note: str = "", surface_brightness: bool = False, invvar=None) -> Cutout:
    """Any (B, H, W) cutout -> g, r, z nanomaggies per 0.262" pixel, ``size_pix`` square, with provenance.

    Parameters
    ----------
    image : array (B, H, W)
        Pixels in ``bands`` order.
    pixscale_arcsec : float
        Input pixel scale, arcsec per pixel.
    bands : str
        Band letters of the planes, e.g. ``"grizy"``; g, r, z are kept.
    size_pix : int
        Output side, pixels.
    source : str
        Where the pixels came from (first item of the provenance).
    scale : float
        Factor to nanomaggies (e.g. 1e-3 for counts at zeropoint 30).
    scale_note : str
        Why that factor (goes into the provenance).
    surface_brightness : bool
        Values are nanomaggies per 0.262" pixel *area* on a finer/coarser grid (Legacy Surveys
        viewer resampling) rather than flux per input pixel.
    invvar : array (B, H, W), optional
        1/nanomaggies^2 per pixel; kept only when no resampling is needed.
    """
    img = np.asarray(image, dtype=float)
    steps = [source]
    missing = [b for b in BANDS if b not in bands]
    if img.ndim != 3 or img.shape[0] != len(bands) or missing:
        raise CutoutUnavailable("missing_band", f"bands {bands!r}, image shape {img.shape}, need {BANDS}")
    idx = [bands.index(b) for b in BANDS]
    img = img[idx] * float(scale)
    if bands != BANDS:
        steps.append(f"bands g,r,z of {bands}")
    if scale != 1.0:
        steps.append(f"x{scale:g} to nanomaggies ({scale_note})")
    ratio = pixscale_arcsec / PIXSCALE_DR10_ARCSEC
    if surface_brightness:
        img = img * ratio**2  # per 0.262" pixel area -> per input pixel
        steps.append("surface brightness per 0.262\" pixel -> flux per input pixel")
    if abs(ratio - 1.0) > 1e-6:
        check_range("pixscale_arcsec", pixscale_arcsec, 0.0, 60.0, lo_open=True)
        img, coverage = area_weighted_resample(img, pixscale_arcsec, PIXSCALE_DR10_ARCSEC, (size_pix, size_pix))
        steps.append(f"area-weighted resample {pixscale_arcsec:.4f} -> {PIXSCALE_DR10_ARCSEC}\"/pix, {size_pix} px")
        inv = None
    else:
        h, w = img.shape[1:]
        y0, x0 = (h - size_pix) // 2, (w - size_pix) // 2
        coverage = np.zeros((size_pix, size_pix))
        out = np.zeros((3, size_pix, size_pix))
        inv = None if invvar is None else np.zeros((3, size_pix, size_pix))
        ys, xs = slice(max(0, y0), min(h, y0 + size_pix)), slice(max(0, x0), min(w, x0 + size_pix))
        yd, xd = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
        out[:, yd, xd], coverage[yd, xd] = img[:, ys, xs], 1.0
        if inv is not None:
            inv[:, yd, xd] = np.asarray(invvar, float)[idx][:, ys, xs]
        img = out
        if (h, w) != (size_pix, size_pix):
            steps.append(f"centre {'crop' if h >= size_pix else 'pad'} {h}x{w} -> {size_pix} px")
    if not np.all(np.isfinite(img)):
        raise CutoutUnavailable("nonfinite_pixels", source)
    covered = coverage >= 0.999
    zero_frac = max(float(np.mean(plane[covered] == 0.0)) if covered.any() else 1.0 for plane in img)
    if zero_frac > MAX_ZERO_FRACTION:
        raise CutoutUnavailable("missing_coverage", f"{zero_frac:.1%} of covered pixels are exactly 0 in {source}")
    if not covered.all():
        steps.append(f"{np.mean(~covered):.1%} of pixels outside the input (zero)")
    inv32 = None if inv is None else inv.astype(np.float32)
    return Cutout(img.astype(np.float32), inv32, "; ".join(steps))
