r"""The embedded synthetic sky: DR10-like grz coadd bricks the project makes itself, offline.

A brick (a centred ``size_pix`` sub-image of a real 0.25 deg brick, with the brick's exact TAN
WCS) holds, per band g, r, z, in **nanomaggies per pixel**:

* LRGs: de Vaucouleurs (Sersic n=4), r = 17.5-20.5 AB, g-r 1.5-1.9, r-z 0.8-1.1, r_eff 0.8-3";
  a fraction sits close to the image edge so 64-pixel stamps around them fall off it;
* field galaxies: exponential (n=1), r = 20-24, bluer (g-r 0.2-0.9, r-z 0.1-0.7);
* stars: Moffat point sources, r = 15-22, plus a few bright ones (r = 11.5-14) that saturate and
  carry DR10 ``BRIGHT`` / ``MEDIUM`` / ``SATUR_*`` / ``ALLMASK_*`` masks;
* sky noise at DR10 depth, PSF FWHM varying smoothly over the brick, and sometimes a strip
  with no coverage in one band (``invvar = 0``, image 0, as in real coadds).

Every object is rendered at its exact sub-pixel position and convolved with a Moffat
(beta = 3.5) kernel of the FWHM the ``psfsize`` map holds at its centre.

Depth -> pixel noise (DR10 "galaxy depth", the 5-sigma flux of a round exponential galaxy with
r_eff = 0.45" convolved with the PSF, measured by a matched filter):

.. math:: \sigma_{flux} = \sigma_{pix} \sqrt{NEA}, \quad NEA = 1 / \sum_i p_i^2, \quad
          \sigma_{pix} = \frac{10^{(22.5 - m_{5\sigma}) / 2.5}}{5 \sqrt{NEA}}

with ``p`` the unit-sum PSF-convolved galaxy profile in pixels. For a point source and a Gaussian
PSF of width sigma (pixels), NEA = 4 pi sigma^2 (tested). With the nominal FWHM this gives
sigma_pix = 0.0018 / 0.0027 / 0.0083 nmgy in g / r / z (NEA = 157 / 128 / 114 pixels): the sky
noise measured on the real calibrated DR10 cutouts of the shared data folder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.signal import fftconvolve

from dhs_gen.conventions import (
    PIXSCALE_DR10_ARCSEC,
    block_mean,
    ellipticity_from_q_phi,
    mag_to_nmgy,
    pixel_grid_arcsec,
    q_phi_from_ellipticity,
)
from dhs_gen.errors import check_range
from dhs_gen.physics.psf import moffat_kernel
from dhs_gen.sources.profiles import sersic_b_n, sersic_flux_per_i_e, sersic_sb_arrays
from dhs_gen.survey.bricks import brick_by_name, brick_wcs
from dhs_gen.survey.skysim_scene import DEFAULT_SKY, SkyConfig, draw_objects, mask_bits_for
from dhs_gen.utils import rng_for

BANDS = "grz"
# DR10 5-sigma galaxy depth, AB. Calibrated on the real DR10 lens-candidate cutouts (border-pixel
# noise 0.0018 / 0.0027 / 0.0083 nmgy in g / r / z); shallower nominal depths (24.0 / 23.4 / 22.5)
# made the demo sky ~2.5x noisier than the real cutouts it is compared with.
DEPTH_GAL_MAG = {"g": 24.9, "r": 24.5, "z": 23.4}
FWHM_NOMINAL_ARCSEC = {"g": 1.5, "r": 1.3, "z": 1.2}
FWHM_VARIATION = 0.15                                     # +-15 % across a brick
DEPTH_VARIATION_MAG = 0.1                                 # +-0.1 mag across a brick
MOFFAT_BETA = 3.5
GALDEPTH_R_EFF_ARCSEC = 0.45
# photo-electrons per nanomaggy in a DR10 coadd (as jobs.runtime.config arc_gain_e_per_nmgy): source shot noise
GAIN_E_PER_NMGY = {"g": 2000.0, "r": 2000.0, "z": 1000.0}
# per-pixel level (nmgy) above which a coadd pixel is saturated in every exposure (~40k e- per
# 90 s DECam exposure); such pixels are clipped there and flagged SATUR_<b> | ALLMASK_<b>
SATURATION_NMGY = {"g": 60.0, "r": 80.0, "z": 120.0}
SKYSIM_SALT = "skysim_v1"
_FWHM_CACHE_STEP_ARCSEC = 0.005                           # kernels are cached on this FWHM grid


# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------

def sersic_total_flux_per_ie(r_eff_arcsec: float, n: float) -> float:
    """Total flux (nmgy) of a Sersic profile with surface brightness 1 nmgy/arcsec^2 at r_eff.

    :func:`dhs_gen.sources.profiles.sersic_flux_per_i_e` (``2 pi n r_eff^2 e^b b^-2n Gamma(2n)``); the same for any
    axis ratio because the elliptical radius ``R^2 = q x'^2 + y'^2 / q`` preserves area.
    """
    return sersic_flux_per_i_e(r_eff_arcsec, n)


def _sersic_sb(x, y, r_eff, n, e1, e2):
    """Sersic surface brightness with I(r_eff) = 1 at arcsec offsets (x, y) from the centre."""
    q, phi = q_phi_from_ellipticity(e1, e2)
    return sersic_sb_arrays(x, y, 1.0, r_eff, n, q, phi, 0.0, 0.0, sersic_b_n(n))


def _pixel_means(profile, n_pix: int, dx_pix: float, dy_pix: float, pixscale_arcsec: float, s: int):
    """Mean of ``profile(x, y)`` over each pixel of an odd ``n_pix`` grid, object at (dx, dy) px off centre."""
    x, y = pixel_grid_arcsec(n_pix, pixscale_arcsec, s)
    values = profile(x - dx_pix * pixscale_arcsec, y - dy_pix * pixscale_arcsec)
    return block_mean(values, n_pix, n_pix, s)


def render_sersic(flux_nmgy: float, r_eff_arcsec: float, n: float, e1: float, e2: float, dx_pix: float,
                  dy_pix: float, half_pix: int, pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC,
                  supersample: int = 2, core_supersample: int = 15, core_half_pix: int = 3) -> np.ndarray:
    """Pixel-integrated elliptical Sersic postage (no PSF), nanomaggies per pixel.

    Parameters
    ----------
    flux_nmgy : float
        Total (untruncated) flux, nanomaggies; the postage holds the part inside it.
    r_eff_arcsec : float
        Half-light radius (geometric mean of the axes), arcsec.
    n : float
        Sersic index.
    e1, e2 : float
        Ellipticity, :mod:`dhs_gen.conventions`.
    dx_pix, dy_pix : float
        Offset of the profile centre from the postage's central pixel centre, pixels (x = columns).
    half_pix : int
        The postage is ``2 * half_pix + 1`` pixels square.
    pixscale_arcsec : float
        Pixel scale, arcsec per pixel.
    supersample, core_supersample : int
        Sub-samples per pixel per axis away from the centre and in the central
        ``2 * core_half_pix + 1`` pixels, where an n=4 cusp puts ~10 % of the light in one pixel.

    Returns
    -------
    ndarray (2 half_pix + 1, 2 half_pix + 1), float64, nanomaggies per pixel.
    """
    check_range("r_eff_arcsec", r_eff_arcsec, 0.0, 1e4, lo_open=True)
    check_range("n", n, 0.2, 10.0)
    n_pix = 2 * int(half_pix) + 1
    ie = flux_nmgy / sersic_total_flux_per_ie(r_eff_arcsec, n)

    def profile(x, y):
        return _sersic_sb(x, y, r_eff_arcsec, n, e1, e2)

    img = _pixel_means(profile, n_pix, dx_pix, dy_pix, pixscale_arcsec, supersample)
    c = min(int(core_half_pix), int(half_pix))
    core = _pixel_means(profile, 2 * c + 1, dx_pix, dy_pix, pixscale_arcsec, core_supersample)
    img[half_pix - c: half_pix + c + 1, half_pix - c: half_pix + c + 1] = core
    return img * ie * pixscale_arcsec**2


def render_moffat(flux_nmgy: float, fwhm_arcsec: float, dx_pix: float, dy_pix: float, half_pix: int,
                  beta: float = MOFFAT_BETA, pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC,
                  supersample: int = 5) -> np.ndarray:
    """Pixel-integrated round Moffat point source, normalised to ``flux_nmgy`` over the whole plane.

    Same arguments as :func:`render_sersic`; ``fwhm_arcsec`` in arcsec, ``beta`` > 1. Returns
    nanomaggies per pixel on a ``2 half_pix + 1`` square postage.
    """
    alpha = fwhm_arcsec / (2.0 * math.sqrt(2.0 ** (1.0 / beta) - 1.0))
    norm = (beta - 1.0) / (math.pi * alpha**2)                # 1 / integral over the plane, arcsec^-2

    def profile(x, y):
        return (1.0 + (x * x + y * y) / alpha**2) ** (-beta)

    img = _pixel_means(profile, 2 * int(half_pix) + 1, dx_pix, dy_pix, pixscale_arcsec, supersample)
    return img * flux_nmgy * norm * pixscale_arcsec**2


@lru_cache(maxsize=512)
def _kernel(fwhm_key: int, pixscale_arcsec: float, beta: float) -> np.ndarray:
    return moffat_kernel(fwhm_key * _FWHM_CACHE_STEP_ARCSEC, pixscale_arcsec, beta=beta)


def psf_kernel(fwhm_arcsec: float, pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC,
               beta: float = MOFFAT_BETA) -> np.ndarray:
    """Moffat kernel (unit sum) at ``fwhm_arcsec`` rounded to 0.005" (cached; < 0.4 % FWHM error)."""
    return _kernel(int(round(fwhm_arcsec / _FWHM_CACHE_STEP_ARCSEC)), float(pixscale_arcsec), float(beta))


