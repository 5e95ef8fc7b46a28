"""Scene of one synthetic brick: what it holds (:class:`SkyConfig`), where the LRGs, field galaxies and stars are, and the DR10 maskbits they set.

:func:`draw_objects` draws the object catalogue (0-based pixel positions of the written image,
AB magnitudes, Sersic shapes); :func:`mask_bits_for` sets ``NPRIMARY`` outside the brick's own
area and ``BRIGHT`` / ``MEDIUM`` disks around bright stars (legacypipe radii). Used by
:func:`dhs_gen.survey.skysim.simulate_brick`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.survey.bricks import BrickInfo


@dataclass(frozen=True)
class SkyConfig:
    """What one synthetic brick holds (counts per brick; sizes in pixels; magnitudes AB)."""

    size_pix: int = 1200
    pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC
    n_lrg: int = 40
    n_field: int = 250
    n_star: int = 40
    n_bright_star: int = 3
    edge_lrg_fraction: float = 0.15
    gap_probability: float = 0.5        # chance that a brick has a no-coverage strip in one band
    noise: bool = True                  # False: noiseless images (tests), invvar as with noise

    def __post_init__(self):
        if int(self.size_pix) != self.size_pix or not 128 <= self.size_pix <= 3600 or self.size_pix % 2:
            raise InvalidValueError("size_pix", self.size_pix,
                                    "an even number of pixels in [128, 3600] (a centred sub-image of the 3600 brick)")
        for name in ("n_lrg", "n_field", "n_star", "n_bright_star"):
            v = getattr(self, name)
            if int(v) != v or not 0 <= v <= 5000:
                raise InvalidValueError(name, v, "an integer count in [0, 5000]")
        check_range("edge_lrg_fraction", self.edge_lrg_fraction, 0.0, 1.0)
        check_range("gap_probability", self.gap_probability, 0.0, 1.0)



DEFAULT_SKY = SkyConfig()

MASKBITS = {"NPRIMARY": 0x1, "BRIGHT": 0x2, "SATUR_G": 0x4, "SATUR_R": 0x8, "SATUR_Z": 0x10,
            "ALLMASK_G": 0x20, "ALLMASK_R": 0x40, "ALLMASK_Z": 0x80, "MEDIUM": 0x800}
"""DR10 maskbits used here (legacypipe ``bits.MASKBITS``; the full DR10 set runs to CLOUDS = 0x40000)."""


def mask_radius_arcsec(mag: float) -> float:
    """Bright-star mask radius (arcsec) for a star of magnitude ``mag``: legacypipe's ``1630 * 1.396**-mag``."""
    return 1630.0 * 1.396 ** (-mag)


def _far_from(x, y, xs, ys, min_pix) -> bool:
    return all((x - a) ** 2 + (y - b) ** 2 >= min_pix**2 for a, b in zip(xs, ys, strict=True))


def _lrg_positions(rng, n: int, n_edge: int, size: int, gap) -> tuple[list, list]:
    xs, ys = [], []
    for k in range(n):
        for _ in range(200):                       # rejection sampling; the last draw is kept anyway
            if k < n_edge:                         # 6-24 px from one edge: a 64-px stamp falls off it
                d, t, side = rng.uniform(6, 24), rng.uniform(48, size - 48), int(rng.integers(4))
                x, y = [(d, t), (size - 1 - d, t), (t, d), (t, size - 1 - d)][side]
            else:
                x, y = rng.uniform(48, size - 48, 2)
            in_gap = gap is not None and gap["x0_pix"] - 5 <= x <= gap["x0_pix"] + gap["width_pix"] + 5
            if not in_gap and _far_from(x, y, xs, ys, 40.0):
                break
        xs.append(float(x))
        ys.append(float(y))
    return xs, ys


