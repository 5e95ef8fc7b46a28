"""Gen8 domain randomization: imaging artifacts applied on top of any source model.

Order of operations (seed 000, section Gen8), each with its own random stream derived from
the key so that enabling one artifact never changes the draws of another:

1. background plane: ``noise * (gx * x_n + gy * y_n)`` with ``gx, gy ~ U(-1, 1) * bg_plane_amp``
   and ``x_n, y_n`` in [-1, 1] across the stamp (zero mean: total flux unchanged);
2. PSF anisotropy: convolution with a unit-sum elliptical Moffat/Gaussian of FWHM
   ``psf_fwhm_pix`` and ``e1, e2 ~ N(0, psf_e_sigma)`` (the same e in every band), only when
   ``psf_fwhm_pix`` is given and ``enable_psf_anisotropy``
   (reflect-padded, so edges do not darken; kernel capped at ``max_kernel_size`` and the stamp);
3. cosmic ray (probability ``cosmic_rate``): a straight track of ``cosmic_length_pix`` pixels,
   Gaussian cross-section (sigma 0.5 pix), peak ``cosmic_amp * U(0.5, 1.5)`` noise units, not
   PSF-convolved (it hits one exposure); in multi-band stamps it lands in one band only;
4. saturation wings (probability ``sat_rate``): a four-armed spike of a bright star, arms
   decaying exponentially (scale 3-10 pix), peak ``sat_amp`` noise units, in every band;
5. astrometric jitter: sub-pixel shift ``dy, dx ~ N(0, jitter_sigma_pix)`` by
   a bilinear shift with edge pixels replicated (:func:`shift_bilinear`, the values of
   ``scipy.ndimage.shift(order=1, mode="nearest")``; it smooths the stamp slightly,
   which is part of what real resampling does), the same shift in every band.

Amplitudes are in units of the image's robust noise scale: the MAD (median absolute
deviation from the median, *not* scaled by 1.4826), per band; where the MAD is 0 (noiseless
templates) the standard deviation is used. Images are flux per pixel (nanomaggies); all
lengths are pixels. With everything disabled the output is the input, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy import signal

from dhs_gen.errors import ChoiceError, ConfigError, InvalidValueError, check_choice, check_range
from dhs_gen.physics.psf import cap_kernel_size, make_psf
from dhs_gen.utils import rng_for

_SALT = "gen8_artifacts_v1"
COSMIC_SIGMA_PIX = 0.5
SAT_ARM_SCALE_PIX = (3.0, 10.0)
SAT_ARM_WIDTH_PIX = 0.7
MAX_PSF_E = 0.9  # |e| of the randomized PSF is redrawn above this (a 0.05-0.3 scatter never gets near)


@dataclass(frozen=True)
class ArtifactConfig:
    """Artifact switches and strengths (fields as in seed 000; amplitudes in MAD units)."""

    # PSF anisotropy
    enable_psf_anisotropy: bool = True
    psf_e_sigma: float = 0.05          # ellipticity scatter per component
    # Background residuals
    enable_bg_plane: bool = True
    bg_plane_amp: float = 0.02         # plane amplitude at the stamp edge, fraction of MAD
    # Cosmic rays
    enable_cosmic_rays: bool = True
    cosmic_rate: float = 0.15          # probability per stamp
    cosmic_amp: float = 8.0            # peak, MAD units
    cosmic_length_pix: tuple[int, int] = (8, 24)
    # Saturation spikes
    enable_sat_wings: bool = True
    sat_rate: float = 0.08             # probability per stamp
    sat_amp: float = 12.0              # peak, MAD units
    # Astrometric jitter
    enable_astrom_jitter: bool = True
    jitter_sigma_pix: float = 0.25     # per-axis shift scatter, pixels

    def __post_init__(self):
        def field_range(name, lo, hi):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not (lo <= value <= hi):
                raise ConfigError(name, value, f"must be a number in [{lo}, {hi}]")
        for name in ("cosmic_rate", "sat_rate"):
            field_range(name, 0.0, 1.0)
        field_range("psf_e_sigma", 0.0, 0.3)
        for name in ("bg_plane_amp", "cosmic_amp", "sat_amp"):
            field_range(name, 0.0, 1e6)
        field_range("jitter_sigma_pix", 0.0, 10.0)
        lengths = tuple(self.cosmic_length_pix)
        if (len(lengths) != 2 or any(int(v) != v or v < 1 for v in lengths) or lengths[0] > lengths[1]):
            raise ConfigError("cosmic_length_pix", self.cosmic_length_pix, "must be integers (lo, hi), 1 <= lo <= hi")
        object.__setattr__(self, "cosmic_length_pix", (int(lengths[0]), int(lengths[1])))
        for f in fields(self):
            if f.name.startswith("enable_") and not isinstance(getattr(self, f.name), bool):
                raise ConfigError(f.name, getattr(self, f.name), "must be a bool")


_ALL_OFF = ArtifactConfig(enable_psf_anisotropy=False, psf_e_sigma=0.0, enable_bg_plane=False, bg_plane_amp=0.0,
                          enable_cosmic_rays=False, cosmic_rate=0.0, enable_sat_wings=False, sat_rate=0.0,
                          enable_astrom_jitter=False, jitter_sigma_pix=0.0)

ARTIFACT_PROFILES = {
    "none": _ALL_OFF,
    "mild": ArtifactConfig(cosmic_rate=0.10, sat_rate=0.05, bg_plane_amp=0.01, jitter_sigma_pix=0.2),
    "strong": ArtifactConfig(cosmic_rate=0.25, sat_rate=0.15, bg_plane_amp=0.05, jitter_sigma_pix=0.5),
}
"""Named presets from the seed table (none: baseline, mild: typical survey, strong: stress test)."""


def artifact_config(profile_name: str, **overrides) -> ArtifactConfig:
    """The preset ``profile_name`` (none | mild | strong), optionally with fields replaced."""
    if profile_name not in ARTIFACT_PROFILES:
        raise ChoiceError("artifact_profile", profile_name, ARTIFACT_PROFILES)
    cfg = ARTIFACT_PROFILES[profile_name]
    return replace(cfg, **overrides) if overrides else cfg


def _noise_scale(band: np.ndarray) -> float:
    """Robust noise scale of one band: MAD, else standard deviation (finite pixels only)."""
    v = band[np.isfinite(band)]
    if v.size == 0:
        return 0.0
    mad = float(np.median(np.abs(v - np.median(v))))
    return mad if mad > 0 else float(np.std(v))


def noise_scales(img: np.ndarray) -> np.ndarray:
    """The robust noise scale of every band of a (B, H, W) stamp (:func:`_noise_scale`: MAD, else std).

    A stamp without NaN or inf (the usual case) takes both medians of all bands in one call each: the
    same values, with a third of the calls' overhead.
    """
    flat = img.reshape(img.shape[0], -1)
    if not np.isfinite(flat).all():
        return np.array([_noise_scale(band) for band in img])
    mad = np.median(np.abs(flat - np.median(flat, axis=1, keepdims=True)), axis=1)
    flat_bands = np.flatnonzero(mad <= 0)
    for b in flat_bands:   # a constant band has MAD 0: fall back to its standard deviation
        mad[b] = np.std(flat[b])
    return mad


def shift_bilinear(img: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Every band of a (B, H, W) stack shifted by (dy, dx) pixels, bilinear, edge pixels replicated.

    ``out[y, x] = img(y - dy, x - dx)``: the values of ``scipy.ndimage.shift(band, (dy, dx), order=1,
    mode="nearest")`` to ~1e-14 relative (another order of the same products), all bands in one pass.
    """
    _, h, w = img.shape
    iy, ix = math.floor(dy), math.floor(dx)
    fy, fx = dy - iy, dx - ix
    # y - dy lies between rows y - iy - 1 (weight fy) and y - iy; indices clamped to the edge rows
    r0, r1 = (np.clip(np.arange(h) - iy - k, 0, h - 1) for k in (1, 0))
    c0, c1 = (np.clip(np.arange(w) - ix - k, 0, w - 1) for k in (1, 0))
    upper, lower = img.take(r0, axis=1), img.take(r1, axis=1)
    upper = fx * upper.take(c0, axis=2) + (1.0 - fx) * upper.take(c1, axis=2)
    lower = fx * lower.take(c0, axis=2) + (1.0 - fx) * lower.take(c1, axis=2)
    return fy * upper + (1.0 - fy) * lower


