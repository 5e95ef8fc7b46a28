"""Render one manifest row into one stamp row (stage 4c's per-row work; no Spark, no storage).

Photometry is the heart of it. The source's total unlensed flux per band is
``flux_X = 10**((22.5 - src_mag_X) / 2.5)`` nanomaggies; the lensed, PSF-convolved arc is rendered
in nanomaggies *per pixel* with that total, so ``arc_flux_X_nmgy = sum(arc_X)`` = flux_X times the
magnification, and the stamp sum of (injection - paired control) equals it up to the arc's own
photon noise. Surface brightness (per arcsec^2) appears only inside the kernels.
"""

from __future__ import annotations

import functools
import json
import math

import numpy as np

from dhs_gen import PIPELINE_VERSION
from dhs_gen.conventions import mag_to_nmgy
from dhs_gen.utils import rng_for
from jobs.runtime.config import InjectionConfig
from jobs.runtime.schema import encode_image

BANDS = "grz"
TEMPLATE_SUPERSAMPLE = 4   # procedural templates are drawn on a grid 4x finer than the survey pixel
TEMPLATE_SIZE_PIX = 96
#: Sub-samples per template pixel per axis outside the 16x16-integrated core. The template pixel is already a
#: quarter survey pixel: 2x2 instead of the kernel's default 4x4 changes a template, summed to survey pixels, by
#: at most 6.6e-4 of its peak (re 1.5-7.6 template pixels, n 0.7-2, q 0.5-1), and costs a quarter as much.
TEMPLATE_PIXEL_SUPERSAMPLE = 2


def source_mags(row: dict) -> dict:
    """Unlensed AB magnitudes per band from r and the two colours of the row."""
    r = row["src_mag_r"]
    return {"g": r + row["src_color_gr"], "r": r, "z": r - row["src_color_rz"]}


#: PSF kernels are built once per distinct (FWHM, e1, e2) on these grids: a brick's PSF map and the
#: Gen8 anisotropy draws are continuous, so without rounding every row would build its own kernels.
#: A 0.005" step moves a ~1.2" FWHM by at most 0.2 % (the kernel still sums to 1: photometry is unchanged).
PSF_FWHM_STEP_ARCSEC = 0.005
PSF_E_STEP = 0.005
#: Point samples per kernel pixel per axis. 3 integrates a 0.9-1.8" Moffat to 0.5-2e-3 L1 of the exact pixel
#: means (5: 0.2-0.7e-3), inside the 5e-3 L1 that the FWHM step above may already move a kernel, at 0.6x the cost.
PSF_OVERSAMPLE = 3


@functools.lru_cache(maxsize=4096)
def _psf_kernel(model: str, fwhm_arcsec: float, pixscale_arcsec: float, e1: float, e2: float, max_size: int,
                beta: float | None) -> np.ndarray:
    from dhs_gen.physics.psf import make_psf

    kwargs = {"beta": beta} if model == "moffat" else {}
    kernel = make_psf(model, fwhm_arcsec, pixscale_arcsec, e1=e1, e2=e2, max_size=max_size, oversample=PSF_OVERSAMPLE,
                      **kwargs)
    kernel.setflags(write=False)   # shared by every row that uses it
    return kernel


def _on_grid(value: float, step: float) -> float:
    return round(round(float(value) / step) * step, 10)


def make_psfs(fwhms_arcsec, cfg: InjectionConfig, e1: float = 0.0, e2: float = 0.0) -> list[np.ndarray]:
    """Per-band PSF kernels at the stamp position (Moffat with the configured beta, or Gaussian), with the FWHM
    and ellipticity rounded to :data:`PSF_FWHM_STEP_ARCSEC` / :data:`PSF_E_STEP` and built once each."""
    beta = float(cfg.moffat_beta) if cfg.psf_model == "moffat" else None
    return [_psf_kernel(cfg.psf_model, _on_grid(f, PSF_FWHM_STEP_ARCSEC), float(cfg.pixscale_arcsec),
                        _on_grid(e1, PSF_E_STEP), _on_grid(e2, PSF_E_STEP), int(cfg.psf_max_size_pix), beta)
            for f in fwhms_arcsec]