# ------------------------------------------------------------------------------------------------
# Depth
# ------------------------------------------------------------------------------------------------

def noise_equivalent_area_pix(fwhm_arcsec: float, pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC,
                              beta: float = MOFFAT_BETA, r_eff_arcsec: float = GALDEPTH_R_EFF_ARCSEC,
                              psf: np.ndarray | None = None) -> float:
    """Noise-equivalent area ``1 / sum(p^2)`` (pixels) of a PSF-convolved round exponential galaxy.

    Parameters
    ----------
    fwhm_arcsec : float
        Moffat PSF FWHM, arcsec (ignored when ``psf`` is given).
    pixscale_arcsec : float
        Pixel scale, arcsec per pixel.
    beta : float
        Moffat index.
    r_eff_arcsec : float
        Galaxy half-light radius, arcsec; 0 gives the PSF depth (point source).
    psf : ndarray, optional
        A unit-sum kernel to use instead of the Moffat.

    Returns
    -------
    float, pixels.
    """
    kernel = psf if psf is not None else moffat_kernel(fwhm_arcsec, pixscale_arcsec, beta=beta,
                                                       max_size=101, size=None)
    if r_eff_arcsec > 0:
        half = int(math.ceil(8 * r_eff_arcsec / pixscale_arcsec)) + kernel.shape[0] // 2 + 2
        gal = render_sersic(1.0, r_eff_arcsec, 1.0, 0.0, 0.0, 0.0, 0.0, half, pixscale_arcsec)
        kernel = fftconvolve(gal, kernel, mode="full")
    p = kernel / kernel.sum()
    return float(1.0 / np.sum(p * p))


