r"""Lens mass model: singular isothermal ellipsoid (SIE) plus external shear.

Conventions are lenstronomy's ``SIE`` and ``SHEAR`` (lenstronomy 1.14.2), so that lenstronomy is
an exact oracle in tests and an alternative render engine:

* ``theta_e`` (arcsec) is the *product-averaged* (circularised) Einstein radius; the
  convergence is :math:`\kappa = \tfrac12\,\theta_E / \sqrt{q x'^2 + y'^2/q}` in the frame
  rotated by the position angle ``phi`` (major axis along x').
* Ellipticity ``e = (1 - q)/(1 + q)``, ``e1 = e cos 2phi``, ``e2 = e sin 2phi``
  (:mod:`dhs_gen.conventions`).
* The deflection in the major-axis frame is that of Keeton & Kochanek (1998) with core s = 0:
  with ``b = theta_e sqrt(q)``, ``eps = sqrt(1 - q^2)`` and ``psi = sqrt(q^2 x'^2 + y'^2)``,
  ``alpha_x' = b/eps arctan(eps x'/psi)``, ``alpha_y' = b/eps arctanh(eps y'/psi)``.
  lenstronomy evaluates the same formula with a core of 1e-10 arcsec and q clipped at
  0.99999999; both differ from ours by < 1e-8 relative away from the lens centre.
* External shear about the origin (``ra_0 = dec_0 = 0``, the stamp centre, not the lens centre):
  ``alpha_x = gamma1 x + gamma2 y``, ``alpha_y = gamma2 x - gamma1 y``.

The lens centre (psi = 0) is a removable 0/0: there the deflection is set to 0 (the limit of
the cored model), so no NaN reaches an image. For q -> 1 the ratio arctan(eps t)/eps tends to
t; ``eps`` is floored at 1e-8 so the round case (SIS) deflects by theta_e to double precision.

Fast rendering form (:class:`RayMap`)
    Everything in the lens equation but two transcendental terms is affine in the image-plane
    position: ``beta = (1 - Gamma)(x, y) - k R(phi) (A, B)`` with ``A = arctan(eps x'/psi)``,
    ``B = arctanh(eps y'/psi)`` and ``k = theta_e sqrt(q) / eps``: one (3, 5) matrix over
    ``(x, y, 1, A, B)`` (:attr:`RayMap.beta_basis`). A renderer that only needs affine functions of ``beta``
    (a source's own frame) folds them into one small matrix product (:meth:`RayMap.functional`),
    so a ray costs one sqrt, one arctan and one arctanh plus a dozen multiply-adds.
    :meth:`RayMap.lipschitz` bounds ``|D beta|``: for an isothermal potential the Hessian has
    eigenvalues 0 and 2 kappa (psi is homogeneous of degree 1), so
    ``|D beta| <= max(1, 2 kappa - 1) + |gamma|`` with ``2 kappa <= theta_e / (sqrt(q) r)`` at
    distance ``r`` from the lens centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from dhs_gen.conventions import q_phi_from_ellipticity
from dhs_gen.errors import RangeError, check_range

_EPS_FLOOR = 1e-8  # arctan(eps t)/eps = t (1 - (eps t)^2/3): exact in float64 for eps <= 1e-8


@dataclass(frozen=True)
class SIEShear:
    """SIE + external shear lens (lenstronomy ``SIE`` + ``SHEAR`` parameters).

    Parameters
    ----------
    theta_e : float
        Circularised Einstein radius, arcsec (> 0).
    e1, e2 : float
        Lens ellipticity (dimensionless), ``|e| < 1`` i.e. axis ratio q in (0, 1].
    gamma1, gamma2 : float
        External shear components (dimensionless), ``|gamma| < 1``.
    center_x, center_y : float
        Lens centre, arcsec, relative to the stamp centre.
    """

    theta_e: float
    e1: float = 0.0
    e2: float = 0.0
    gamma1: float = 0.0
    gamma2: float = 0.0
    center_x: float = 0.0
    center_y: float = 0.0

    def __post_init__(self):
        check_range("theta_e", self.theta_e, 0.0, math.inf, lo_open=True)
        for name in ("e1", "e2", "gamma1", "gamma2"):
            check_range(name, getattr(self, name), -1.0, 1.0, lo_open=True, hi_open=True)
        for name in ("center_x", "center_y"):
            check_range(name, getattr(self, name))
        e = math.hypot(self.e1, self.e2)
        if e >= 1.0:
            raise RangeError("|e| = hypot(e1, e2)", e, 0.0, 1.0, hi_open=True)
        g = math.hypot(self.gamma1, self.gamma2)
        if g >= 1.0:
            raise RangeError("|gamma| = hypot(gamma1, gamma2)", g, 0.0, 1.0, hi_open=True)

    @property
    def q(self) -> float:
        """Axis ratio b/a in (0, 1]."""
        return q_phi_from_ellipticity(self.e1, self.e2)[0]

    @property
    def phi_rad(self) -> float:
        """Position angle of the major axis, radians from +x towards +y."""
        return q_phi_from_ellipticity(self.e1, self.e2)[1]

    @cached_property
    def ray_map(self) -> RayMap:
        """The lens equation in the fast rendering form (module docstring)."""
        return RayMap.of(self)

    def lenstronomy_kwargs(self) -> list[dict]:
        """``kwargs_lens`` for ``LensModel(["SIE", "SHEAR"])`` describing the same lens."""
        return [dict(theta_E=self.theta_e, e1=self.e1, e2=self.e2, center_x=self.center_x, center_y=self.center_y),
                dict(gamma1=self.gamma1, gamma2=self.gamma2, ra_0=0.0, dec_0=0.0)]


@dataclass(frozen=True, eq=False)
class RayMap:
    """``beta = beta_basis @ (x, y, 1, A, B)`` for one :class:`SIEShear` (arcsec).

    ``(X, Y) = frame @ (x, y, 1)`` are ``(q x', y')`` in the major-axis frame (arcsec);
    ``psi = hypot(X, Y)``, ``A = arctan((eps / q) X / psi)``, ``B = arctanh(eps Y / psi)``
    (dimensionless). Build with :meth:`of` (or ``SIEShear.ray_map``).

    Attributes
    ----------
    frame : ndarray (2, 3)
        Rows give X and Y (arcsec) from (x, y, 1).
    frame32 : ndarray (2, 3)
        ``frame`` in float32, for the float32 ray passes.
    beta_basis : ndarray (3, 5)
        Rows ``beta_x``, ``beta_y`` (arcsec) and 1 over ``(x, y, 1, A, B)``: ``(1 - Gamma)(x, y)`` (the shear
        and the identity) minus ``theta_e sqrt(q) / eps R(phi) (A, B)`` (the SIE deflection).
    q, eps : float
        Axis ratio and ``max(sqrt(1 - q^2), 1e-8)``.
    theta_e, gamma : float
        Einstein radius (arcsec) and ``|gamma|``, for :meth:`lipschitz`.
    center : (float, float)
        Lens centre, arcsec.
    """

    frame: np.ndarray
    frame32: np.ndarray
    beta_basis: np.ndarray
    q: float
    eps: float
    theta_e: float
    gamma: float
    center: tuple

    @classmethod
    def of(cls, lens: SIEShear) -> RayMap:
        q, phi = q_phi_from_ellipticity(lens.e1, lens.e2)
        c, s = math.cos(phi), math.sin(phi)
        cx, cy = lens.center_x, lens.center_y
        eps = max(math.sqrt(max(1.0 - q * q, 0.0)), _EPS_FLOOR)
        frame = np.array([[q * c, q * s, -q * (c * cx + s * cy)], [-s, c, s * cx - c * cy]])
        g1, g2 = lens.gamma1, lens.gamma2
        k = lens.theta_e * math.sqrt(q) / eps  # the SIE deflection is k R(phi) (A, B)
        beta_basis = np.array([[1.0 - g1, -g2, 0.0, -(k * c), k * s], [-g2, 1.0 + g1, 0.0, -(k * s), -(k * c)],
                               [0.0, 0.0, 1.0, 0.0, 0.0]])
        return cls(frame, frame.astype(np.float32), beta_basis, q, eps, lens.theta_e, math.hypot(g1, g2), (cx, cy))

    def functional(self, rows: np.ndarray) -> np.ndarray:
        """Coefficients over ``(x, y, 1, A, B)`` of affine functions of beta.

        Parameters
        ----------
        rows : ndarray (k, 3)
            Each row ``(a, b, c)`` is the function ``a beta_x + b beta_y + c`` (beta in arcsec).

        Returns
        -------
        ndarray (k, 5): the same functions of the image-plane position (arcsec) and of A, B.
        """
        return np.asarray(rows, dtype=np.float64).reshape(-1, 3) @ self.beta_basis

    def angular_terms(self, xy: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Fill ``out`` (2, n) with (A, B) at the points whose ``(X, Y) = frame @ (x, y, 1)`` are ``xy``.

        ``xy`` (2, n) is overwritten (scratch); float32 or float64, the dtype of ``out``.
        """
        return sie_angular_terms(xy, self.eps, 1.0 / self.q, out)

    def lipschitz(self, r_min):
        """Upper bound of ``|D beta|`` (operator norm) at distance >= ``r_min`` (arcsec) from the lens centre.

        Infinite at ``r_min <= 0``. Dimensionless, the array shape of ``r_min``.
        """
        r_min = np.asarray(r_min, dtype=np.float64)
        with np.errstate(divide="ignore"):
            two_kappa = np.where(r_min > 0, self.theta_e / (math.sqrt(self.q) * np.maximum(r_min, 0.0)), np.inf)
        return np.maximum(1.0, two_kappa - 1.0) + self.gamma


