"""The grid helpers of dhs_gen.conventions against their plain numpy definitions."""

import math

import numpy as np
import pytest

from dhs_gen.conventions import (
    block_mean,
    elliptical_r2_grid,
    make_antisymmetric,
    pixel_grid_arcsec,
    q_phi_from_ellipticity,
)


@pytest.mark.parametrize("rows, cols, s", [(96, 96, 2), (8, 8, 16), (27, 27, 5), (5, 7, 4), (3, 4, 1)])
def test_block_mean_is_the_mean_of_each_pixels_subpixels(rows, cols, s):
    values = np.random.default_rng(rows * cols + s).normal(size=(rows * s, cols * s))
    expected = values.reshape(rows, s, cols, s).mean(axis=(1, 3))
    np.testing.assert_allclose(block_mean(values, rows, cols, s), expected, rtol=1e-13, atol=1e-15)


def test_block_mean_averages_the_subpixels_of_pixel_grid_arcsec():
    x, y = pixel_grid_arcsec(6, 0.262, 4)
    centres = (np.arange(6) - 2.5) * 0.262
    np.testing.assert_allclose(block_mean(x, 6, 6, 4), np.broadcast_to(centres, (6, 6)), atol=1e-15)
    np.testing.assert_allclose(block_mean(y, 6, 6, 4), np.broadcast_to(centres[:, None], (6, 6)), atol=1e-15)


@pytest.mark.parametrize("e1, e2", [(0.0, 0.0), (0.2, -0.1), (-0.3, 0.25), (0.05, 0.6)])
def test_elliptical_r2_grid_is_the_rotated_elliptical_radius(e1, e2):
    q, phi = q_phi_from_ellipticity(e1, e2)
    ys, xs = np.linspace(-3.0, 2.0, 11), np.linspace(-1.5, 4.0, 13)
    x, y = np.meshgrid(xs, ys)
    c, s = math.cos(phi), math.sin(phi)
    xr, yr = c * x + s * y, -s * x + c * y
    np.testing.assert_allclose(elliptical_r2_grid(ys, xs, float(q), float(phi)), q * xr**2 + yr**2 / q,
                               rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n, s", [(25, 5), (24, 3), (7, 3), (1, 1), (2, 1)])
def test_make_antisymmetric_keeps_the_first_half_and_mirrors_it_exactly(n, s):
    axis = ((np.arange(n * s) + 0.5) / s - n / 2.0) * 0.262
    first = axis[:axis.size // 2].copy()
    out = make_antisymmetric(axis)
    assert out is axis and np.array_equal(out[:first.size], first)
    assert np.array_equal(out, -out[::-1])                 # to the bit
    np.testing.assert_allclose(out, ((np.arange(n * s) + 0.5) / s - n / 2.0) * 0.262, rtol=0, atol=1e-14)
    r2 = elliptical_r2_grid(out, out, 0.6, 0.4)
    assert np.array_equal(r2, r2[::-1, ::-1])              # a grid of it is point-symmetric to the bit
