r"""Sim-to-real realism statistics: the same numbers measured on injected and on real lenses.

A generation whose injected arcs can be told from real lenses by simple image statistics
(brightness, colour, shape, noise) teaches a CNN the wrong thing: the classic failure is arcs
~100x too bright, which gave AUC 0.98 on simulations and 3-4 % recall on real lenses. Every
statistic here is computed by one function, :func:`stamp_statistics`, applied identically to
an injected stamp and to a real cutout (centre-cropped to the stamp size with
:func:`center_crop`), so differences between the two distributions are differences of the
images, not of the measurement.

Measurement (all per band g, r, z; images in nanomaggies per pixel)
    1. **Background**: the outer frame of ``BORDER_PIX`` pixels gives the sky level (median)
       and noise ``sigma = 1.4826 * MAD`` (nanomaggies); the frame is clear of arcs
       (theta_E <= 3" is 11.5 px, the frame starts 28 px out at 64x64).
    2. **Lens-light subtraction by azimuthal median**: in 1-pixel-wide annuli around the lens
       centre, the median of each annulus is subtracted. The median ignores an arc covering
       less than half of an annulus, and removes the round part of the lens light (and the
       sky level); a complete Einstein ring is partly subtracted, on both sides alike. The
       elliptical part of the lens light leaves a quadrupole whose annulus sum is small.
    3. **Annulus**: ``[theta_E - ANNULUS_HALF_WIDTH, theta_E + ANNULUS_HALF_WIDTH]`` arcsec
       (inner edge at least ``MIN_INNER_ARCSEC``) when theta_E is known, else the default
       ``DEFAULT_ANNULUS_ARCSEC`` = 0.8-2.5" (where ground-based lens arcs lie). The half
       width 0.8" is about half the DR10 seeing FWHM plus a pixel, so a PSF-blurred arc at
       theta_E falls inside.
    4. **Residual flux** in the annulus (nanomaggies, sum of the residual, noise averages to
       0), **residual colours** g-r, r-z (AB mags of those fluxes, NaN when a flux <= 0),
       **arc SNR** = annulus residual grz flux / its noise, with the noise from the stamp's
       invvar (``sqrt(sum 1/invvar)``) or, for real cutouts without invvar, from the border
       ``sigma`` of each band (``sqrt(n_pix) * sigma``), **peak residual surface
       brightness** = maximum of the 3x3-box-smoothed r residual in the annulus / pixel area
       (nanomaggies/arcsec^2; the 3x3 box keeps a single noise pixel from setting the peak).
    5. **Tangential elongation** of the brightest arc: a detection image ``sum_b residual_b
       / sigma_b`` smoothed by a 3x3 box, thresholded at 2 of its own border sigmas; the
       8-connected segment holding the annulus maximum is the arc. Its pixels, weighted by
       the detection value, give the radial extent ``sqrt(var r + 1/12 px^2)`` and the
       tangential extent ``r_mean * sqrt(var dphi + (1/12 px^2) / r_mean^2)`` (the 1/12 px^2
       term is the variance of a uniform pixel, so a one-pixel segment is round, not
       degenerate); ``elongation = tangential / radial`` (1 = round, arcs >> 1).
    6. **Background pixel statistics** of the frame, bands pooled: ``bg_chi_std`` = std of
       ``(pixel - median) * sqrt(invvar)`` (1 when invvar describes the noise; NaN without
       invvar), ``bg_std_over_mad`` = std / (1.4826 MAD) (1 for Gaussian noise, > 1 with
       tails or unmasked sources) and ``bg_excess_kurtosis`` (0 for Gaussian noise).
    7. **Lens light**: ``lens_flux_r_nmgy``, the sky-subtracted r flux within
       ``LENS_APERTURE_ARCSEC`` of the centre, and its AB magnitude ``lens_mag_r``.

Comparisons (:func:`compare_samples`) use the two-sample Kolmogorov-Smirnov test
(``scipy.stats.ks_2samp``) and the difference of medians with a percentile-bootstrap 95 % CI;
:func:`median_ratio` is the photometric gate's statistic.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage, stats
from scipy.interpolate import PchipInterpolator

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC, nmgy_to_mag
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.imaging.measure import BORDER_PIX, border_frame, robust_sigma

__all__ = [
    "DEFAULT_ANNULUS_ARCSEC", "ANNULUS_HALF_WIDTH", "STAT_NAMES",
    "annulus_arcsec", "azimuthal_median_residual", "center_crop", "stamp_statistics",
    "compare_samples", "median_ratio",
]

BANDS = "grz"
DEFAULT_ANNULUS_ARCSEC = (0.8, 2.5)
ANNULUS_HALF_WIDTH = 0.8   # arcsec
MIN_INNER_ARCSEC = 0.4     # arcsec: inside ~1.5 px the lens-light residual dominates
LENS_APERTURE_ARCSEC = 1.0
LENS_SHAPE_RADIUS_ARCSEC = 0.5
MIN_LENS_Q = 0.4
DETECT_NSIGMA = 2.0
_PIX_VAR = 1.0 / 12.0      # variance (px^2) of a uniform distribution over one pixel

#: Keys of :func:`stamp_statistics`, in a stable order (also the domain-classifier features).
STAT_NAMES = (
    "resid_flux_g_nmgy", "resid_flux_r_nmgy", "resid_flux_z_nmgy", "resid_color_gr_mag", "resid_color_rz_mag",
    "arc_snr", "peak_resid_sb_r_nmgy_arcsec2", "tangential_extent_arcsec", "radial_extent_arcsec", "elongation",
    "bg_sigma_g_nmgy", "bg_sigma_r_nmgy", "bg_sigma_z_nmgy", "bg_chi_std", "bg_std_over_mad",
    "bg_excess_kurtosis", "lens_flux_r_nmgy", "lens_mag_r",
)


def annulus_arcsec(theta_e_arcsec: float | None) -> tuple[float, float]:
    """Inner and outer radius (arcsec) of the arc annulus for an Einstein radius (arcsec) or None."""
    if theta_e_arcsec is None or not math.isfinite(float(theta_e_arcsec)):
        return DEFAULT_ANNULUS_ARCSEC
    t = check_range("theta_e_arcsec", theta_e_arcsec, 0.0, 10.0, lo_open=True)
    return max(t - ANNULUS_HALF_WIDTH, MIN_INNER_ARCSEC), t + ANNULUS_HALF_WIDTH


def center_crop(image, size_pix: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Centre-crop a (bands, H, W) image to ``size_pix`` square without resampling.

    Parameters
    ----------
    image : array (bands, H, W)
        Any unit (nanomaggies per pixel for cutouts); H, W >= size_pix.
    size_pix : int
        Output side, pixels.

    Returns
    -------
    crop : ndarray (bands, size_pix, size_pix), float64
    center_pix : (float, float)
        (row, column) of the input's centre ``((H-1)/2, (W-1)/2)`` in the crop's pixel
        indices: an odd cutout cropped to an even size keeps its object on a pixel centre,
        half a pixel from the crop's geometric centre, and the statistics use this centre.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3:
        raise InvalidValueError("image", img, "must have shape (bands, H, W)")
    _, h, w = img.shape
    n = int(check_range("size_pix", size_pix, 8, min(h, w)))
    y0, x0 = (h - n) // 2, (w - n) // 2
    return img[:, y0:y0 + n, x0:x0 + n].copy(), ((h - 1) / 2.0 - y0, (w - 1) / 2.0 - x0)


def _radius_pix(h: int, w: int, center_pix) -> np.ndarray:
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(yy - center_pix[0], xx - center_pix[1])


def lens_shape(image, center_pix, pixscale_arcsec: float, radius_arcsec: float = LENS_SHAPE_RADIUS_ARCSEC,
               n_iter: int = 4) -> tuple[float, float]:
    """Axis ratio q = b/a and position angle phi (rad, from +x towards +y) of the lens light.

    Adaptive second moments of the sky-subtracted z light (the reddest band: lens bright, arcs
    usually blue) over positive pixels, weighted by an elliptical Gaussian of scale
    ``radius_arcsec`` whose shape is iterated ``n_iter`` times to the measured one: a weight
    matching the isophotes leaves an elliptical profile's axis ratio unbiased (a round weight or
    aperture would bias q towards 1), and the Gaussian fall-off keeps an arc at theta_E >~ 1"
    (weight < e^-2 there) from dominating the r^2-weighted moments. (1.0, 0.0) without positive light.
    """
    img = np.asarray(image, dtype=np.float64)
    _, h, w = img.shape
    light = img[2] - np.median(border_frame(img[2], BORDER_PIX))
    yy, xx = np.mgrid[:h, :w]
    dy, dx = yy - center_pix[0], xx - center_pix[1]
    q, phi = 1.0, 0.0
    for _ in range(n_iter):
        r_ell = elliptical_radius_pix(h, w, center_pix, q, phi) * pixscale_arcsec
        sel = (r_ell <= 3 * radius_arcsec) & (light > 0)
        wgt = light[sel] * np.exp(-0.5 * (r_ell[sel] / radius_arcsec) ** 2)
        if wgt.size < 3 or wgt.sum() <= 0:
            return 1.0, 0.0
        mxx, myy, mxy = (np.average(v, weights=wgt) for v in (dx[sel] ** 2, dy[sel] ** 2, dx[sel] * dy[sel]))
        lam = np.linalg.eigvalsh(np.array([[mxx, mxy], [mxy, myy]]))
        # lens galaxies have q >~ 0.4: flatter moments mean something else (a neighbour, an arc) got in
        q = max(float(np.sqrt(max(lam[0], 0.0) / lam[1])) if lam[1] > 0 else 1.0, MIN_LENS_Q)
        phi = float(0.5 * np.arctan2(2 * mxy, mxx - myy))
    return q, phi


def elliptical_radius_pix(h: int, w: int, center_pix, q: float, phi_rad: float) -> np.ndarray:
    """Elliptical radius (pixels) ``sqrt(q x'^2 + y'^2 / q)`` in the frame rotated by ``phi_rad`` (conventions)."""
    yy, xx = np.mgrid[:h, :w]
    dx, dy = xx - center_pix[1], yy - center_pix[0]
    c, s = np.cos(phi_rad), np.sin(phi_rad)
    xr, yr = c * dx + s * dy, -s * dx + c * dy
    return np.sqrt(q * xr ** 2 + yr ** 2 / q)


def _profile_at(r, r_node, values) -> np.ndarray:
    """Median profile ``values`` at nodes ``r_node`` (pixels) interpolated to radii ``r``."""
    # Monotone cubic (PCHIP): linear interpolation of a convex profile sits above it (-2 % of
    # the lens light in the annulus for a Gaussian lens); PCHIP is within 0.2 % and, unlike a
    # cubic spline, never overshoots between nodes.
    if r_node.size < 2:
        return np.full_like(r, values[0])
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # flat zero stretches: slopes 0/0
        return PchipInterpolator(r_node, values)(np.clip(r, r_node[0], r_node[-1]))


def _clipped_median(values: np.ndarray, nsigma: float = 3.0) -> np.ndarray:
    """Per-row median of (bands, M) values after dropping those beyond ``nsigma`` MAD-sigmas of the median."""
    m = np.median(values, axis=1, keepdims=True)
    s = robust_sigma(values, axis=1)[:, None]
    out = np.empty(values.shape[0])
    for b in range(values.shape[0]):
        keep = np.abs(values[b] - m[b]) <= nsigma * s[b] if s[b] > 0 else np.ones(values.shape[1], bool)
        out[b] = np.median(values[b, keep]) if keep.any() else m[b, 0]
    return out


def azimuthal_median_residual(image, center_pix=None, q: float = 1.0, phi_rad: float = 0.0) -> np.ndarray:
    """Image minus its azimuthal median in 1-pixel-wide (elliptical) annuli around ``center_pix``.

    Parameters
    ----------
    image : array (bands, H, W)
        Nanomaggies per pixel.
    center_pix : (float, float), optional
        (row, column) of the lens centre in pixel indices; default the stamp centre.
    q, phi_rad : float
        Axis ratio (dimensionless) and position angle (rad) of the annuli (the lens light's,
        see :func:`lens_shape`); q = 1 gives circles.

    Returns
    -------
    ndarray (bands, H, W), float64, nanomaggies per pixel: the lens light's smooth part removed.
    """
    img = np.asarray(image, dtype=np.float64)
    _, h, w = img.shape
    c = ((h - 1) / 2.0, (w - 1) / 2.0) if center_pix is None else center_pix
    r_ell = elliptical_radius_pix(h, w, c, q, phi_rad).ravel()
    ring = np.floor(r_ell).astype(np.int64)
    order = np.argsort(ring, kind="stable")
    bounds = np.r_[0, np.nonzero(np.diff(ring[order]))[0] + 1, ring.size]
    groups = [order[s:e] for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
    r_node = np.array([np.median(r_ell[idx]) for idx in groups])
    flat = img.reshape(img.shape[0], -1)
    # The profile is interpolated to each pixel's own radius: near the core it changes by a
    # large factor across one annulus, and a constant per annulus would leave a positive
    # residual on its inner edge (mean > median) even without an arc. A second pass takes the
    # median of what is left: the first pass's medians are pulled up by an arc's pixels where the
    # profile spreads the values of an annulus widely; after the first subtraction the spread is
    # mostly noise, and the second median, taken after clipping values beyond 3 sigma (MAD) on
    # both sides (symmetric, so unbiased for noise), ignores the arc's pixels and undoes the bias.
    med = np.array([np.median(flat[:, idx], axis=1) for idx in groups]).T
    model = np.stack([_profile_at(r_ell, r_node, m) for m in med])
    left = flat - model
    med2 = np.array([_clipped_median(left[:, idx]) for idx in groups]).T
    model = model + np.stack([_profile_at(r_ell, r_node, m) for m in med2])
    return img - model.reshape(img.shape)


def _background(img: np.ndarray, invvar):
    """Per-band sky median and sigma (nmgy) of the frame, and the pooled frame statistics."""
    frame = border_frame(img, BORDER_PIX)
    med = np.median(frame, axis=1)
    sigma = robust_sigma(frame, axis=1)
    safe = np.where(sigma > 0, sigma, np.nan)
    z = ((frame - med[:, None]) / safe[:, None]).ravel()
    z = z[np.isfinite(z)]
    out = {"bg_std_over_mad": float(np.std(z)) if z.size > 3 else math.nan,
           "bg_excess_kurtosis": float(stats.kurtosis(z, fisher=True)) if z.size > 3 else math.nan,
           "bg_chi_std": math.nan}
    if invvar is not None:
        fiv = border_frame(np.asarray(invvar, dtype=np.float64), BORDER_PIX)
        good = fiv > 0
        chi = ((frame - med[:, None]) * np.sqrt(np.where(good, fiv, 0.0)))[good]
        out["bg_chi_std"] = float(np.std(chi)) if chi.size > 3 else math.nan
    for b, band in enumerate(BANDS):
        out[f"bg_sigma_{band}_nmgy"] = float(sigma[b])
    return med, sigma, out


def _arc_shape(det: np.ndarray, in_ann: np.ndarray, r_pix: np.ndarray, yy, xx, center_pix, pixscale_arcsec: float) -> dict:
    """Tangential/radial extent (arcsec) of the detection segment holding the annulus maximum."""
    nan = {"tangential_extent_arcsec": math.nan, "radial_extent_arcsec": math.nan, "elongation": math.nan}
    frame = border_frame(det, BORDER_PIX)
    det_sigma = robust_sigma(frame)
    if not det_sigma > 0:
        return nan
    mask = (det > DETECT_NSIGMA * det_sigma) & in_ann
    if not mask.any():
        return nan
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    peak = np.unravel_index(np.argmax(np.where(in_ann, det, -np.inf)), det.shape)
    seg = labels == labels[peak]
    if labels[peak] == 0:
        return nan
    wgt = det[seg]
    r = r_pix[seg]
    phi = np.arctan2(yy[seg] - center_pix[0], xx[seg] - center_pix[1])
    mean_dir = np.angle(np.sum(wgt * np.exp(1j * phi)))
    dphi = np.angle(np.exp(1j * (phi - mean_dir)))  # wrapped to (-pi, pi] around the arc's direction
    r_mean = float(np.average(r, weights=wgt))
    var_r = float(np.average((r - r_mean) ** 2, weights=wgt)) + _PIX_VAR
    var_t = r_mean ** 2 * float(np.average(dphi ** 2, weights=wgt)) + _PIX_VAR
    tang, rad = math.sqrt(var_t) * pixscale_arcsec, math.sqrt(var_r) * pixscale_arcsec
    return {"tangential_extent_arcsec": tang, "radial_extent_arcsec": rad, "elongation": tang / rad}


def stamp_statistics(image, invvar=None, pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC, theta_e_arcsec: float | None = None,
                     center_pix=None) -> dict:
    """Realism statistics of one stamp (see the module docstring for every definition).

    Parameters
    ----------
    image : array (3, H, W)
        g, r, z image in nanomaggies per pixel (sky-subtracted or not: the sky level goes).
    invvar : array (3, H, W) or None
        Inverse variance, 1/nanomaggies^2; None for cutouts without it (noise from the border MAD).
    pixscale_arcsec : float
        Pixel scale, arcsec per pixel.
    theta_e_arcsec : float or None
        Einstein radius (arcsec) centring the annulus; None uses ``DEFAULT_ANNULUS_ARCSEC``.
    center_pix : (float, float), optional
        (row, column) of the lens centre in pixel indices; default the stamp centre.

    Returns
    -------
    dict
        The keys of ``STAT_NAMES`` (units in their names: nmgy = nanomaggies, mag = AB,
        arcsec, nmgy/arcsec^2; ``arc_snr``, ``elongation``, ``bg_*`` without a unit are
        dimensionless), plus ``annulus_inner_arcsec``, ``annulus_outer_arcsec`` and
        ``n_annulus_pix``. NaN marks a statistic that is undefined for this stamp.
    """
    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 3 or img.shape[0] != 3 or min(img.shape[1:]) < 4 * BORDER_PIX:
        raise InvalidValueError("image", img, f"must have shape (3, H, W) with H, W >= {4 * BORDER_PIX}")
    if not np.all(np.isfinite(img)):
        raise InvalidValueError("image", img, "must be finite (reject non-finite cutouts before measuring)")
    if invvar is not None:
        invvar = np.asarray(invvar, dtype=np.float64)
        if invvar.shape != img.shape:
            raise InvalidValueError("invvar", invvar, f"must have the image's shape {img.shape}")
    pixscale_arcsec = check_range("pixscale_arcsec", pixscale_arcsec, 0.0, 10.0, lo_open=True)
    _, h, w = img.shape
    c = ((h - 1) / 2.0, (w - 1) / 2.0) if center_pix is None else (float(center_pix[0]), float(center_pix[1]))
    r_in, r_out = annulus_arcsec(theta_e_arcsec)
    r_pix = _radius_pix(h, w, c)
    in_ann = (r_pix * pixscale_arcsec >= r_in) & (r_pix * pixscale_arcsec <= r_out)

    med, sigma, out = _background(img, invvar)
    q, phi = lens_shape(img, c, pixscale_arcsec)
    resid = azimuthal_median_residual(img, c, q, phi)
    flux = resid[:, in_ann].sum(axis=1)
    for b, band in enumerate(BANDS):
        out[f"resid_flux_{band}_nmgy"] = float(flux[b])
    mags = nmgy_to_mag(flux)
    out["resid_color_gr_mag"] = float(mags[0] - mags[1])
    out["resid_color_rz_mag"] = float(mags[1] - mags[2])

    if invvar is not None:
        iv = invvar[:, in_ann]
        var = np.where(iv > 0, 1.0 / np.where(iv > 0, iv, 1.0), np.inf).sum()
    else:
        var = float(in_ann.sum() * np.sum(sigma ** 2))
    out["arc_snr"] = float(flux.sum() / math.sqrt(var)) if 0 < var < np.inf else math.nan

    smooth_r = ndimage.uniform_filter(resid[1], size=3, mode="nearest")
    out["peak_resid_sb_r_nmgy_arcsec2"] = float(smooth_r[in_ann].max() / pixscale_arcsec ** 2)

    safe = np.where(sigma > 0, sigma, np.inf)[:, None, None]
    det = ndimage.uniform_filter((resid / safe).sum(axis=0), size=3, mode="nearest")
    yy, xx = np.mgrid[:h, :w]
    out.update(_arc_shape(det, in_ann, r_pix, yy, xx, c, pixscale_arcsec))

    core = r_pix * pixscale_arcsec <= LENS_APERTURE_ARCSEC
    lens_flux = float((img[1, core] - med[1]).sum())
    out["lens_flux_r_nmgy"] = lens_flux
    out["lens_mag_r"] = float(nmgy_to_mag(lens_flux))
    out.update(annulus_inner_arcsec=r_in, annulus_outer_arcsec=r_out, n_annulus_pix=int(in_ann.sum()))
    return out


def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=float).ravel()
    return v[np.isfinite(v)]


def compare_samples(real, injected, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Two-sample comparison of one statistic, real vs injected (NaNs left out).

    Parameters
    ----------
    real, injected : array-like
        Values of the statistic (any one unit, the same on both sides).
    n_boot : int
        Bootstrap resamples for the CI of the median difference.
    seed : int
        Seed of the bootstrap generator (no global random state).
    alpha : float
        1 - confidence level of the interval.

    Returns
    -------
    dict
        ``n_real``, ``n_injected``, ``median_real``, ``median_injected``,
        ``median_diff`` (injected - real, unit of the statistic) with ``median_diff_ci``
        (percentile bootstrap, each sample resampled separately), ``ks_statistic`` and
        ``ks_pvalue`` (two-sided ``scipy.stats.ks_2samp``). NaN where a side is empty.
    """
    a, b = _finite(real), _finite(injected)
    out = {"n_real": int(a.size), "n_injected": int(b.size), "median_real": math.nan, "median_injected": math.nan,
           "median_diff": math.nan, "median_diff_ci": [math.nan, math.nan], "ks_statistic": math.nan,
           "ks_pvalue": math.nan}
    if a.size == 0 or b.size == 0:
        if a.size:
            out["median_real"] = float(np.median(a))
        if b.size:
            out["median_injected"] = float(np.median(b))
        return out
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, (n_boot, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, (n_boot, b.size))], axis=1)
    ks = stats.ks_2samp(a, b)
    out.update(median_real=float(np.median(a)), median_injected=float(np.median(b)),
               median_diff=float(np.median(b) - np.median(a)),
               median_diff_ci=[float(np.percentile(mb - ma, 100 * alpha / 2)),
                               float(np.percentile(mb - ma, 100 * (1 - alpha / 2)))],
               ks_statistic=float(ks.statistic), ks_pvalue=float(ks.pvalue))
    return out