def arc_psf_anisotropy(row: dict) -> tuple[float, float]:
    """Gen8 PSF anisotropy (e1, e2) of the arc's PSF, drawn per pair; (0, 0) when the profile has none.

    The anisotropy is applied to the *injected arc's* PSF. Re-convolving the real host cutout
    would smooth its real noise (a tell-tale a classifier can learn) and blur it twice.
    """
    if row["artifact_profile"] == "none":
        return 0.0, 0.0
    from dhs_gen.augmentation.artifacts import artifact_config

    art = artifact_config(row["artifact_profile"])
    if not art.enable_psf_anisotropy or art.psf_e_sigma <= 0:
        return 0.0, 0.0
    e1, e2 = rng_for(row["pair_id"], "psf_anisotropy").normal(0.0, art.psf_e_sigma, size=2)
    scale = min(1.0, 0.5 / max(float(np.hypot(e1, e2)), 1e-12))  # keep |e| < 0.5: a PSF, not a streak
    return float(e1 * scale), float(e2 * scale)


def source_centre(row: dict, lens_offset_arcsec=(0.0, 0.0)) -> tuple[float, float]:
    """The source-plane centre of the row's source, arcsec: the source plane is centred on the lens, so the
    source moves with the lens offset."""
    x, y = row["src_x_arcsec"], row["src_y_arcsec"]
    if tuple(lens_offset_arcsec) == (0.0, 0.0):
        return x, y
    return x + lens_offset_arcsec[0], y + lens_offset_arcsec[1]


def _sersic_sources(row, fluxes, cfg, centre):
    from dhs_gen.sources.profiles import SersicSource

    return [SersicSource(flux=f, r_eff=row["src_r_eff_arcsec"], n=row["src_n_sersic"], e1=row["src_e1"],
                         e2=row["src_e2"], center_x=centre[0], center_y=centre[1])
            for f in fluxes], "sersic"


def _template_sources(images, pixscale, centre, fluxes):
    from dhs_gen.sources.profiles import TemplateSource

    return [TemplateSource(image=img, pixscale=pixscale, flux=f, center_x=centre[0], center_y=centre[1])
            for img, f in zip(images, fluxes, strict=True)]


def _hybrid_sources(row, fluxes, cfg, centre):
    from dhs_gen.conventions import q_phi_from_ellipticity
    from dhs_gen.sources.hybrid import generate_hybrid_source

    tpix = cfg.pixscale_arcsec / TEMPLATE_SUPERSAMPLE
    q, _ = q_phi_from_ellipticity(row["src_e1"], row["src_e2"])
    s = cfg.source
    result = generate_hybrid_source(
        key=row["pair_id"], H=TEMPLATE_SIZE_PIX, W=TEMPLATE_SIZE_PIX, re_pix=row["src_r_eff_arcsec"] / tpix,
        n_sersic=row["src_n_sersic"], q=float(q),
        n_clumps_range=tuple(s.hybrid_n_clumps) if s.hybrid_clumps else (0, 0),
        clump_sigma_pix_range=tuple(s.hybrid_clump_sigma_tpix), clump_flux_frac_range=tuple(s.hybrid_clump_flux_frac),
        gradient_strength=s.hybrid_gradient, normalize_sum=True, supersample=TEMPLATE_PIXEL_SUPERSAMPLE)
    images = [result["bands"][b] for b in BANDS]
    return _template_sources(images, tpix, centre, fluxes), f"hybrid:{row['pair_id']}"


def _bank_sources(row, fluxes, bank, centre):
    template = bank.pick(row["pair_id"])
    return _template_sources(list(template.images), template.pixscale_arcsec, centre, fluxes), template.template_id


def build_sources(row: dict, cfg: InjectionConfig, banks: dict, lens_offset_arcsec=(0.0, 0.0)):
    """Per-band source objects for the row's ``source_mode`` at :func:`source_centre`, and the template id used."""
    fluxes = [float(mag_to_nmgy(m)) for m in source_mags(row).values()]
    centre = source_centre(row, lens_offset_arcsec)
    mode = row["source_mode"]
    if mode == "sersic":
        return _sersic_sources(row, fluxes, cfg, centre)
    if mode == "hybrid":
        return _hybrid_sources(row, fluxes, cfg, centre)
    if mode in ("cosmos", "deep"):
        if banks.get(mode) is None:
            raise KeyError(f"no {mode} bank configured")
        return _bank_sources(row, fluxes, banks[mode], centre)
    raise KeyError(f"unknown source_mode {mode!r}")


def render_arc_for_row(row: dict, psfs, cfg: InjectionConfig, banks: dict, lens_offset_arcsec=(0.0, 0.0)):
    """The lensed arc of the row's pair, (3, H, W) nanomaggies per pixel, and its template id."""
    from dhs_gen.physics.injection import render_arc_bands
    from dhs_gen.physics.lensing import SIEShear

    lens = SIEShear(theta_e=row["theta_e_arcsec"], e1=row["lens_e1"], e2=row["lens_e2"],
                    gamma1=row["shear_gamma1"], gamma2=row["shear_gamma2"],
                    center_x=lens_offset_arcsec[0], center_y=lens_offset_arcsec[1])
    sources, template_id = build_sources(row, cfg, banks, lens_offset_arcsec)
    result = render_arc_bands(lens, sources, psfs, cfg.stamp_size_pix, cfg.pixscale_arcsec,
                              supersample=cfg.supersample, engine=cfg.engine)
    return np.asarray(result.images, dtype=np.float64), template_id