_TINY = {np.dtype(t): np.finfo(t).tiny for t in (np.float32, np.float64)}


def sie_angular_terms(xy: np.ndarray, eps, inv_q, out: np.ndarray) -> np.ndarray:
    """(A, B) of :class:`RayMap` for one or many lenses: ``xy`` (..., 2, n) holds (X, Y) (arcsec).

    ``eps`` and ``inv_q`` (1/q) are scalars or arrays broadcasting against ``xy[..., 0, :]`` (one
    row per lens). ``xy`` is overwritten (scratch); ``out`` (..., 2, n), in the dtype of ``xy``.
    """
    big_x, big_y = xy[..., 0, :], xy[..., 1, :]
    a, b = out[..., 0, :], out[..., 1, :]
    np.multiply(big_x, big_x, out=a)
    np.multiply(big_y, big_y, out=b)
    a += b
    a += _TINY[a.dtype]  # lens centre: psi = sqrt(tiny), X = Y = 0, so A = B = 0 (no 0/0)
    np.sqrt(a, out=a)
    np.divide(eps, a, out=a)  # eps / psi
    np.multiply(big_y, a, out=b)
    np.arctanh(b, out=b)
    big_x *= a
    np.multiply(big_x, inv_q, out=a)  # X / q = x'
    np.arctan(a, out=a)
    return out


