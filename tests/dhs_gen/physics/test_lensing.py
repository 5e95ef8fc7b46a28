"""SIE + shear deflections against lenstronomy 1.14.2 (``SIE`` + ``SHEAR``) and analytic identities."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from dhs_gen.conventions import ellipticity_from_q_phi
from dhs_gen.errors import RangeError
from dhs_gen.physics.lensing import SIEShear, deflection, ray_shoot, sie_shear_deflection


def _random_lens(rng) -> SIEShear:
    e1, e2 = ellipticity_from_q_phi(rng.uniform(0.3, 1.0), rng.uniform(0, np.pi))
    return SIEShear(theta_e=rng.uniform(0.3, 3.0), e1=float(e1), e2=float(e2), gamma1=rng.normal(0, 0.05),
                    gamma2=rng.normal(0, 0.05), center_x=rng.uniform(-1, 1), center_y=rng.uniform(-1, 1))


def test_deflection_matches_lenstronomy_sie_shear():
    from lenstronomy.LensModel.lens_model import LensModel

    model = LensModel(["SIE", "SHEAR"])
    rng = np.random.default_rng(20240601)
    worst = 0.0
    for _ in range(100):
        lens = _random_lens(rng)
        x, y = rng.uniform(-10, 10, (2, 300))
        # lenstronomy uses a 1e-10" core: keep >= 1e-3" from the centre, where it changes alpha by < 1e-7
        keep = np.hypot(x - lens.center_x, y - lens.center_y) > 1e-3
        ax, ay = deflection(lens, x[keep], y[keep])
        rx, ry = model.alpha(x[keep], y[keep], lens.lenstronomy_kwargs())
        worst = max(worst, float(np.max(np.hypot(ax - rx, ay - ry) / np.hypot(rx, ry))))
    # tolerance from the brief: 1e-6 relative (lenstronomy clips q at 1-1e-8: ~1e-8 differences)
    assert worst < 1e-6


def test_round_lens_includes_q_equal_one_case():
    from lenstronomy.LensModel.lens_model import LensModel

    lens = SIEShear(theta_e=1.2, gamma1=0.03, gamma2=-0.02, center_x=0.3)
    x, y = np.random.default_rng(1).uniform(-5, 5, (2, 200))
    ax, ay = deflection(lens, x, y)
    rx, ry = LensModel(["SIE", "SHEAR"]).alpha(x, y, lens.lenstronomy_kwargs())
    np.testing.assert_allclose(np.hypot(ax - rx, ay - ry) / np.hypot(rx, ry), 0.0, atol=1e-6)


def test_sis_deflects_by_theta_e_everywhere():
    lens = SIEShear(theta_e=1.7, center_x=0.2, center_y=-0.4)
    x, y = np.random.default_rng(2).uniform(-20, 20, (2, 1000))
    ax, ay = deflection(lens, x, y)
    np.testing.assert_allclose(np.hypot(ax, ay), 1.7, rtol=1e-12)  # float64 round-off only
    # and radially towards the centre (the sign of beta = theta - alpha)
    np.testing.assert_allclose(ax * (y - lens.center_y) - ay * (x - lens.center_x), 0.0, atol=1e-11)


def test_lens_centre_is_finite_and_zero():
    lens = SIEShear(theta_e=1.0, e1=0.2, e2=-0.1, center_x=0.5, center_y=0.25)
    ax, ay = deflection(lens, np.array([0.5, 0.5 + 1e-12]), np.array([0.25, 0.25]))
    assert np.all(np.isfinite(ax)) and np.all(np.isfinite(ay))
    assert ax[0] == 0.0 and ay[0] == 0.0
    sx, sy = ray_shoot(lens, 0.5, 0.25)
    assert (sx, sy) == (0.5, 0.25)


def test_divergence_of_deflection_is_twice_analytic_convergence():
    """div(alpha) = 2 kappa with kappa = theta_E / (2 sqrt(q x'^2 + y'^2/q)) (lenstronomy's SIE docstring)."""
    q, phi, theta_e = 0.6, 0.7, 1.4
    e1, e2 = ellipticity_from_q_phi(q, phi)
    lens = SIEShear(theta_e=theta_e, e1=float(e1), e2=float(e2))
    x, y = np.random.default_rng(3).uniform(-3, 3, (2, 200))
    x, y = x[np.hypot(x, y) > 0.3], y[np.hypot(x, y) > 0.3]
    h = 1e-5  # central differences: O(h^2 alpha''') ~ 1e-10 truncation, 1e-16/h ~ 1e-11 round-off
    div = ((deflection(lens, x + h, y)[0] - deflection(lens, x - h, y)[0])
           + (deflection(lens, x, y + h)[1] - deflection(lens, x, y - h)[1])) / (2 * h)
    xp, yp = np.cos(phi) * x + np.sin(phi) * y, -np.sin(phi) * x + np.cos(phi) * y
    kappa = theta_e / (2 * np.sqrt(q * xp**2 + yp**2 / q))
    np.testing.assert_allclose(div, 2 * kappa, rtol=1e-6)


def test_shear_only_part_is_linear_about_origin():
    lens = SIEShear(theta_e=1e-9, gamma1=0.1, gamma2=0.05, center_x=3.0)
    x, y = np.array([1.0, -2.0]), np.array([0.5, 4.0])
    ax, ay = deflection(lens, x, y)
    np.testing.assert_allclose(ax, 0.1 * x + 0.05 * y, atol=1e-8)
    np.testing.assert_allclose(ay, 0.05 * x - 0.1 * y, atol=1e-8)


def test_float32_path_agrees_with_float64():
    lens = _random_lens(np.random.default_rng(4))
    x, y = np.random.default_rng(5).uniform(-8, 8, (2, 500))
    a64 = sie_shear_deflection(x, y, lens.theta_e, lens.q, lens.phi_rad, lens.gamma1, lens.gamma2,
                               lens.center_x, lens.center_y)
    a32 = sie_shear_deflection(x.astype(np.float32), y.astype(np.float32), lens.theta_e, lens.q, lens.phi_rad,
                               lens.gamma1, lens.gamma2, lens.center_x, lens.center_y)
    assert a32[0].dtype == np.float32
    # float32 eps 6e-8 times ~10 operations and |x| <= 8": absolute error well below 1e-5 arcsec
    np.testing.assert_allclose(a32[0], a64[0], atol=1e-5)
    np.testing.assert_allclose(a32[1], a64[1], atol=1e-5)


def _ray_map_beta(lens, x, y, dtype=np.float64):
    """beta from the fast form: frame -> (A, B) -> functional of the identity rows."""
    rm = lens.ray_map
    xy1 = np.vstack([x, y, np.ones_like(x)]).astype(dtype)
    ab = np.empty((2, x.size), dtype=dtype)
    rm.angular_terms(rm.frame.astype(dtype) @ xy1, out=ab)
    coeffs = rm.functional(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])).astype(dtype)
    return coeffs[:, :3] @ xy1 + coeffs[:, 3:] @ ab