#: Pixels where the arc adds less than this share of the pixel's own variance (1/invvar) get no photon-noise draw:
#: the draw would be below 1e-3 of the pixel's noise, and the pixel's total noise would change by less than 5e-7
#: of its standard deviation (the returned invvar still counts that variance). Half the pixels of a demo stamp
#: (the PSF wings far from the arc) are below it, and a normal draw is the costliest step of the noise.
ARC_NOISE_MIN_VARIANCE_SHARE = 1e-6


def add_arc_photon_noise(arc: np.ndarray, invvar: np.ndarray, gains, key: str):
    """Arc + its own Poisson noise (Gaussian approximation), and the invvar that includes it (float64).

    ``gains`` are photo-electrons per nanomaggy per band; variance added = max(arc, 0) / gain, drawn where it
    reaches :data:`ARC_NOISE_MIN_VARIANCE_SHARE` of the pixel's variance. Pixels without data (invvar 0,
    negative or NaN) get no draw and keep invvar 0.
    """
    iv = np.asarray(invvar, dtype=np.float64)
    iv = np.where(iv > 0, iv, 0.0)
    var = np.maximum(arc, 0.0, dtype=np.float64)
    var /= np.asarray(gains, dtype=float)[:, None, None]
    drawn = np.flatnonzero(var * iv > ARC_NOISE_MIN_VARIANCE_SHARE)
    noisy = np.array(arc, dtype=np.float64)
    noisy.ravel()[drawn] += np.sqrt(var.ravel()[drawn]) * rng_for(key, "arc_noise").standard_normal(drawn.size)
    with np.errstate(divide="ignore"):   # 1 / 0 = inf where there is no data, and 1 / inf = 0 back
        new_invvar = np.reciprocal(iv)
        new_invvar += var
        np.reciprocal(new_invvar, out=new_invvar)
    return noisy, new_invvar


def arc_snr(arc: np.ndarray, invvar: np.ndarray) -> float:
    """Matched-filter SNR of the noiseless arc against the stamp's invvar: sqrt(sum_b,p arc^2 invvar)."""
    weighted = np.square(arc, dtype=np.float64)
    weighted *= np.maximum(invvar, 0.0)
    return float(np.sqrt(weighted.sum()))


def apply_artifacts(stamp: np.ndarray, profile: str, key: str, cfg: InjectionConfig, host: HostValues | None = None):
    """The row's Gen8 artifact profile, keyed by pair so a pair shares its artifacts; returns (stamp, meta).

    No PSF step here (``psf_fwhm_pix=None``): anisotropy went into the arc's PSF
    (:func:`arc_psf_anisotropy`); the real cutout already carries its real PSF. ``host``: the row's
    :class:`HostValues`, whose noise scales are the artifacts' unit for every row of the host (an injection's
    own MAD grows with its arc, and would make its artifacts stronger than its control's); without it, the
    stamp's own noise.
    """
    if profile == "none":
        return stamp, {}
    from dhs_gen.augmentation.artifacts import apply_domain_randomization_bands, artifact_config

    out = apply_domain_randomization_bands(stamp, key, psf_fwhm_pix=None,
                                           cfg=artifact_config(profile, **cfg.artifact_overrides.get(profile, {})),
                                           moffat_beta=cfg.moffat_beta or 3.5,
                                           noise_scale=None if host is None else host.noise_scale)
    return np.asarray(out["img"], dtype=np.float64), out["meta"]


def rejected_row(row: dict, reason: str, git_sha: str) -> dict:
    """A manifest row kept with ``cutout_ok = 0`` and the reason (never dropped)."""
    mags = source_mags(row) if row.get("src_mag_r") is not None else {"g": None, "z": None}
    return {**row, "image": None, "invvar": None, "image_shape": None, "bands": BANDS, "pixscale_arcsec": None,
            "src_mag_g": mags["g"], "src_mag_z": mags["z"], "cutout_ok": 0, "reject_reason": reason,
            "git_sha": git_sha, "pipeline_version": PIPELINE_VERSION}