def draw_objects(rng: np.random.Generator, cfg: SkyConfig, size: int, gap=None) -> dict:
    """Catalog of LRGs, field galaxies and stars for one brick (arrays, one entry per object).

    Columns: ``kind`` (lrg | galaxy | star), ``x_pix``, ``y_pix`` (0-based pixel position),
    ``mag_g/r/z`` (AB), ``r_eff_arcsec``, ``n_sersic``, ``q``, ``phi_rad`` (radians), ``near_edge``.
    """
    n_l, n_f, n_s, n_b = cfg.n_lrg, cfg.n_field, cfg.n_star, cfg.n_bright_star
    n_edge = int(round(cfg.edge_lrg_fraction * n_l))
    lx, ly = _lrg_positions(rng, n_l, n_edge, size, gap)
    lrg_r = rng.uniform(17.5, 20.5, n_l)
    # brighter LRGs are bigger (about r_eff ~ L^0.5), with scatter, inside 0.8-3"
    lrg_reff = np.clip(1.6 * 10 ** (-0.2 * (lrg_r - 19.0)) * rng.lognormal(0.0, 0.2, n_l), 0.8, 3.0)
    lo, hi = 10 ** (0.3 * 20.0), 10 ** (0.3 * 24.0)                  # counts rising as dN/dm ~ 10^(0.3 m)
    field_r = np.log10(lo + rng.uniform(0, 1, n_f) * (hi - lo)) / 0.3
    star_r = np.concatenate([rng.uniform(11.5, 14.0, n_b), rng.uniform(15.0, 22.0, n_s)])
    sx, sy = [], []
    for k in range(n_b + n_s):                 # bright stars at least 100 px from LRG centres
        for _ in range(200):
            x, y = rng.uniform(0, size - 1, 2)
            if k >= n_b or _far_from(x, y, lx, ly, 100.0):
                break
        sx.append(x)
        sy.append(y)
    r = np.concatenate([lrg_r, field_r, star_r])
    gr = np.concatenate([rng.uniform(1.5, 1.9, n_l), rng.uniform(0.2, 0.9, n_f), rng.uniform(0.3, 1.4, n_b + n_s)])
    rz = np.concatenate([rng.uniform(0.8, 1.1, n_l), rng.uniform(0.1, 0.7, n_f), rng.uniform(0.1, 0.9, n_b + n_s)])
    n_all = n_l + n_f + n_b + n_s
    zeros = np.zeros(n_b + n_s)
    return {
        "kind": np.array(["lrg"] * n_l + ["galaxy"] * n_f + ["star"] * (n_b + n_s)),
        "x_pix": np.concatenate([lx, rng.uniform(0, size - 1, n_f), sx]).astype(float),
        "y_pix": np.concatenate([ly, rng.uniform(0, size - 1, n_f), sy]).astype(float),
        "mag_g": r + gr, "mag_r": r, "mag_z": r - rz,
        "r_eff_arcsec": np.concatenate([lrg_reff, rng.uniform(0.3, 1.2, n_f), zeros]),
        "n_sersic": np.concatenate([np.full(n_l, 4.0), np.full(n_f, 1.0), zeros]),
        "q": np.concatenate([rng.uniform(0.5, 1.0, n_l), rng.uniform(0.3, 1.0, n_f), np.ones(n_b + n_s)]),
        "phi_rad": np.concatenate([rng.uniform(0, np.pi, n_l + n_f), zeros]),
        "near_edge": np.arange(n_all) < n_edge,
    }


def mask_bits_for(objs: dict, wcs, info: BrickInfo, size: int, pixscale_arcsec: float) -> np.ndarray:
    """int32 maskbits: NPRIMARY outside the brick's own area, BRIGHT / MEDIUM disks around stars."""
    mask = np.zeros((size, size), dtype=np.int32)
    yy, xx = np.mgrid[0:size, 0:size]
    # the primary area contains the centre and is convex: if no border pixel is outside, none is
    border = np.zeros((size, size), dtype=bool)
    border[[0, -1], :] = border[:, [0, -1]] = True
    for sel in (border, np.ones_like(border)):
        ra, dec = wcs.wcs_pix2world(xx[sel], yy[sel], 0)
        ra = np.mod(ra, 360.0)
        outside = (ra < info.ra1) | (ra >= info.ra2) | (dec < info.dec1) | (dec >= info.dec2)
        if not outside.any():
            break
        if sel is not border:
            mask[sel] |= np.where(outside, MASKBITS["NPRIMARY"], 0).astype(np.int32)
    for i in np.flatnonzero((objs["kind"] == "star") & (objs["mag_r"] < 16.0)):
        bit = MASKBITS["BRIGHT"] if objs["mag_r"][i] < 13.0 else MASKBITS["MEDIUM"]
        rad = mask_radius_arcsec(objs["mag_r"][i]) / pixscale_arcsec
        x, y = objs["x_pix"][i], objs["y_pix"][i]
        y0, y1 = max(int(y - rad), 0), min(int(y + rad) + 2, size)
        x0, x1 = max(int(x - rad), 0), min(int(x + rad) + 2, size)
        if y0 < y1 and x0 < x1:
            inside = (xx[y0:y1, x0:x1] - x) ** 2 + (yy[y0:y1, x0:x1] - y) ** 2 <= rad**2
            mask[y0:y1, x0:x1] |= np.where(inside, bit, 0).astype(np.int32)
    return mask