def pixel_sigma_for_depth(depth_mag: float, fwhm_arcsec: float, pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC,
                          beta: float = MOFFAT_BETA, r_eff_arcsec: float = GALDEPTH_R_EFF_ARCSEC) -> float:
    """Per-pixel sky noise (nanomaggies) that gives a 5-sigma depth of ``depth_mag`` (AB).

    ``sigma_pix = flux_5sigma / (5 sqrt(NEA))`` with NEA from :func:`noise_equivalent_area_pix`.
    """
    check_range("depth_mag", depth_mag, 10.0, 35.0)
    nea = noise_equivalent_area_pix(fwhm_arcsec, pixscale_arcsec, beta, r_eff_arcsec)
    return float(mag_to_nmgy(depth_mag)) / (5.0 * math.sqrt(nea))


# ------------------------------------------------------------------------------------------------
# Brick
# ------------------------------------------------------------------------------------------------

@dataclass
class SimulatedBrick:
    """One synthetic brick: maps per band (float32, (H, W)), maskbits (int32), WCS and the truth."""

    brickname: str
    wcs: object
    image: dict = field(default_factory=dict)       # band -> nanomaggies per pixel
    invvar: dict = field(default_factory=dict)      # band -> 1 / nanomaggies^2
    psfsize: dict = field(default_factory=dict)     # band -> PSF FWHM, arcsec
    maskbits: np.ndarray | None = None
    objects: dict = field(default_factory=dict)     # column -> array, one entry per object
    stats: dict = field(default_factory=dict)