def median_ratio(real, injected, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Ratio of medians injected / real of a positive quantity (e.g. annulus flux, nmgy), with a bootstrap CI.

    Returns
    -------
    dict
        ``ratio`` (dimensionless; NaN when the real median is <= 0 or a side is empty; <= 0
        when the injected median is, e.g. arcs lost in the noise), ``ratio_ci`` (percentile
        bootstrap), ``median_real``, ``median_injected``, ``log10_scatter_real`` (std of
        log10 of the positive real values: how much real arcs differ among themselves).
    """
    a, b = _finite(real), _finite(injected)
    pos = a[a > 0]
    scatter = float(np.std(np.log10(pos), ddof=1)) if pos.size > 1 else math.nan
    if a.size == 0 or b.size == 0 or np.median(a) <= 0:
        return {"ratio": math.nan, "ratio_ci": [math.nan, math.nan], "median_real": _med(a),
                "median_injected": _med(b), "log10_scatter_real": scatter}
    rng = np.random.default_rng(seed)
    ma = np.median(a[rng.integers(0, a.size, (n_boot, a.size))], axis=1)
    mb = np.median(b[rng.integers(0, b.size, (n_boot, b.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = np.where(ma > 0, mb / ma, np.nan)
    boot = boot[np.isfinite(boot)]
    ci = [float(np.percentile(boot, 100 * alpha / 2)), float(np.percentile(boot, 100 * (1 - alpha / 2)))] \
        if boot.size else [math.nan, math.nan]
    return {"ratio": float(np.median(b) / np.median(a)), "ratio_ci": ci, "median_real": float(np.median(a)),
            "median_injected": float(np.median(b)), "log10_scatter_real": scatter}


def _med(v: np.ndarray) -> float:
    return float(np.median(v)) if v.size else math.nan
