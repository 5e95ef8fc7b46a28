r"""Source-plane light profiles: elliptical Sersic and interpolated pixel templates.

Every source is a small frozen dataclass whose ``flux`` is the *total* flux (any flux unit,
e.g. nanomaggies); :func:`surface_brightness` returns flux per arcsec^2 and dispatches on the
source type through :data:`SOURCE_PROFILES` (one entry per class, no mode ladders).

Sersic (lenstronomy ``SERSIC_ELLIPSE`` shape)
    .. math:: I(R) = I_e \exp\{-b_n [(R/r_{\rm eff})^{1/n} - 1]\}, \quad R^2 = q x'^2 + y'^2/q

    in the frame rotated by ``phi`` (:mod:`dhs_gen.conventions`), so ``r_eff`` is the
    geometric-mean half-light radius. ``b_n`` is exact: ``gammaincinv(2n, 1/2)`` (lenstronomy
    uses the approximation ``1.9992 n - 0.3271``; the oracle tests give lenstronomy the exact
    value). Normalisation: ``flux = I_e r_eff^2 2 pi n e^{b_n} Gamma(2n) / b_n^{2n}``.

Template (COSMOS, deep-field banks, Gen7 hybrids)
    A flux-per-pixel image on a grid of ``pixscale`` (DESIGN grid convention: pixel centres at
    ``(i - (N-1)/2) * pixscale`` from ``(center_x, center_y)``), optionally rotated
    counter-clockwise by ``rotation_rad``. The surface brightness is the bilinear interpolant of
    ``image / pixscale^2`` with zeros one pixel beyond the edge (lenstronomy ``INTERPOL``),
    scaled so that its integral, ``sum(image) * pixscale^2`` before scaling, equals ``flux``.

Frame interface (fast rendering, :mod:`dhs_gen.physics.injection`)
    Each source also describes itself in its own *frame*: two affine functions ``(U, V) =
    frame_matrix() @ (x, y, 1)`` of the source-plane position in which the profile is simple
    (Sersic: ``U^2 + V^2 = (R / r_eff)^2``; template: template pixels about its centre). With
    :meth:`dhs_gen.physics.lensing.RayMap.functional` the frame is reached from the image plane by one
    small matrix product. ``frame_sb(sources, uv)`` evaluates a group of same-type sources;
    ``near_core`` says where supersampling is mandatory; ``sb_bound`` bounds the surface
    brightness beyond a frame radius (for skipping empty blocks of a stamp);
    ``frame_stretch``/``frame_shrink`` are the largest/smallest frame units per arcsec.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
from scipy.special import gamma as gamma_fn
from scipy.special import gammaincinv

from dhs_gen.conventions import q_phi_from_ellipticity
from dhs_gen.errors import InvalidValueError, RangeError, check_range

SERSIC_N_RANGE = (0.2, 10.0)


@lru_cache(maxsize=4096)
def sersic_b_n(n: float) -> float:
    """Exact Sersic ``b_n`` (dimensionless): half the flux lies inside ``r_eff``, ``P(2n, b_n) = 1/2``."""
    return float(gammaincinv(2.0 * n, 0.5))


def sersic_flux_per_i_e(r_eff: float, n: float) -> float:
    """Total flux of a Sersic of unit ``I_e``: ``r_eff^2 2 pi n e^{b_n} Gamma(2n) / b_n^{2n}`` (arcsec^2)."""
    b = sersic_b_n(n)
    return r_eff**2 * 2.0 * math.pi * n * math.exp(b) * gamma_fn(2.0 * n) / b ** (2.0 * n)


def _check_ellipticity(e1, e2):
    check_range("e1", e1, -1.0, 1.0, lo_open=True, hi_open=True)
    check_range("e2", e2, -1.0, 1.0, lo_open=True, hi_open=True)
    if math.hypot(e1, e2) >= 1.0:
        raise RangeError("|e| = hypot(e1, e2)", math.hypot(e1, e2), 0.0, 1.0, hi_open=True)


@dataclass(frozen=True)
class SersicSource:
    """Elliptical Sersic source.

    Parameters
    ----------
    flux : float
        Total flux (any unit, e.g. nanomaggies), >= 0.
    r_eff : float
        Half-light radius (geometric mean of the axes), arcsec (> 0).
    n : float
        Sersic index, in ``SERSIC_N_RANGE``.
    e1, e2 : float
        Ellipticity (dimensionless), |e| < 1.
    center_x, center_y : float
        Source-plane centre, arcsec.
    """

    flux: float
    r_eff: float
    n: float = 1.0
    e1: float = 0.0
    e2: float = 0.0
    center_x: float = 0.0
    center_y: float = 0.0

    def __post_init__(self):
        check_range("flux", self.flux, 0.0, math.inf)
        check_range("r_eff", self.r_eff, 0.0, math.inf, lo_open=True)
        check_range("n", self.n, *SERSIC_N_RANGE)
        _check_ellipticity(self.e1, self.e2)
        check_range("center_x", self.center_x)
        check_range("center_y", self.center_y)

    @cached_property
    def i_e(self) -> float:
        """Surface brightness at ``r_eff``, flux per arcsec^2."""
        return self.flux / sersic_flux_per_i_e(self.r_eff, self.n)

    @cached_property
    def q_phi(self) -> tuple[float, float]:
        """(axis ratio q, position angle phi in radians) of the ellipticity."""
        q, phi = q_phi_from_ellipticity(self.e1, self.e2)
        return float(q), float(phi)

    def shape_key(self) -> tuple:
        """Everything but the flux: sources with equal keys share one normalised profile."""
        return ("sersic", self.r_eff, self.n, self.e1, self.e2, self.center_x, self.center_y)

    def support_radius(self, flux_tol: float) -> float:
        """Radius (arcsec) of a circle about the centre holding all but ``flux_tol`` of the flux."""
        r_tol = self.r_eff * (gammaincinv(2.0 * self.n, 1.0 - flux_tol) / sersic_b_n(self.n)) ** self.n
        return float(r_tol / math.sqrt(self.q_phi[0]))  # semi-major axis of the ellipse R = r_tol

    def core_radius(self) -> float:
        """Semi-major axis (arcsec) of the half-light ellipse: always supersampled when rendering."""
        return self.r_eff / math.sqrt(self.q_phi[0])

    def frame_matrix(self) -> np.ndarray:
        """(2, 3): ``(U, V)`` from ``(x, y, 1)`` (arcsec) with ``U^2 + V^2 = (R / r_eff)^2`` (dimensionless)."""
        q, phi = self.q_phi
        c, s = math.cos(phi), math.sin(phi)
        ku, kv = math.sqrt(q) / self.r_eff, 1.0 / (math.sqrt(q) * self.r_eff)
        cx, cy = self.center_x, self.center_y
        return np.array([[ku * c, ku * s, -ku * (c * cx + s * cy)], [-kv * s, kv * c, kv * (s * cx - c * cy)]])

    @property
    def frame_stretch(self) -> float:
        """Largest frame units (r_eff) per arcsec: ``1 / (sqrt(q) r_eff)``."""
        return 1.0 / (math.sqrt(self.q_phi[0]) * self.r_eff)

    @property
    def frame_shrink(self) -> float:
        """Smallest frame units (r_eff) per arcsec: ``sqrt(q) / r_eff``."""
        return math.sqrt(self.q_phi[0]) / self.r_eff

    @staticmethod
    def near_core(u, v, margin):
        """True where a disk of radius ``margin`` (frame units) about (u, v) meets the half-light ellipse."""
        return SersicSource.near_radius2(u * u + v * v, margin)

    @staticmethod
    def near_radius2(r2, margin, out=None):
        """:meth:`near_core` from ``r2 = u^2 + v^2`` (:meth:`frame_radius2`)."""
        return np.less_equal(r2, (1.0 + margin) ** 2, out=out)

    def sb_bound(self, rho):
        """Upper bound of the surface brightness (flux per arcsec^2) at frame radius >= ``rho`` (r_eff)."""
        rho = np.maximum(np.asarray(rho, dtype=np.float64), 0.0)
        b = sersic_b_n(self.n)
        return self.i_e * np.exp(b - b * rho ** (1.0 / self.n))

    core_is_support = False  # only the half-light ellipse must be supersampled; elsewhere the 5-point rule

    @cached_property
    def _frame_params(self) -> np.ndarray:
        """(3,) float64: ``1/(2n)``, ``-b_n`` and ``log(I_e) + b_n`` (the exponent's offset; -inf at zero flux)."""
        b = sersic_b_n(self.n)
        return np.array([0.5 / self.n, -b, (math.log(self.i_e) if self.i_e > 0 else -np.inf) + b])

    @staticmethod
    def frame_sb(sources, uv: np.ndarray) -> np.ndarray:
        """Surface brightness (flux per arcsec^2) of P Sersic sources from their frame coordinates.

        ``uv`` (P, 2, n) float32/float64 (U, V rows, overwritten as scratch); returns ``uv[:, 0]``.
        """
        return SersicSource.radius2_sb(sources, SersicSource.frame_radius2(uv))

    @staticmethod
    def frame_radius2(uv: np.ndarray) -> np.ndarray:
        """``(R / r_eff)^2`` (P, n) from frame coordinates ``uv`` (P, 2, n), computed in place: returns ``uv[:, 0]``."""
        u, v = uv[:, 0], uv[:, 1]
        u *= u
        v *= v
        u += v
        return u

    @staticmethod
    def radius2_sb(sources, r2: np.ndarray) -> np.ndarray:
        """Surface brightness (flux per arcsec^2) of P Sersic sources from :meth:`frame_radius2` (P, n), in place."""
        if len(sources) == 1:   # scalars: the same arithmetic without building a (1, 3, 1) array
            params = sources[0]._frame_params.astype(r2.dtype)
        else:
            params = np.array([s._frame_params for s in sources], dtype=r2.dtype).T[:, :, None]  # (3, P, 1)
        np.power(r2, params[0], out=r2)  # (R / r_eff)^(1/n)
        r2 *= params[1]
        r2 += params[2]
        return np.exp(r2, out=r2)  # I_e exp(b - b (R / r_eff)^(1/n))

    def cull_radius(self, sb_floor: float) -> float:
        """Frame radius (r_eff) beyond which the surface brightness is below ``sb_floor`` (flux per arcsec^2)."""
        if sb_floor <= 0 or self.i_e <= 0:
            return math.inf if self.i_e > 0 else 0.0
        b = sersic_b_n(self.n)
        return max(1.0 + math.log(self.i_e / sb_floor) / b, 0.0) ** self.n

    def lenstronomy(self) -> tuple[str, dict]:
        """(lenstronomy light profile name, kwargs) of the same profile (exact b_n required there)."""
        return "SERSIC_ELLIPSE", dict(amp=self.i_e, R_sersic=self.r_eff, n_sersic=self.n, e1=self.e1, e2=self.e2,
                                      center_x=self.center_x, center_y=self.center_y)


@dataclass(frozen=True, eq=False)
class TemplateSource:
    """Pixel-template source, flux-conserving bilinear interpolation in surface brightness.

    Parameters
    ----------
    image : ndarray (h, w)
        Template in flux per pixel (any unit, positive total), pixel centres on the DESIGN grid.
    pixscale : float
        Template pixel scale, arcsec per pixel.
    flux : float
        Total flux of the rendered source (same unit as the output), >= 0.
    center_x, center_y : float
        Source-plane position of the template centre, arcsec.
    rotation_rad : float
        Counter-clockwise rotation of the template, radians.
    """

    image: np.ndarray = field(repr=False)
    pixscale: float
    flux: float
    center_x: float = 0.0
    center_y: float = 0.0
    rotation_rad: float = 0.0

    def __post_init__(self):
        img = np.array(self.image, dtype=np.float64)
        if img.ndim != 2 or min(img.shape) < 1:
            raise InvalidValueError("image", img, "template must be a non-empty 2-D array (h, w)")
        if not np.all(np.isfinite(img)):
            raise InvalidValueError("image", img, "template pixels must be finite")
        total = float(img.sum())
        if not total > 0:
            raise InvalidValueError("image", img, f"template total must be > 0 (sum={total:g})")
        img.setflags(write=False)
        object.__setattr__(self, "image", img)
        check_range("pixscale", self.pixscale, 0.0, math.inf, lo_open=True)
        check_range("flux", self.flux, 0.0, math.inf)
        check_range("center_x", self.center_x)
        check_range("center_y", self.center_y)
        check_range("rotation_rad", self.rotation_rad)

    def shape_key(self) -> tuple:
        return ("template", id(self.image)) + self.frame_key()

    def frame_key(self) -> tuple:
        """Everything that sets :meth:`frame_matrix` and the padded lookup grid: templates with equal keys are
        read at identical frame positions (the bands of one source)."""
        return (self.image.shape, self.pixscale, self.center_x, self.center_y, self.rotation_rad)

    def support_radius(self, flux_tol: float) -> float:
        """Radius (arcsec) of the circle about the centre outside which the template is exactly 0."""
        h, w = self.image.shape
        return 0.5 * math.hypot(h + 1, w + 1) * self.pixscale

    def core_radius(self) -> float:
        """A template may be sharp anywhere on its support: the whole support radius (arcsec)."""
        return self.support_radius(0.0)

    @cached_property
    def sb_image(self) -> np.ndarray:
        """Template samples in surface brightness (flux per arcsec^2) integrating to ``flux``."""
        return self.image * (self.flux / (self.image.sum() * self.pixscale**2))

    @cached_property
    def _padded_sb64(self) -> np.ndarray:
        """``sb_image`` with two rings of zeros: clipped lookups beyond the support land on zeros."""
        h, w = self.image.shape
        padded = np.zeros((h + 2 * _TEMPLATE_PAD, w + 2 * _TEMPLATE_PAD))   # np.pad costs 10x this for a 96^2 template
        padded[_TEMPLATE_PAD:-_TEMPLATE_PAD, _TEMPLATE_PAD:-_TEMPLATE_PAD] = self.sb_image
        padded.setflags(write=False)
        return padded

    @cached_property
    def _padded_sb32(self) -> np.ndarray:
        """:attr:`_padded_sb64` in float32, for the float32 render path: half the memory traffic, and 6e-8
        relative rounding, the precision of that path's output."""
        padded = self._padded_sb64.astype(np.float32)
        padded.setflags(write=False)
        return padded

    def padded_sb(self, dtype) -> np.ndarray:
        """The zero-padded surface-brightness image in ``dtype`` (float32 or float64)."""
        return self._padded_sb32 if np.dtype(dtype) == np.float32 else self._padded_sb64

    def frame_matrix(self) -> np.ndarray:
        """(2, 3): ``(U, V)`` template pixels along its rotated axes, from the template centre, from ``(x, y, 1)``."""
        c, s, k = math.cos(self.rotation_rad), math.sin(self.rotation_rad), 1.0 / self.pixscale
        cx, cy = self.center_x, self.center_y
        return np.array([[k * c, k * s, -k * (c * cx + s * cy)], [-k * s, k * c, k * (s * cx - c * cy)]])

    @property
    def frame_stretch(self) -> float:
        """Template pixels per arcsec."""
        return 1.0 / self.pixscale

    frame_shrink = frame_stretch
    core_is_support = True  # a template may be sharp anywhere: supersample wherever it can reach

    def cull_radius(self, sb_floor: float) -> float:
        """Frame radius (template pixels) beyond which the surface brightness is 0."""
        h, w = self.image.shape
        return 0.5 * math.hypot(w + 1, h + 1)

    def near_core(self, u, v, margin):
        """True where a disk of radius ``margin`` (template pixels) about (u, v) meets the support.

        The whole support is the core: a template may be sharp anywhere on it.
        """
        h, w = self.image.shape
        return (np.abs(u) <= 0.5 * (w + 1) + margin) & (np.abs(v) <= 0.5 * (h + 1) + margin)

    def sb_bound(self, rho):
        """Upper bound of the surface brightness (flux per arcsec^2) at frame radius >= ``rho`` (template pixels)."""
        h, w = self.image.shape
        peak = max(float(self.sb_image.max()), 0.0)
        return np.where(np.asarray(rho) <= 0.5 * math.hypot(w + 1, h + 1), peak, 0.0)

    @staticmethod
    def frame_sb(sources, uv: np.ndarray) -> np.ndarray:
        """Bilinear surface brightness (flux per arcsec^2) of P templates from frame coordinates.

        ``uv`` (P, 2, n) as :meth:`SersicSource.frame_sb`; returns (P, n) in the dtype of ``uv``.
        """
        out = np.empty(uv[:, 0].shape, dtype=uv.dtype)
        same_frame: dict = {}  # templates of one geometry read at one (u, v) share one set of bilinear indices
        for p, src in enumerate(sources):
            key = src.frame_key()
            while key in same_frame and not np.array_equal(uv[same_frame[key][0]], uv[p]):
                key = (key, "read elsewhere")   # the same frame at other positions (another lens): its own group
            same_frame.setdefault(key, []).append(p)
        for members in same_frame.values():
            p0 = members[0]
            out[members] = _bilinear_padded([sources[p].padded_sb(uv.dtype) for p in members], uv[p0, 0], uv[p0, 1])
        return out

    def lenstronomy(self) -> tuple[str, dict]:
        """(lenstronomy light profile name, kwargs) of the same profile."""
        return "INTERPOL", dict(image=self.sb_image, amp=1.0, center_x=self.center_x, center_y=self.center_y,
                                phi_G=self.rotation_rad, scale=self.pixscale)


def sersic_sb_arrays(x, y, i_e, r_eff, n, q, phi_rad, center_x, center_y, b_n):
    """Elliptical Sersic surface brightness with parameters broadcastable against ``x``, ``y``.

    Parameters
    ----------
    x, y : array
        Source-plane positions, arcsec (dtype kept: float32 or float64).
    i_e : float or array
        Surface brightness at r_eff, flux per arcsec^2.
    r_eff : float or array
        Half-light radius, arcsec.
    n, b_n : float or array
        Sersic index and its exact b_n (dimensionless).
    q, phi_rad : float or array
        Axis ratio and position angle (radians).
    center_x, center_y : float or array
        Centre, arcsec.

    Returns
    -------
    ndarray, flux per arcsec^2.
    """
    dt = np.result_type(x, np.float32)
    c = np.asarray(np.cos(phi_rad), dtype=dt)
    s = np.asarray(np.sin(phi_rad), dtype=dt)
    q = np.asarray(q, dtype=dt)
    dx = x - np.asarray(center_x, dtype=dt)
    dy = y - np.asarray(center_y, dtype=dt)
    xp = c * dx + s * dy
    yp = c * dy - s * dx
    r2 = (q * xp * xp + yp * yp / q) / np.asarray(r_eff, dtype=dt) ** 2
    # (R/r_eff)^(1/n) = (R^2/r_eff^2)^(1/(2n)): one power, no sqrt
    u = np.power(r2, np.asarray(0.5 / np.asarray(n, dtype=np.float64), dtype=dt))
    b = np.asarray(b_n, dtype=dt)
    return np.asarray(i_e, dtype=dt) * np.exp(b - b * u)


def _sersic_sb(source: SersicSource, x, y):
    q, phi = source.q_phi
    return sersic_sb_arrays(x, y, source.i_e, source.r_eff, source.n, q, phi, source.center_x, source.center_y,
                            sersic_b_n(source.n))


def bilinear_zero_outside(img, col, row):
    """Bilinear interpolation of ``img`` at fractional (col, row) indices, 0 beyond one pixel out.

    Equivalent to interpolating the image padded with a ring of zeros, so the interpolant's
    integral is ``img.sum()`` (times the pixel area).
    """
    h, w = img.shape
    padded = np.zeros((h + 2, w + 2), dtype=img.dtype)
    padded[1:-1, 1:-1] = img
    c = np.asarray(col) + 1.0
    r = np.asarray(row) + 1.0
    inside = (c > 0) & (c < w + 1) & (r > 0) & (r < h + 1)
    c = np.where(inside, c, 0.0)
    r = np.where(inside, r, 0.0)
    c0 = np.minimum(np.floor(c).astype(np.intp), w)
    r0 = np.minimum(np.floor(r).astype(np.intp), h)
    fc = c - c0
    fr = r - r0
    v = ((padded[r0, c0] * (1 - fc) + padded[r0, c0 + 1] * fc) * (1 - fr)
         + (padded[r0 + 1, c0] * (1 - fc) + padded[r0 + 1, c0 + 1] * fc) * fr)
    return np.where(inside, v, 0.0)


_TEMPLATE_PAD = 2


def _bilinear_padded(images, u, v) -> np.ndarray:
    """Bilinear interpolation at template-frame (u, v) of images padded by ``_TEMPLATE_PAD`` zero rings.

    ``images``: padded templates of one shape, in the dtype of ``u``, read at the same positions (the
    bands of one source); the indices and weights are computed once for all of them. Returns
    (len(images), n) in that dtype.
    Positions are clipped into the zero rings, so every lookup is in bounds and anything a
    pixel or more beyond the edge pixel centres reads exactly 0 (same values as
    :func:`bilinear_zero_outside`).
    """
    hp, wp = images[0].shape
    dtype = u.dtype
    col = u + dtype.type(0.5 * (wp - 1))  # template centre -> padded pixel index
    row = v + dtype.type(0.5 * (hp - 1))
    np.clip(col, 0.0, wp - 1.5, out=col)  # into the zero rings, floor <= wp - 2
    np.clip(row, 0.0, hp - 1.5, out=row)
    c0 = col.astype(np.intp)
    r0 = row.astype(np.intp)
    col -= c0
    row -= r0
    flat = r0 * wp + c0
    right, below = flat + 1, flat + wp
    below_right = below + 1
    out = np.empty((len(images),) + u.shape, dtype=dtype)
    for k, padded in enumerate(images):
        img = padded.ravel()
        top = img.take(flat)
        top_right = img.take(right)
        top_right -= top
        top_right *= col
        top += top_right  # along the row at r0
        bottom = img.take(below)
        bottom_right = img.take(below_right)
        bottom_right -= bottom
        bottom_right *= col
        bottom += bottom_right  # at r0 + 1
        bottom -= top
        bottom *= row
        top += bottom
        out[k] = top
    return out


def _template_sb(source: TemplateSource, x, y):
    dx = np.asarray(x, dtype=np.float64) - source.center_x
    dy = np.asarray(y, dtype=np.float64) - source.center_y
    c, s = math.cos(source.rotation_rad), math.sin(source.rotation_rad)
    u = (c * dx + s * dy) / source.pixscale  # rotate the coordinates back by -rotation
    v = (c * dy - s * dx) / source.pixscale
    h, w = source.image.shape
    out = bilinear_zero_outside(source.sb_image, u + (w - 1) / 2.0, v + (h - 1) / 2.0)
    return out.astype(np.result_type(x, np.float32), copy=False)


SOURCE_PROFILES = {SersicSource: _sersic_sb, TemplateSource: _template_sb}
"""Source class -> surface-brightness function ``f(source, x, y)`` (flux per arcsec^2)."""


def surface_brightness(source, x, y):
    """Surface brightness of ``source`` at source-plane positions (x, y).

    Parameters
    ----------
    source : SersicSource or TemplateSource (any class in :data:`SOURCE_PROFILES`)
        The source; its ``flux`` is the total flux.
    x, y : array-like
        Source-plane positions, arcsec.

    Returns
    -------
    ndarray float64 (float32 if x is float32), flux per arcsec^2.
    """
    func = SOURCE_PROFILES.get(type(source))
    if func is None:
        raise InvalidValueError("source", type(source).__name__,
                                f"must be one of {[c.__name__ for c in SOURCE_PROFILES]}")
    x = np.asarray(x)
    y = np.asarray(y)
    if x.dtype != np.float32:
        x, y = x.astype(np.float64), y.astype(np.float64)
    return func(source, x, y)