def _smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth map in [-1, 1] over the image: a tilted half-period sine (one per call)."""
    theta, phase = rng.uniform(0, 2 * np.pi), rng.uniform(-np.pi, np.pi)
    u = np.linspace(-1.0, 1.0, size)
    t = (np.cos(theta) * u[None, :] + np.sin(theta) * u[:, None]) / math.sqrt(2.0)
    return np.sin(0.5 * np.pi * t + phase)


def _add_postage(img: np.ndarray, postage: np.ndarray, ix: int, iy: int) -> None:
    """Add a postage centred on pixel (ix, iy) into ``img``, clipped at the image bounds."""
    h = postage.shape[0] // 2
    H, W = img.shape
    y0, y1, x0, x1 = iy - h, iy + h + 1, ix - h, ix + h + 1
    cy0, cy1, cx0, cx1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
    if cy0 < cy1 and cx0 < cx1:
        img[cy0:cy1, cx0:cx1] += postage[cy0 - y0: cy1 - y0, cx0 - x0: cx1 - x0]


def _render_objects(objs: dict, psfsize: dict, size: int, pixscale_arcsec: float) -> dict:
    """Noiseless model per band (float64, nmgy per pixel)."""
    model = {b: np.zeros((size, size)) for b in BANDS}
    for i in range(len(objs["kind"])):
        x, y = objs["x_pix"][i], objs["y_pix"][i]
        ix, iy = int(round(x)), int(round(y))
        dx, dy = x - ix, y - iy
        cx, cy = min(max(ix, 0), size - 1), min(max(iy, 0), size - 1)
        if objs["kind"][i] == "star":
            for b in BANDS:
                fwhm = float(psfsize[b][cy, cx])
                half = int(math.ceil(6 * fwhm / pixscale_arcsec))
                _add_postage(model[b], render_moffat(objs[f"flux_{b}"][i], fwhm, dx, dy, half,
                                                     pixscale_arcsec=pixscale_arcsec), ix, iy)
            continue
        r_eff, n = objs["r_eff_arcsec"][i], objs["n_sersic"][i]
        # n=4 keeps 2.8 % of its light beyond 12 r_eff and 0.6 % beyond 25: render out to 25 r_eff
        # (at least 20", at most 50"); exponentials hold < 0.1 % beyond 8 r_eff
        reach = min(max(25.0 * r_eff, 20.0), 50.0) if n >= 2 else 8.0 * r_eff
        half = int(math.ceil(reach / pixscale_arcsec))
        unit = render_sersic(1.0, r_eff, n, objs["e1"][i], objs["e2"][i], dx, dy, half, pixscale_arcsec)
        for b in BANDS:
            kernel = psf_kernel(float(psfsize[b][cy, cx]), pixscale_arcsec)
            conv = fftconvolve(np.pad(unit, kernel.shape[0] // 2), kernel, mode="same")
            _add_postage(model[b], conv * objs[f"flux_{b}"][i], ix, iy)
    return model


def simulate_brick(brickname: str, cfg: SkyConfig = DEFAULT_SKY, seed: int = 0) -> SimulatedBrick:
    """Render one synthetic brick, deterministically from (seed, brickname).

    Parameters
    ----------
    brickname : str
        A real brick name (the image is the centred ``cfg.size_pix`` sub-image of that brick).
    cfg : SkyConfig
        Counts and sizes.
    seed : int
        Sky seed; each brick draws from ``rng_for(f"{seed}:{brickname}", salt)``.

    Returns
    -------
    SimulatedBrick
    """
    info = brick_by_name(brickname)
    size, ps = int(cfg.size_pix), float(cfg.pixscale_arcsec)
    wcs = brick_wcs(brickname, size, ps)
    key = f"{int(seed)}:{brickname}"
    out = SimulatedBrick(brickname=brickname, wcs=wcs)

    maps_rng = rng_for(key, SKYSIM_SALT + ":maps")
    sigma0 = {b: pixel_sigma_for_depth(DEPTH_GAL_MAG[b], FWHM_NOMINAL_ARCSEC[b], ps) for b in BANDS}
    for b in BANDS:
        out.psfsize[b] = (FWHM_NOMINAL_ARCSEC[b] * (1.0 + FWHM_VARIATION * _smooth_field(maps_rng, size))
                          ).astype(np.float32)
        depth_shift = DEPTH_VARIATION_MAG * _smooth_field(maps_rng, size)   # deeper where > 0
        out.invvar[b] = (10.0 ** (0.8 * depth_shift) / sigma0[b] ** 2).astype(np.float32)
    gap = None
    if maps_rng.uniform() < cfg.gap_probability:
        band = BANDS[int(maps_rng.integers(len(BANDS)))]
        width = int(maps_rng.integers(8, 16))
        x0 = int(maps_rng.integers(size // 8, size - size // 8 - width))
        out.invvar[band][:, x0:x0 + width] = 0.0
        gap = {"band": band, "x0_pix": x0, "width_pix": width}

    objs = draw_objects(rng_for(key, SKYSIM_SALT + ":objects"), cfg, size, gap)
    ra, dec = wcs.all_pix2world(objs["x_pix"], objs["y_pix"], 0)
    objs["ra"], objs["dec"] = np.asarray(ra, float) % 360.0, np.asarray(dec, float)
    objs["e1"], objs["e2"] = ellipticity_from_q_phi(objs["q"], objs["phi_rad"])
    ix = np.clip(np.round(objs["x_pix"]).astype(int), 0, size - 1)
    iy = np.clip(np.round(objs["y_pix"]).astype(int), 0, size - 1)
    for b in BANDS:
        objs[f"flux_{b}"] = mag_to_nmgy(objs[f"mag_{b}"])
        objs[f"psf_fwhm_{b}_arcsec"] = out.psfsize[b][iy, ix].astype(float)

    model = _render_objects(objs, out.psfsize, size, ps)
    out.maskbits = mask_bits_for(objs, wcs, info, size, ps)
    noise_rng = rng_for(key, SKYSIM_SALT + ":noise")
    for bi, b in enumerate(BANDS):
        saturated = model[b] > SATURATION_NMGY[b]
        out.maskbits[saturated] |= np.int32((0x4 << bi) | (0x20 << bi))   # SATUR_<b> | ALLMASK_<b>
        covered = out.invvar[b] > 0
        var = np.where(covered, 1.0 / np.where(covered, out.invvar[b], 1.0), 0.0)
        var += np.clip(model[b], 0.0, None) / GAIN_E_PER_NMGY[b]
        img = model[b] + np.sqrt(var) * noise_rng.standard_normal((size, size)) if cfg.noise else model[b]
        img = np.where(saturated, SATURATION_NMGY[b], img)
        out.image[b] = np.where(covered, img, 0.0).astype(np.float32)
        out.stats[f"saturated_pix_{b}"] = int(saturated.sum())
        out.stats[f"sigma_pix_nominal_{b}_nmgy"] = sigma0[b]
    out.objects = objs
    out.stats.update(gap=gap, masked_pix=int((out.maskbits != 0).sum()),
                     n_lrg=int(np.sum(objs["kind"] == "lrg")), n_field=int(np.sum(objs["kind"] == "galaxy")),
                     n_star=int(np.sum(objs["kind"] == "star")),
                     n_edge_lrg=int(np.sum(objs["near_edge"])))
    return out
