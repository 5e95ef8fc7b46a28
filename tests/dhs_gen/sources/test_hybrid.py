"""Gen7 hybrid sources: analytic Sersic identities, symmetry, colour gradient, clumps, validation."""

import math
import pickle

import numpy as np
import pytest
from scipy import special

from dhs_gen.errors import InvalidValueError, RangeError
from dhs_gen.sources.hybrid import CORE_HALF_PIX, CORE_SUPERSAMPLE, generate_hybrid_source, sersic_template

SMOOTH = {"n_clumps_range": (0, 0), "gradient_strength": 0.0}


def _radius(h, w):
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(yy - (h - 1) / 2.0, xx - (w - 1) / 2.0)


def _half_light_radius(img):
    """Circular radius (pixels) enclosing half the flux, by linear interpolation of the growth curve."""
    r = _radius(*img.shape).ravel()
    order = np.argsort(r)
    growth = np.cumsum(img.ravel()[order]) / img.sum()
    return float(np.interp(0.5, growth, r[order]))


def test_deterministic_per_key_and_keys_differ():
    a, b = generate_hybrid_source("task-7"), generate_hybrid_source("task-7")
    assert np.array_equal(a["img"], b["img"]) and a["meta"] == b["meta"]
    for band in "grz":
        assert np.array_equal(a["bands"][band], b["bands"][band])
    assert not np.array_equal(a["img"], generate_hybrid_source("task-8")["img"])


def test_shapes_non_negative_and_unit_sums():
    out = generate_hybrid_source("k", H=40, W=56)
    assert out["img"].shape == (40, 56)
    assert set(out["bands"]) == {"g", "r", "z"}
    for arr in [out["img"], *out["bands"].values()]:
        assert arr.shape == (40, 56) and np.all(arr >= 0)
        assert arr.sum() == pytest.approx(1.0, abs=1e-12)  # float64 summation of ~2000 terms


def test_meta_is_json_safe():
    import json
    meta = generate_hybrid_source("k")["meta"]
    assert json.loads(json.dumps(meta)) == meta