def _cosmic_track(h, w, x0, y0, angle, length, peak):
    """Segment from (x0, y0) (pixel indices) of ``length`` pixels, Gaussian cross-section."""
    yy, xx = np.mgrid[:h, :w].astype(float)
    dx, dy = math.cos(angle), math.sin(angle)
    t = np.clip((xx - x0) * dx + (yy - y0) * dy, 0.0, float(length))
    d2 = (xx - x0 - t * dx) ** 2 + (yy - y0 - t * dy) ** 2
    return peak * np.exp(-0.5 * d2 / COSMIC_SIGMA_PIX**2)


def _sat_spike(h, w, x0, y0, angle, arm_scale, peak):
    """Four exponential arms along ``angle`` and ``angle + 90 deg`` from (x0, y0)."""
    yy, xx = np.mgrid[:h, :w].astype(float)
    c, s = math.cos(angle), math.sin(angle)
    u = (xx - x0) * c + (yy - y0) * s
    v = -(xx - x0) * s + (yy - y0) * c
    arms = (np.exp(-np.abs(u) / arm_scale) * np.exp(-0.5 * (v / SAT_ARM_WIDTH_PIX) ** 2)
            + np.exp(-np.abs(v) / arm_scale) * np.exp(-0.5 * (u / SAT_ARM_WIDTH_PIX) ** 2))
    return peak * arms / 2.0  # the two arms overlap at the centre: peak value = ``peak``


