"""Gen7 procedural sources: smooth Sersic + Gaussian star-forming clumps + colour gradient.

All lengths are in **pixels of the template grid** (``_pix``); the template is a flux-per-pixel
image with the DESIGN grid convention (centre at ``((H-1)/2, (W-1)/2)``, x along columns).
The caller scales each band template by its flux (from magnitudes and colours) and lenses it.

Components (seed 000, section Gen7):

1. Smooth elliptical Sersic, ``I(R) = exp(-b_n ((R/re)^(1/n) - 1))`` with the project's
   ellipse ``R^2 = q x'^2 + y'^2 / q`` (:mod:`dhs_gen.conventions`) and a random position
   angle. ``b_n`` is exact (``gammaincinv(2n, 1/2)``) so ``re_pix`` is the true half-light
   radius; lenstronomy uses the approximation ``1.9992 n - 0.3271`` instead.
2. Gaussian clumps placed on the isophote ``R = u * re`` with ``u ~ U(0.5, 1.5)`` ("at ~1 Re"),
   random sizes and fluxes, bluer than the disc (``CLUMP_COLOUR``).
3. Colour gradient, bluer outskirts: the smooth component of band b has half-light radius
   ``re * exp(s_b * gradient_strength / 2)`` with ``s = +1, 0, -1`` for g, r, z, so
   ``ln(re_g / re_z) = gradient_strength``. For an exponential disc this makes g - z linear
   in radius (a linear colour gradient in magnitudes); the template stays non-negative.

Ablations: Gen7a ``n_clumps_range=(0, 0), gradient_strength=0``; Gen7b clumps, no gradient;
Gen7c both.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from dhs_gen.conventions import block_mean, elliptical_r2_grid, make_antisymmetric
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.sources.profiles import sersic_b_n
from dhs_gen.utils import rng_for

BANDS = ("g", "r", "z")
GRADIENT_SIGN = {"g": 1.0, "r": 0.0, "z": -1.0}
"""Sign of the half-light-radius change per band: g more extended than r, r more than z."""

CLUMP_COLOUR = {"g": 1.5, "r": 1.0, "z": 0.6}
"""Clump flux multiplier per band relative to the disc: star-forming clumps are blue."""

CLUMP_RADIUS_RANGE_RE = (0.5, 1.5)
"""Clump centres lie on the isophote R = u * re, u uniform in this range (units of re)."""

SUPERSAMPLE = 4
"""Point samples per pixel per axis used to pixel-integrate the Sersic (even: none at a cusp)."""

CORE_HALF_PIX = 3.5
CORE_SUPERSAMPLE = 16
"""Pixels within CORE_HALF_PIX (per axis) of the centre are integrated with 16x16 samples."""

_SALT = "gen7_hybrid_v1"


def _sample_axis(pixels: np.ndarray, n: int, supersample: int) -> np.ndarray:
    """Coordinates (pixels from the centre of an ``n``-pixel axis) of the ``supersample`` points of each of
    ``pixels``, a set symmetric about that centre (:func:`dhs_gen.conventions.make_antisymmetric`)."""
    offs = (np.arange(supersample) + 0.5) / supersample - 0.5
    return make_antisymmetric(((pixels - (n - 1) / 2.0)[:, None] + offs[None, :]).ravel())


def _sersic_pixels(pixel_rows: np.ndarray, pixel_cols: np.ndarray, h: int, w: int, n_sersic: float, q: float,
                   phi_rad: float, scales: np.ndarray, b_n: float, supersample: int) -> np.ndarray:
    """Pixel means of ``exp(b_n - scale * R^(1/n))`` for every scale over the ``supersample**2`` points of each
    pixel of ``pixel_rows`` x ``pixel_cols`` (sets symmetric about the centre of an ``h`` x ``w`` grid):
    (len(scales), len(pixel_rows), len(pixel_cols)).

    The profile is point-symmetric about the centre, and so is the sample grid (:func:`_sample_axis`): the
    first half of the pixel rows (and the middle one) is evaluated, and the rest is that half turned by 180
    degrees. ``R^(1/n)`` is ``exp(log(R^2) / 2n)``: two vectorised calls, a third of a pow's time.
    """
    n_rows, n_cols = pixel_rows.size, pixel_cols.size
    top = n_rows - n_rows // 2   # pixel rows evaluated
    ys = _sample_axis(pixel_rows, h, supersample)[:top * supersample]
    r_pow = elliptical_r2_grid(ys, _sample_axis(pixel_cols, w, supersample), q, phi_rad)
    with np.errstate(divide="ignore"):   # R = 0 (a sample on the centre, odd supersampling): log -inf, exp 0
        np.log(r_pow, out=r_pow)
    r_pow *= 0.5 / n_sersic
    np.exp(r_pow, out=r_pow)
    values = np.multiply.outer(-scales, r_pow)   # one temporary for every scale
    values += b_n
    np.exp(values, out=values)
    out = np.empty((len(scales), n_rows, n_cols))
    out[:, :top] = block_mean(values, top, n_cols, supersample)
    out[:, top:] = out[:, :n_rows - top][:, ::-1, ::-1]
    return out


def sersic_templates(h: int, w: int, re_pix_list, n_sersic: float, q: float, phi_rad: float,
                     supersample: int = SUPERSAMPLE) -> list[np.ndarray]:
    """Pixel-integrated elliptical Sersics of one shape and several sizes, each unit sum.

    ``R^(1/n)`` is computed once and shared by all sizes (the costly part), on half the samples
    (:func:`_sersic_pixels`). The cusp of
    high-index profiles is not captured by a few samples per pixel, so the pixels within
    ``CORE_HALF_PIX`` of the centre are integrated with ``CORE_SUPERSAMPLE`` per axis.

    Parameters
    ----------
    h, w : int
        Template size, pixels.
    re_pix_list : sequence of float
        Half-light radii (geometric mean of the semi-axes), pixels.
    n_sersic : float
        Sersic index.
    q : float
        Axis ratio b/a in (0, 1].
    phi_rad : float
        Position angle of the major axis, radians from +x towards +y.
    supersample : int
        Point samples per pixel per axis outside the core.

    Returns
    -------
    list of ndarray (h, w), float64, flux per pixel, each summing to 1.
    """
    supersample = check_range("supersample", supersample, 1, 64, integer=True)
    rows, cols = np.arange(h, dtype=float), np.arange(w, dtype=float)
    core_r = np.flatnonzero(np.abs(rows - (h - 1) / 2.0) <= CORE_HALF_PIX)
    core_c = np.flatnonzero(np.abs(cols - (w - 1) / 2.0) <= CORE_HALF_PIX)
    b_n = sersic_b_n(n_sersic)
    sizes = list(dict.fromkeys(float(r) for r in re_pix_list))   # each distinct size once, all in one pass
    scales = np.array([b_n / r ** (1.0 / n_sersic) for r in sizes])  # b_n (R/re)^(1/n) = scale * R^(1/n)
    imgs = _sersic_pixels(rows, cols, h, w, n_sersic, q, phi_rad, scales, b_n, supersample)
    imgs[np.ix_(np.arange(len(sizes)), core_r, core_c)] = _sersic_pixels(core_r.astype(float), core_c.astype(float), h, w,
                                                                         n_sersic, q, phi_rad, scales, b_n,
                                                                         CORE_SUPERSAMPLE)
    imgs /= imgs.sum(axis=(1, 2), keepdims=True)
    by_size = dict(zip(sizes, imgs, strict=True))
    return [by_size[float(r)] for r in re_pix_list]


def sersic_template(h: int, w: int, re_pix: float, n_sersic: float, q: float, phi_rad: float,
                    supersample: int = SUPERSAMPLE) -> np.ndarray:
    """One pixel-integrated elliptical Sersic, unit sum (see :func:`sersic_templates`)."""
    return sersic_templates(h, w, [re_pix], n_sersic, q, phi_rad, supersample)[0]


def gaussian_clump(h: int, w: int, x0_pix: float, y0_pix: float, sigma_pix: float) -> np.ndarray:
    """Round Gaussian of unit total flux, integrated exactly over each pixel (erf differences).

    Parameters
    ----------
    h, w : int
        Grid size, pixels.
    x0_pix, y0_pix : float
        Centre relative to the grid centre ``((W-1)/2, (H-1)/2)``, pixels.
    sigma_pix : float
        Gaussian sigma, pixels.

    Returns
    -------
    ndarray (h, w), float64, flux per pixel (sums to 1 when the clump lies inside the grid).
    """
    return np.outer(_clump_axis_weights(h, y0_pix, sigma_pix), _clump_axis_weights(w, x0_pix, sigma_pix))


def _clump_axis_weights(n: int, c0, sigma_pix) -> np.ndarray:
    """Fraction of a unit Gaussian (centre ``c0`` pixels from the grid centre) in each of ``n`` pixels along
    one axis; ``c0`` and ``sigma_pix`` may be arrays (one row of weights per clump)."""
    c0, sigma = np.asarray(c0, dtype=float)[..., None], np.asarray(sigma_pix, dtype=float)[..., None]
    edges = np.arange(n + 1) - 0.5 - (n - 1) / 2.0 - c0
    return np.diff(special.erf(edges / (math.sqrt(2.0) * sigma)), axis=-1) / 2.0


def clumps_image(h: int, w: int, clumps) -> np.ndarray:
    """``sum flux_frac * gaussian_clump(...)`` over ``clumps`` (dicts of :func:`generate_hybrid_source`'s meta)
    as one matrix product of the clumps' row and column weights: (h, w) float64."""
    if not clumps:
        return np.zeros((h, w))
    sigma = [c["sigma_pix"] for c in clumps]
    rows = _clump_axis_weights(h, [c["y_pix"] for c in clumps], sigma)
    rows *= np.array([c["flux_frac"] for c in clumps])[:, None]
    return rows.T @ _clump_axis_weights(w, [c["x_pix"] for c in clumps], sigma)


def _validate(h, w, re_pix, n_sersic, q, n_clumps_range, clump_sigma_pix_range, clump_flux_frac_range,
              gradient_strength):
    for name, v in (("H", h), ("W", w)):
        if int(v) != v or v < 1:
            raise InvalidValueError(name, v, "template size must be a positive integer (pixels)")
    check_range("re_pix", re_pix, 0.0, math.inf, lo_open=True)
    check_range("n_sersic", n_sersic, 0.3, 8.0)
    check_range("q", q, 0.0, 1.0, lo_open=True)
    check_range("gradient_strength", gradient_strength, 0.0, 1.0)
    ranges = (("n_clumps_range", n_clumps_range, 0, 100), ("clump_sigma_pix_range", clump_sigma_pix_range, 0.0, math.inf),
              ("clump_flux_frac_range", clump_flux_frac_range, 0.0, 1.0))
    for name, rng_pair, lo, hi in ranges:
        if len(rng_pair) != 2:
            raise InvalidValueError(name, tuple(rng_pair), "must be a pair (low, high)")
        a = check_range(f"{name}[0]", rng_pair[0], lo, hi)
        b = check_range(f"{name}[1]", rng_pair[1], lo, hi)
        if a > b:
            raise InvalidValueError(name, tuple(rng_pair), "must be ordered: low <= high")
    if int(n_clumps_range[0]) != n_clumps_range[0] or int(n_clumps_range[1]) != n_clumps_range[1]:
        raise InvalidValueError("n_clumps_range", tuple(n_clumps_range), "clump counts must be integers")
    if clump_sigma_pix_range[0] <= 0 and n_clumps_range[1] > 0:
        raise InvalidValueError("clump_sigma_pix_range", tuple(clump_sigma_pix_range), "clump sigma must be > 0 pixels")


def generate_hybrid_source(
    key: str,
    H: int = 96, W: int = 96,
    re_pix: float = 6.0,
    n_sersic: float = 1.0,
    q: float = 0.8,
    n_clumps_range: tuple[int, int] = (2, 6),
    clump_sigma_pix_range: tuple[float, float] = (0.8, 2.0),
    clump_flux_frac_range: tuple[float, float] = (0.05, 0.25),
    gradient_strength: float = 0.2,
    normalize_sum: bool = True,
    supersample: int = SUPERSAMPLE,
) -> dict[str, object]:
    """Generate a Gen7 hybrid source template (deterministic per ``key``).

    Parameters
    ----------
    key : str
        Deterministic hash key (the ``task_id``); all random draws come from it.
    H, W : int
        Template size, pixels.
    re_pix : float
        Half-light radius of the smooth Sersic (r band), pixels of the template grid.
    n_sersic : float
        Sersic index in [0.3, 8] (1 exponential, 4 de Vaucouleurs).
    q : float
        Axis ratio b/a in (0, 1]; the position angle is random.
    n_clumps_range : (int, int)
        Inclusive range of the number of clumps; ``(0, 0)`` disables clumps (Gen7a/7c ablations).
    clump_sigma_pix_range : (float, float)
        Range of the clump Gaussian sigma, pixels.
    clump_flux_frac_range : (float, float)
        Range of each clump's flux as a fraction of the smooth component's flux (r band;
        ``meta['clump_flux_frac_of_total']`` records the realised fraction of the total).
    gradient_strength : float
        ``ln(re_g / re_z)`` of the smooth component, in [0, 1]; 0 disables the gradient.
    normalize_sum : bool
        If True every returned image sums to 1 (dimensionless template); else the smooth
        component of each band sums to 1 and clumps add their fractions on top.
    supersample : int
        Point samples per pixel per axis of the smooth component outside its core (see
        :func:`sersic_templates`).

    Returns
    -------
    dict
        ``img``: ndarray (H, W) float64, the band-averaged template (flux per pixel, unit sum
        when ``normalize_sum``); ``bands``: {"g", "r", "z": ndarray (H, W)}, per-band templates,
        each unit sum when ``normalize_sum``; ``meta``: the generation parameters (JSON-safe).
    """
    _validate(H, W, re_pix, n_sersic, q, n_clumps_range, clump_sigma_pix_range, clump_flux_frac_range,
              gradient_strength)
    H, W = int(H), int(W)
    rng = rng_for(str(key), _SALT)
    phi = float(rng.uniform(0.0, math.pi))
    n_clumps = int(rng.integers(int(n_clumps_range[0]), int(n_clumps_range[1]) + 1))
    clumps = []
    for _ in range(n_clumps):
        u = float(rng.uniform(*CLUMP_RADIUS_RANGE_RE))
        t = float(rng.uniform(0.0, 2.0 * math.pi))
        sigma = float(rng.uniform(*clump_sigma_pix_range))
        frac = float(rng.uniform(*clump_flux_frac_range))
        # a point on the isophote R = u*re in the galaxy frame, rotated to the image frame
        xp, yp = u * re_pix * math.cos(t) / math.sqrt(q), u * re_pix * math.sin(t) * math.sqrt(q)
        x0 = math.cos(phi) * xp - math.sin(phi) * yp
        y0 = math.sin(phi) * xp + math.cos(phi) * yp
        clumps.append({"x_pix": x0, "y_pix": y0, "sigma_pix": sigma, "flux_frac": frac, "radius_re": u})

    clump_img = clumps_image(H, W, clumps)

    re_band = {b: re_pix * math.exp(GRADIENT_SIGN[b] * gradient_strength / 2.0) for b in BANDS}
    smooth = sersic_templates(H, W, [re_band[b] for b in BANDS], n_sersic, q, phi, supersample)
    bands = {}
    for b, smooth_b in zip(BANDS, smooth, strict=True):
        band = smooth_b + CLUMP_COLOUR[b] * clump_img
        bands[b] = band / band.sum() if normalize_sum else band
    img = sum(bands[b] for b in BANDS) / len(BANDS)
    if normalize_sum:
        img = img / img.sum()

    clump_total = float(clump_img.sum())
    meta = {
        "generator": "gen7_hybrid_sersic_clumps",
        "key": str(key), "H": H, "W": W, "re_pix": float(re_pix), "n_sersic": float(n_sersic), "q": float(q),
        "phi_rad": phi, "gradient_strength": float(gradient_strength),
        "re_pix_by_band": {b: float(v) for b, v in re_band.items()},
        "n_clumps": n_clumps, "clumps": clumps,
        "clump_flux_frac_of_total": clump_total / (1.0 + clump_total),
        "normalize_sum": bool(normalize_sum),
    }
    return {"img": img, "meta": meta, "bands": bands}