@pytest.mark.parametrize("hw", [(33, 33), (32, 32), (31, 40)])
def test_smooth_peak_and_centroid_at_grid_centre(hw):
    h, w = hw
    img = generate_hybrid_source("peak", H=h, W=w, q=0.6, **SMOOTH)["img"]
    # the Sersic is point-symmetric about the grid centre, so its centroid is the centre exactly
    yy, xx = np.mgrid[:h, :w]
    assert (img * yy).sum() == pytest.approx((h - 1) / 2.0, abs=1e-9)
    assert (img * xx).sum() == pytest.approx((w - 1) / 2.0, abs=1e-9)
    peak = np.unravel_index(np.argmax(img), img.shape)
    # odd axes: the centre pixel; even axes: one of the two pixels straddling the centre
    assert abs(peak[0] - (h - 1) / 2.0) <= 0.5 and abs(peak[1] - (w - 1) / 2.0) <= 0.5
    # point symmetry: I(-x, -y) = I(x, y) up to float rounding
    np.testing.assert_allclose(img, img[::-1, ::-1], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("n_sersic, re_pix", [(0.5, 8.0), (1.0, 8.0), (4.0, 8.0), (4.0, 3.0)])
def test_half_light_radius_is_re_pix(n_sersic, re_pix):
    # analytic identity: a circular Sersic (exact b_n) holds gammainc(2n, b_n (R/re)^(1/n)) of its
    # light within R, so the fraction within re of the light within R=100 px is 0.5 / gammainc(...).
    # Tolerance 0.01: a pixel-centre aperture mis-assigns part of its boundary ring, which carries
    # 2 pi re I(re) ~ 0.06 of the flux per pixel of width (exponential, re=8), errors mostly cancelling.
    # (n=4, re=3 checks the cusp integration: 3x3 point samples there were off by 0.06.)
    img = sersic_template(201, 201, re_pix, n_sersic, 1.0, 0.0)
    r = _radius(201, 201)
    b_n = special.gammaincinv(2 * n_sersic, 0.5)
    expected = 0.5 / special.gammainc(2 * n_sersic, b_n * (100.0 / re_pix) ** (1.0 / n_sersic))
    assert img[r <= re_pix].sum() / img[r <= 100].sum() == pytest.approx(expected, abs=0.01)


def test_sersic_half_is_a_gaussian_and_orientation_from_moments():
    # n = 1/2 is a Gaussian with sigma = re / sqrt(2 ln 2) along the geometric-mean axis: compare
    # second moments with the analytic ones of an elliptical Gaussian of axis ratio q at angle phi.
    re, q, phi = 6.0, 0.5, 0.6
    img = sersic_template(121, 121, re, 0.5, q, phi, supersample=5)
    sigma = re / math.sqrt(2.0 * math.log(2.0))
    sa, sb = sigma / math.sqrt(q), sigma * math.sqrt(q)  # R^2 = q x'^2 + y'^2/q
    c, s = math.cos(phi), math.sin(phi)
    cov_expected = np.array([[c * c * sa**2 + s * s * sb**2, c * s * (sa**2 - sb**2)],
                             [c * s * (sa**2 - sb**2), s * s * sa**2 + c * c * sb**2]])
    yy, xx = np.mgrid[:121, :121] - 60.0
    cov = np.array([[(img * xx * xx).sum(), (img * xx * yy).sum()], [(img * xx * yy).sum(), (img * yy * yy).sum()]])
    # pixel integration adds 1/12 px^2 to each variance (box convolution): add it to the oracle
    np.testing.assert_allclose(cov, cov_expected + np.eye(2) / 12.0, rtol=2e-3, atol=2e-3)


def test_random_orientation_recorded_in_meta():
    phis = [generate_hybrid_source(f"o{i}", H=48, W=48, q=0.5, **SMOOTH)["meta"]["phi_rad"] for i in range(40)]
    assert all(0.0 <= p < math.pi for p in phis)
    assert np.std(phis) > 0.5  # uniform on [0, pi) has std 0.91
    out = generate_hybrid_source("o3", H=65, W=65, q=0.5, **SMOOTH)
    img, phi = out["img"], out["meta"]["phi_rad"]
    yy, xx = np.mgrid[:65, :65] - 32.0
    mxx, myy, mxy = (img * xx * xx).sum(), (img * yy * yy).sum(), (img * xx * yy).sum()
    measured = 0.5 * math.atan2(2 * mxy, mxx - myy) % math.pi
    diff = abs(measured - phi) % math.pi
    assert min(diff, math.pi - diff) < 0.02  # moments of a well-sampled q=0.5 ellipse: < 1 deg


def test_colour_gradient_bluer_outskirts():
    out = generate_hybrid_source("grad", H=96, W=96, re_pix=6.0, q=1.0, n_clumps_range=(0, 0), gradient_strength=0.3)
    hlr = {b: _half_light_radius(out["bands"][b]) for b in "grz"}
    assert hlr["g"] > hlr["r"] > hlr["z"]
    # half-light radii follow re * exp(+-gs/2) (analytic, 3% as in test_half_light_radius_is_re_pix)
    assert hlr["g"] / hlr["z"] == pytest.approx(math.exp(0.3), rel=0.03)
    # g/z flux ratio rises outward (bluer outskirts)
    r = _radius(96, 96)
    ratio_in = out["bands"]["g"][r < 3].sum() / out["bands"]["z"][r < 3].sum()
    ratio_out = out["bands"]["g"][(r > 10) & (r < 20)].sum() / out["bands"]["z"][(r > 10) & (r < 20)].sum()
    assert ratio_out > ratio_in


def test_no_gradient_means_identical_smooth_bands():
    out = generate_hybrid_source("flat", **SMOOTH)
    np.testing.assert_allclose(out["bands"]["g"], out["bands"]["z"], rtol=0, atol=1e-15)
    hlr = [_half_light_radius(out["bands"][b]) for b in "grz"]
    assert max(hlr) - min(hlr) < 1e-9


def test_clumps_near_one_re_and_blue():
    out = generate_hybrid_source("clumpy", H=96, W=96, re_pix=8.0, q=0.7, n_clumps_range=(4, 4),
                                 clump_sigma_pix_range=(1.0, 1.0), clump_flux_frac_range=(0.2, 0.2),
                                 gradient_strength=0.0)
    meta = out["meta"]
    assert meta["n_clumps"] == 4 and len(meta["clumps"]) == 4
    q = 0.7
    for c in meta["clumps"]:
        # elliptical radius of the clump centre in the galaxy frame, in units of re: 0.5 .. 1.5
        ca, sa = math.cos(meta["phi_rad"]), math.sin(meta["phi_rad"])
        xp, yp = ca * c["x_pix"] + sa * c["y_pix"], -sa * c["x_pix"] + ca * c["y_pix"]
        assert 0.5 - 1e-9 <= math.sqrt(q * xp * xp + yp * yp / q) / 8.0 <= 1.5 + 1e-9
        # at each clump centre the g template (clumps x1.5) exceeds z (clumps x0.6); without a
        # gradient the smooth parts of g and z are identical, so only clumps can make g > z
        iy, ix = round(c["y_pix"] + 47.5), round(c["x_pix"] + 47.5)
        assert out["bands"]["g"][iy, ix] > out["bands"]["z"][iy, ix]
    # clump flux: 4 x 0.2 of the smooth component -> 0.8 / 1.8 of the total
    assert meta["clump_flux_frac_of_total"] == pytest.approx(0.8 / 1.8, rel=1e-3)
    # clumps break point symmetry (the smooth profile alone is symmetric, see above)
    img = out["img"]
    assert np.abs(img - img[::-1, ::-1]).sum() > 0.05


def test_clump_count_within_range():
    counts = {generate_hybrid_source(f"c{i}", H=32, W=32, n_clumps_range=(2, 5))["meta"]["n_clumps"] for i in range(60)}
    assert counts == {2, 3, 4, 5}  # P(a value missing in 60 draws) = 4 * 0.75^60 ~ 1e-7


def test_normalize_sum_false_keeps_clump_fractions():
    out = generate_hybrid_source("raw", H=96, W=96, n_clumps_range=(3, 3), clump_flux_frac_range=(0.1, 0.1),
                                 gradient_strength=0.0, normalize_sum=False)
    # r band: smooth (unit sum) + 3 clumps of 0.1, all well inside the stamp (erf tails < 1e-6)
    assert out["bands"]["r"].sum() == pytest.approx(1.3, rel=1e-6)
    assert out["bands"]["g"].sum() == pytest.approx(1.0 + 1.5 * 0.3, rel=1e-6)


def test_gaussian_clump_matches_erf_integral_of_offcentre_gaussian():
    from dhs_gen.sources.hybrid import gaussian_clump
    g = gaussian_clump(21, 21, 2.3, -1.7, 1.4)
    # oracle: brute-force midpoint integration of the 2-D Gaussian on a 41x finer grid
    fine = 41
    offs = (np.arange(fine) + 0.5) / fine - 0.5
    ax = (np.arange(21) - 10.0)[:, None] + offs[None, :]
    gy = np.exp(-0.5 * ((ax + 1.7) / 1.4) ** 2).mean(axis=1)
    gx = np.exp(-0.5 * ((ax - 2.3) / 1.4) ** 2).mean(axis=1)
    oracle = np.outer(gy, gx) / (2 * math.pi * 1.4**2)
    np.testing.assert_allclose(g, oracle, rtol=1e-3, atol=1e-7)  # midpoint rule error ~ (1/41)^2/24
    # nearest stamp edge is 8.2 px = 5.9 sigma away: the lost tail is 0.5 * erfc(5.9 / sqrt 2) ~ 2e-9
    assert g.sum() == pytest.approx(1.0 - 0.5 * special.erfc(8.2 / (1.4 * 2**0.5)), abs=1e-9)


@pytest.mark.parametrize("kwargs, err", [
    ({"re_pix": 0.0}, RangeError), ({"re_pix": -1}, RangeError), ({"q": 0.0}, RangeError), ({"q": 1.2}, RangeError),
    ({"n_sersic": 0.2}, RangeError), ({"n_sersic": 9}, RangeError), ({"n_clumps_range": (5, 2)}, InvalidValueError),
    ({"clump_sigma_pix_range": (2.0, 1.0)}, InvalidValueError), ({"clump_flux_frac_range": (0.3, 0.1)}, InvalidValueError),
    ({"gradient_strength": -0.1}, RangeError), ({"H": 0}, InvalidValueError), ({"n_clumps_range": (1.5, 2)}, InvalidValueError),
    ({"supersample": 0}, RangeError), ({"supersample": 2.5}, RangeError),
])
def test_invalid_inputs_raise_named_errors(kwargs, err):
    with pytest.raises(err) as info:
        generate_hybrid_source("bad", **kwargs)
    name = next(iter(kwargs))
    assert name in str(info.value)
    assert type(pickle.loads(pickle.dumps(info.value))) is err


def test_clumps_image_is_the_sum_of_its_gaussian_clumps():
    from dhs_gen.sources.hybrid import clumps_image, gaussian_clump

    clumps = [{"x_pix": 3.2, "y_pix": -1.1, "sigma_pix": 0.9, "flux_frac": 0.2},
              {"x_pix": -6.0, "y_pix": 4.4, "sigma_pix": 1.7, "flux_frac": 0.05},
              {"x_pix": 0.0, "y_pix": 0.0, "sigma_pix": 1.2, "flux_frac": 0.11}]
    expected = sum(c["flux_frac"] * gaussian_clump(30, 26, c["x_pix"], c["y_pix"], c["sigma_pix"]) for c in clumps)
    np.testing.assert_allclose(clumps_image(30, 26, clumps), expected, rtol=1e-12, atol=1e-18)
    assert not clumps_image(30, 26, []).any()


@pytest.mark.parametrize("h, w, supersample", [(96, 96, 2), (33, 40, 3), (17, 17, 4), (2, 5, 1)])
def test_sersic_template_equals_a_plain_full_grid_evaluation(h, w, supersample):
    """sersic_template (evaluated on half its pixel rows and turned by 180 degrees) equals the profile averaged
    over every point sample of every pixel, written out plainly: any size, odd or even, square or not."""
    re_pix, n, q, phi = 3.0, 1.4, 0.6, 0.7
    b = special.gammaincinv(2 * n, 0.5)

    def pixel_means(rows, cols, s):
        offs = (np.arange(s) + 0.5) / s - 0.5
        ys = ((rows - (h - 1) / 2.0)[:, None] + offs).ravel()
        xs = ((cols - (w - 1) / 2.0)[:, None] + offs).ravel()
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        xp, yp = math.cos(phi) * xx + math.sin(phi) * yy, -math.sin(phi) * xx + math.cos(phi) * yy
        r = np.sqrt(q * xp**2 + yp**2 / q)
        sb = np.exp(-b * ((r / re_pix) ** (1 / n) - 1))
        return sb.reshape(len(rows), s, len(cols), s).mean(axis=(1, 3))

    rows, cols = np.arange(h, dtype=float), np.arange(w, dtype=float)
    ref = pixel_means(rows, cols, supersample)
    core_r = np.flatnonzero(np.abs(rows - (h - 1) / 2.0) <= CORE_HALF_PIX)
    core_c = np.flatnonzero(np.abs(cols - (w - 1) / 2.0) <= CORE_HALF_PIX)
    ref[np.ix_(core_r, core_c)] = pixel_means(rows[core_r], cols[core_c], CORE_SUPERSAMPLE)
    np.testing.assert_allclose(sersic_template(h, w, re_pix, n, q, phi, supersample), ref / ref.sum(), rtol=1e-12)