def test_ray_map_form_matches_lenstronomy_ray_shooting():
    from lenstronomy.LensModel.lens_model import LensModel

    model = LensModel(["SIE", "SHEAR"])
    rng = np.random.default_rng(20240602)
    for _ in range(50):
        lens = _random_lens(rng)
        x, y = rng.uniform(-10, 10, (2, 300))
        keep = np.hypot(x - lens.center_x, y - lens.center_y) > 1e-3  # lenstronomy's 1e-10" core, as above
        bx, by = _ray_map_beta(lens, x[keep], y[keep])
        rx, ry = model.ray_shooting(x[keep], y[keep], lens.lenstronomy_kwargs())
        # deflections agree to 1e-6 relative (test above) and |alpha| < ~5": 1e-5 arcsec absolute
        np.testing.assert_allclose(bx, rx, rtol=0, atol=1e-5)
        np.testing.assert_allclose(by, ry, rtol=0, atol=1e-5)
        b32 = _ray_map_beta(lens, x[keep], y[keep], np.float32)  # the renderer's dtype
        assert b32.dtype == np.float32
        np.testing.assert_allclose(b32[0], rx, rtol=0, atol=1e-4)  # float32: 6e-8 x ~100 x |terms| <~ 20"
    lens = SIEShear(theta_e=1.0, e1=0.2, center_x=0.5, center_y=0.25)  # exactly at the centre: finite, alpha = 0
    bx, by = _ray_map_beta(lens, np.array([0.5]), np.array([0.25]))
    assert (bx[0], by[0]) == (0.5, 0.25)


def test_lipschitz_bounds_the_jacobian_of_the_lens_map():
    """|D beta| from lenstronomy's analytic Hessian never exceeds RayMap.lipschitz at that radius."""
    from lenstronomy.LensModel.lens_model import LensModel

    model = LensModel(["SIE", "SHEAR"])
    rng = np.random.default_rng(7)
    worst = 0.0
    for _ in range(50):
        lens = _random_lens(rng)
        x, y = rng.uniform(-8, 8, (2, 400))
        r = np.hypot(x - lens.center_x, y - lens.center_y)
        fxx, fxy, fyx, fyy = model.hessian(x, y, lens.lenstronomy_kwargs())
        jac = np.stack([np.stack([1 - fxx, -fxy], -1), np.stack([-fyx, 1 - fyy], -1)], -2)
        norm = np.linalg.norm(jac, ord=2, axis=(-2, -1))
        bound = lens.ray_map.lipschitz(r)
        # lenstronomy's SIE Hessian is singular (psi homogeneous of degree 1) only to det/trace ~ 1e-5,
        # which moves the unit eigenvalue of D beta by that much: 1e-4 relative slack
        assert np.all(norm <= bound * (1 + 1e-4))
        worst = max(worst, float(np.max(norm / bound)))
    assert worst > 0.5  # and not vacuous: the bound is within 2x of the true norm somewhere
    assert np.isinf(SIEShear(1.0).ray_map.lipschitz(0.0))


@pytest.mark.parametrize("kwargs, name", [
    (dict(theta_e=float("nan")), "theta_e"), (dict(theta_e=0.0), "theta_e"), (dict(theta_e=-1.0), "theta_e"),
    (dict(theta_e=1.0, e1=0.8, e2=0.8), "|e|"), (dict(theta_e=1.0, e1=1.0), "e1"),
    (dict(theta_e=1.0, gamma2=float("inf")), "gamma2"), (dict(theta_e=1.0, center_x=float("nan")), "center_x"),
])
def test_bad_lens_parameters_raise_named_picklable_errors(kwargs, name):
    with pytest.raises(ValueError) as info:
        SIEShear(**kwargs)
    assert isinstance(info.value, RangeError)
    assert name in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert type(again) is type(info.value) and str(again) == str(info.value)