def _convolve_reflect(band: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    half = kernel.shape[0] // 2
    padded = np.pad(band, half, mode="reflect")
    return signal.fftconvolve(padded, kernel, mode="valid")


def _validate_call(stamp, psf_fwhm_pix, psf_model, moffat_beta, cfg, max_kernel_size):
    if not isinstance(cfg, ArtifactConfig):
        raise InvalidValueError("cfg", type(cfg).__name__, "must be an ArtifactConfig")
    check_choice("psf_model", psf_model, ("moffat", "gaussian"))
    check_range("moffat_beta", moffat_beta, 1.0, 100.0, lo_open=True)
    if int(max_kernel_size) != max_kernel_size or max_kernel_size < 1:
        raise InvalidValueError("max_kernel_size", max_kernel_size, "must be a positive integer (pixels)")
    if psf_fwhm_pix is not None:
        if len(psf_fwhm_pix) != stamp.shape[0]:
            raise InvalidValueError("psf_fwhm_pix", tuple(psf_fwhm_pix), f"needs one FWHM per band ({stamp.shape[0]})")
        for f in psf_fwhm_pix:
            check_range("psf_fwhm_pix", f, 0.0, 1e4, lo_open=True)


def apply_domain_randomization_bands(
    stamp: np.ndarray,
    key: str,
    psf_fwhm_pix: Sequence[float] | None = None,
    cfg: ArtifactConfig = ArtifactConfig(),  # noqa: B008 - frozen, so a shared default is safe
    psf_model: str = "moffat",
    moffat_beta: float = 3.5,
    max_kernel_size: int = 63,
    noise_scale: Sequence[float] | None = None,
) -> dict[str, object]:
    """Apply the Gen8 artifacts to a multi-band stamp with shared geometry.

    Parameters
    ----------
    stamp : ndarray (B, H, W)
        Image in flux per pixel (nanomaggies); not modified.
    key : str
        Deterministic hash key (``task_id``).
    psf_fwhm_pix : sequence of float or float, optional
        Per-band FWHM (pixels) of the anisotropic PSF to convolve with (one number: all
        bands); None skips step 2.
    cfg : ArtifactConfig
        Which artifacts and how strong.
    psf_model : {"moffat", "gaussian"}
        Profile of the randomized PSF.
    moffat_beta : float
        Moffat index (> 1).
    max_kernel_size : int
        Largest PSF kernel side, pixels; the kernel is also capped at the stamp size.
    noise_scale : sequence of float, optional
        The noise unit of the artifacts, per band. Stage 4c passes the bare host's ``noise_scales`` for every
        row of a host, so that an injection and its paired control get artifacts of the same amplitude (the
        stamp's own MAD grows with the arc). Default: ``noise_scales(stamp)``.

    Returns
    -------
    dict
        ``img``: ndarray (B, H, W), same float dtype as ``stamp`` (float64 for integer input),
        nanomaggies per pixel; ``meta``: JSON-safe record of what was applied.
    """
    arr = np.asarray(stamp)
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise InvalidValueError("stamp", arr, "must be a non-empty (bands, H, W) array")
    if psf_fwhm_pix is not None:  # one number means the same FWHM in every band
        fwhms = np.atleast_1d(np.asarray(psf_fwhm_pix, dtype=float)).ravel()
        psf_fwhm_pix = (np.repeat(fwhms, arr.shape[0]) if fwhms.size == 1 else fwhms).tolist()
    _validate_call(arr, psf_fwhm_pix, psf_model, moffat_beta, cfg, max_kernel_size)
    if noise_scale is not None and len(noise_scale) != arr.shape[0]:
        raise InvalidValueError("noise_scale", tuple(noise_scale), f"needs one value per band ({arr.shape[0]})")
    out_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.dtype(np.float64)
    n_bands, h, w = arr.shape
    meta: dict[str, object] = {"bg_plane": None, "psf": None, "cosmic_ray": None, "sat_wings": None, "jitter": None}
    key = str(key)

    # each artifact draws from its own stream of the key, so a stamp's artifacts depend only on (key, cfg)
    # and never on which other steps ran
    def stream(name):
        return rng_for(key, f"{_SALT}:{name}")

    r_cr, r_sat = stream("cr"), stream("sat")   # the other streams are made only where their artifact is on
    do_bg = cfg.enable_bg_plane and cfg.bg_plane_amp > 0
    do_psf = cfg.enable_psf_anisotropy and psf_fwhm_pix is not None
    do_cr = cfg.enable_cosmic_rays and cfg.cosmic_amp > 0 and r_cr.random() < cfg.cosmic_rate
    do_sat = cfg.enable_sat_wings and cfg.sat_amp > 0 and r_sat.random() < cfg.sat_rate
    do_jit = cfg.enable_astrom_jitter and cfg.jitter_sigma_pix > 0
    if not (do_bg or do_psf or do_cr or do_sat or do_jit):
        meta["noise_scale"] = None
        return {"img": np.array(arr, dtype=out_dtype, copy=True), "meta": meta}

    img = arr.astype(np.float64)  # a copy: the input is never modified
    noise = noise_scales(img) if noise_scale is None else np.array(noise_scale, dtype=float)
    meta["noise_scale"] = [float(v) for v in noise]

    if do_bg:  # 1. background plane
        gx, gy = (stream("bg").uniform(-1.0, 1.0, 2) * cfg.bg_plane_amp).tolist()
        yn = (np.arange(h) - (h - 1) / 2.0) / max((h - 1) / 2.0, 1.0)
        xn = (np.arange(w) - (w - 1) / 2.0) / max((w - 1) / 2.0, 1.0)
        plane = gx * xn[None, :] + gy * yn[:, None]
        img += noise[:, None, None] * plane[None]
        meta["bg_plane"] = {"gx_mad": gx, "gy_mad": gy}

    if do_psf:  # 2. anisotropic PSF
        r_psf = stream("psf")
        e1, e2 = r_psf.normal(0.0, cfg.psf_e_sigma, 2)
        while math.hypot(e1, e2) >= MAX_PSF_E:
            e1, e2 = r_psf.normal(0.0, cfg.psf_e_sigma, 2)
        size_cap = cap_kernel_size(min(int(max_kernel_size), h, w), int(max_kernel_size))
        sizes = []
        for b, fwhm in enumerate(psf_fwhm_pix):
            kwargs = {"beta": moffat_beta} if psf_model == "moffat" else {}
            kernel = make_psf(psf_model, float(fwhm), 1.0, e1=float(e1), e2=float(e2), max_size=size_cap, **kwargs)
            img[b] = _convolve_reflect(img[b], kernel)
            sizes.append(kernel.shape[0])
        meta["psf"] = {"model": psf_model, "fwhm_pix": [float(f) for f in psf_fwhm_pix], "e1": float(e1),
                       "e2": float(e2), "kernel_size_pix": sizes}

    if do_cr:  # 3. cosmic ray, one band (single exposure)
        band = int(r_cr.integers(n_bands))
        length = int(r_cr.integers(cfg.cosmic_length_pix[0], cfg.cosmic_length_pix[1] + 1))
        x0, y0 = r_cr.uniform(0, w - 1), r_cr.uniform(0, h - 1)
        angle = r_cr.uniform(0.0, 2.0 * math.pi)
        peak_mad = cfg.cosmic_amp * r_cr.uniform(0.5, 1.5)
        img[band] += _cosmic_track(h, w, x0, y0, angle, length, peak_mad * noise[band])
        meta["cosmic_ray"] = {"band_index": band, "x_pix": float(x0), "y_pix": float(y0), "angle_rad": float(angle),
                              "length_pix": length, "peak_mad": float(peak_mad)}

    if do_sat:  # 4. saturation wings, all bands
        x0, y0 = r_sat.uniform(0, w - 1), r_sat.uniform(0, h - 1)
        angle = r_sat.uniform(0.0, math.pi / 2.0)
        arm = r_sat.uniform(*SAT_ARM_SCALE_PIX)
        spike = _sat_spike(h, w, x0, y0, angle, arm, 1.0)
        img += (cfg.sat_amp * noise)[:, None, None] * spike[None]
        meta["sat_wings"] = {"x_pix": float(x0), "y_pix": float(y0), "angle_rad": float(angle),
                             "arm_scale_pix": float(arm), "peak_mad": float(cfg.sat_amp)}

    if do_jit:  # 5. astrometric jitter, same sub-pixel shift in all bands
        dy, dx = stream("jit").normal(0.0, cfg.jitter_sigma_pix, 2)
        img = shift_bilinear(img, dy, dx)
        meta["jitter"] = {"dy_pix": float(dy), "dx_pix": float(dx)}

    return {"img": img.astype(out_dtype, copy=False), "meta": meta}


def apply_domain_randomization(
    img: np.ndarray,
    key: str,
    psf_fwhm_pix: float | None = None,
    psf_model: str = "moffat",
    moffat_beta: float = 3.5,
    cfg: ArtifactConfig = ArtifactConfig(),  # noqa: B008 - frozen, so a shared default is safe
    max_kernel_size: int = 63,
) -> dict[str, object]:
    """Apply the Gen8 artifacts to one 2-D image (the seed's single-band API).

    Parameters
    ----------
    img : ndarray (H, W)
        Image in flux per pixel (nanomaggies); not modified.
    key : str
        Deterministic hash key (``task_id``).
    psf_fwhm_pix : float, optional
        FWHM (pixels) of the anisotropic PSF to convolve with; None skips the PSF step.
    psf_model, moffat_beta, cfg, max_kernel_size
        As :func:`apply_domain_randomization_bands`.

    Returns
    -------
    dict
        ``img``: ndarray (H, W), nanomaggies per pixel; ``meta``: what was applied.
    """
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise InvalidValueError("img", arr, "must be a 2-D image (H, W); use apply_domain_randomization_bands")
    fwhm = None if psf_fwhm_pix is None else [psf_fwhm_pix]
    out = apply_domain_randomization_bands(arr[None], key, fwhm, cfg=cfg, psf_model=psf_model,
                                           moffat_beta=moffat_beta, max_kernel_size=max_kernel_size)
    return {"img": out["img"][0], "meta": out["meta"]}