def sie_shear_deflection(x, y, theta_e, q, phi_rad, gamma1, gamma2, center_x, center_y):
    """SIE + shear deflection with every parameter broadcastable against ``x``, ``y``.

    The array form lets batch rendering ray-shoot the points of many lenses in one call (each
    point carrying its own lens parameters). Works in the dtype of ``x`` (float32 or float64).

    Parameters
    ----------
    x, y : array
        Image-plane positions, arcsec.
    theta_e : float or array
        Circularised Einstein radius, arcsec (> 0).
    q : float or array
        Axis ratio in (0, 1].
    phi_rad : float or array
        Major-axis position angle, radians.
    gamma1, gamma2 : float or array
        External shear (dimensionless), about the origin.
    center_x, center_y : float or array
        Lens centre, arcsec.

    Returns
    -------
    (alpha_x, alpha_y) : arrays, arcsec.
    """
    dt = np.result_type(x, np.float32)
    x = np.asarray(x, dtype=dt)
    y = np.asarray(y, dtype=dt)
    if x.ndim == 0 and y.ndim == 0 and np.ndim(theta_e) == 0:  # the in-place chain below needs arrays
        ax, ay = sie_shear_deflection(x[None], y[None], theta_e, q, phi_rad, gamma1, gamma2, center_x, center_y)
        return ax[0], ay[0]
    cos_p, sin_p = (np.asarray(f(phi_rad), dtype=dt) for f in (np.cos, np.sin))
    q = np.asarray(q, dtype=dt)
    eps = np.maximum(np.sqrt(1.0 - q * q), dt.type(_EPS_FLOOR))
    scale = np.asarray(theta_e, dtype=dt) * np.sqrt(q) / eps
    dx = x - np.asarray(center_x, dtype=dt)
    dy = y - np.asarray(center_y, dtype=dt)
    xp = cos_p * dx + sin_p * dy  # major-axis frame
    yp = cos_p * dy
    yp -= sin_p * dx
    psi = xp * xp  # in-place chain from here: these arrays are the hot loop of rendering
    psi *= q * q
    psi += yp * yp
    np.sqrt(psi, out=psi)
    np.maximum(psi, np.finfo(dt).tiny, out=psi)  # lens centre: 0/0 -> arctan(0) = 0
    t = np.divide(eps, psi, out=psi)
    ax_p = np.arctan(np.multiply(xp, t, out=xp), out=xp)
    ay_p = np.arctanh(np.multiply(yp, t, out=yp), out=yp)
    g1 = np.asarray(gamma1, dtype=dt)
    g2 = np.asarray(gamma2, dtype=dt)
    sc, ss = scale * cos_p, scale * sin_p
    alpha_x = sc * ax_p
    alpha_x -= ss * ay_p
    alpha_x += g1 * x
    alpha_x += g2 * y
    alpha_y = ss * ax_p
    alpha_y += sc * ay_p
    alpha_y += g2 * x
    alpha_y -= g1 * y
    return alpha_x, alpha_y


def deflection(lens: SIEShear, x, y):
    """Deflection angle of ``lens`` at image-plane positions (x, y).

    Parameters
    ----------
    lens : SIEShear
        The lens.
    x, y : array-like
        Image-plane positions, arcsec (any broadcastable shapes).

    Returns
    -------
    (alpha_x, alpha_y) : ndarray float64, arcsec; the source position is ``(x - alpha_x, y - alpha_y)``.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return sie_shear_deflection(x, y, lens.theta_e, lens.q, lens.phi_rad, lens.gamma1, lens.gamma2,
                                lens.center_x, lens.center_y)


def ray_shoot(lens: SIEShear, x, y):
    """Source-plane positions (arcsec) of image-plane positions (x, y) (arcsec): ``beta = theta - alpha``."""
    ax, ay = deflection(lens, x, y)
    return np.asarray(x, dtype=np.float64) - ax, np.asarray(y, dtype=np.float64) - ay