class HostValues:
    """What every row of one host shares, computed once for the host's rows (its grid, replicates and
    controls) and never modified: the host stamp and invvar in float64, its noise scales (the unit of every
    row's artifacts) and, for rows that add nothing to the host (controls), its r-band depth."""

    def __init__(self, cutout):
        self.cutout = cutout
        self.image = np.asarray(cutout.image, dtype=np.float64)
        self.invvar = np.asarray(cutout.invvar, dtype=np.float64)
        for a in (self.image, self.invvar):
            a.setflags(write=False)

    @functools.cached_property
    def noise_scale(self) -> np.ndarray:
        from dhs_gen.augmentation.artifacts import noise_scales

        return noise_scales(self.image)

    @functools.cached_property
    def depth_r(self) -> float:
        return _depth_r(self.invvar)


def render_row(row: dict, cutout, cfg: InjectionConfig, banks: dict, git_sha: str,
               arc_cache: dict | None = None, host_values: HostValues | None = None) -> dict:
    """Manifest row + its host cutout -> stamp row (schema ``jobs.runtime.schema.STAMP_SCHEMA``).

    ``arc_cache`` (pair_id -> (arc, template_id)) lets the injection and the hard negative of a pair,
    adjacent when rows are sorted by task_id, share one render; the arc is never modified in place.
    ``host_values``: the :class:`HostValues` of ``cutout`` when the caller keeps them across the host's rows.
    """
    if not cutout.ok:
        return rejected_row(row, cutout.reject_reason, git_sha)
    shared = host_values if host_values is not None and host_values.cutout is cutout else HostValues(cutout)
    fwhms = [float(f) for f in cutout.psf_fwhm_arcsec]
    host, invvar = shared.image, shared.invvar
    mags = source_mags(row)
    out = {**row, "src_mag_g": mags["g"], "src_mag_z": mags["z"], "magnification": None,
           "arc_flux_g_nmgy": 0.0, "arc_flux_r_nmgy": 0.0, "arc_flux_z_nmgy": 0.0, "arc_snr": 0.0,
           "source_template_id": None}
    stamp, psf_e = host, None
    if row["kind"] in ("injection", "hardneg_shuffle"):
        psf_e = arc_psf_anisotropy(row)
        cached = arc_cache.get(row["pair_id"]) if arc_cache is not None else None
        if cached is None:
            try:
                psfs = make_psfs(fwhms, cfg, *psf_e)
                cached = render_arc_for_row(row, psfs, cfg, banks, cutout.lens_offset_arcsec)
            except (KeyError, ValueError) as err:
                return rejected_row(row, f"render_failed:{type(err).__name__}:{err}"[:200], git_sha)
            if arc_cache is not None:
                arc_cache.clear()
                arc_cache[row["pair_id"]] = cached
        arc, template_id = cached
        sums = arc.sum(axis=(1, 2))
        intrinsic_r = float(mag_to_nmgy(mags["r"]))
        out.update(magnification=float(sums[1] / intrinsic_r), arc_flux_g_nmgy=float(sums[0]),
                   arc_flux_r_nmgy=float(sums[1]), arc_flux_z_nmgy=float(sums[2]),
                   arc_snr=arc_snr(arc, invvar), source_template_id=template_id)
        if row["kind"] == "hardneg_shuffle":
            from dhs_gen.augmentation.negatives import azimuthal_shuffle

            arc = azimuthal_shuffle(arc, key=row["pair_id"])
        noisy_arc, invvar = add_arc_photon_noise(arc, invvar, cfg.arc_gain_e_per_nmgy, row["task_id"])
        stamp = host + noisy_arc
    stamp, art_meta = apply_artifacts(stamp, row["artifact_profile"], row["pair_id"], cfg, shared)
    if psf_e is not None:
        art_meta = {**art_meta, "arc_psf_e1e2": list(psf_e)}
    if not np.all(np.isfinite(stamp)):
        return rejected_row(row, "nonfinite_pixels", git_sha)
    out.update(image=encode_image(stamp), invvar=encode_image(invvar), image_shape=list(stamp.shape),
               bands=BANDS, pixscale_arcsec=cfg.pixscale_arcsec,
               psf_fwhm_g_arcsec=fwhms[0], psf_fwhm_r_arcsec=fwhms[1], psf_fwhm_z_arcsec=fwhms[2],
               psfdepth_r_nmgy=shared.depth_r if invvar is shared.invvar else _depth_r(invvar),
               artifact_meta=json.dumps(art_meta, sort_keys=True, default=float),
               cutout_ok=1, reject_reason=None, git_sha=git_sha, pipeline_version=PIPELINE_VERSION)
    return out


def _depth_r(invvar: np.ndarray) -> float:
    """Per-pixel 1-sigma noise of the r band (median over the stamp), nanomaggies: a depth proxy."""
    iv = invvar[1][invvar[1] > 0]
    return float(1.0 / math.sqrt(np.median(iv))) if iv.size else float("nan")
