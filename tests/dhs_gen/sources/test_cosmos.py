"""Gen5 COSMOS loader V2, measurements, resampling and the HDF5 bank, on real HST stamps.

Oracles: analytic pixel integrals of Gaussians (erf), the exact half-light radius of an
exponential disc, the catalogs' own SExtractor ``flux_radius`` and ``stamp_flux``, and the
published ACS zeropoints (Sirianni et al. 2005).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from astropy.io import fits
from scipy import special

from dhs_gen.errors import ChoiceError, InvalidValueError
from dhs_gen.imaging.measure import clumpiness, flux_weighted_centroid, half_light_radius
from dhs_gen.imaging.resample import resample_to_pixscale
from dhs_gen.sources.banks import BankTemplate, TemplateBank, open_bank
from dhs_gen.sources.cosmos import COSMOSLoaderV2, build_cosmos_bank

ACS_ZP_AB = {"F606W": 26.486, "F814W": 25.937}  # Sirianni et al. 2005, Table 10


def _pixel_integrated_gaussian(n, pixscale, sigma, x0, y0, flux=1.0):
    """Exact pixel integrals (erf) of a circular Gaussian on the DESIGN grid (arcsec)."""
    edges = (np.arange(n + 1) - n / 2.0) * pixscale
    fx = np.diff(special.erf((edges - x0) / (math.sqrt(2) * sigma))) / 2
    fy = np.diff(special.erf((edges - y0) / (math.sqrt(2) * sigma))) / 2
    return flux * np.outer(fy, fx)


def _first_moment(img, x0, y0, radius):
    """Plain first moment (pixel indices) inside a circle centred on the expected position: an
    aperture symmetric about the truth gives an unbiased check of the centring."""
    yy, xx = np.indices(img.shape, dtype=float)
    w = img * (np.hypot(xx - x0, yy - y0) <= radius)
    return (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()


def _cosmos_dirs(shared_data):
    return [shared_data / "cosmos_hst", shared_data / "cosmos_hst" / "slsim"]


# ----------------------------------------------------------------------------- resampling
def test_resample_matches_analytic_integral_and_conserves_flux():
    # 0.03"/pix HST-like stamp of an off-centre Gaussian (sigma 0.3"), onto the 0.262" grid.
    hst = _pixel_integrated_gaussian(240, 0.03, 0.3, 0.11, -0.07, flux=50.0)
    out = resample_to_pixscale(hst, 0.03, 0.262, out_size=31)
    expected = _pixel_integrated_gaussian(31, 0.262, 0.3, 0.11, -0.07, flux=50.0)
    # flux: the brief allows 2%; area weighting is exact up to the (negligible) wings beyond the stamp
    assert abs(out.sum() / hst.sum() - 1) < 1e-6
    # pixel values: area weighting treats each 0.03" input pixel as uniform, so where an output edge
    # cuts one it misplaces ~ gradient * 0.03^2 / 8 per unit edge: ~0.2 % of the peak here (measured)
    assert np.max(np.abs(out - expected)) < 5e-3 * expected.max()


def test_resample_default_grid_keeps_centre_and_all_flux():
    img = _pixel_integrated_gaussian(101, 0.03, 0.2, 0.0, 0.0)
    out = resample_to_pixscale(img, 0.03, 0.262)
    assert out.shape == (12, 12)  # ceil(101 * 0.03 / 0.262): the smallest covering grid
    assert abs(out.sum() - img.sum()) < 1e-12
    cx, cy = _first_moment(out, 5.5, 5.5, 6)
    assert abs(cx - 5.5) < 1e-6 and abs(cy - 5.5) < 1e-6  # DESIGN grid: centre at (N-1)/2


def test_resample_center_arcsec_moves_that_point_to_the_stamp_centre():
    img = _pixel_integrated_gaussian(200, 0.03, 0.15, 0.6, -0.45)
    out = resample_to_pixscale(img, 0.03, 0.262, out_size=21, center_arcsec=(0.6, -0.45))
    cx, cy = _first_moment(out, 10, 10, 8)
    assert abs(cx - 10) < 1e-3 and abs(cy - 10) < 1e-3  # 0.6" = 2.3 output pixels moved exactly


def test_resample_rejects_bad_input():
    with pytest.raises(InvalidValueError):
        resample_to_pixscale(np.ones(5), 0.03, 0.262)
    with pytest.raises(ValueError, match="target_pixscale"):
        resample_to_pixscale(np.ones((5, 5)), 0.03, -1.0)


# ----------------------------------------------------------------------------- measurements
def test_half_light_radius_of_an_exponential_disc():
    pix, re = 0.03, 0.4
    yy, xx = (np.indices((301, 301)) - 150) * pix
    bn = special.gammaincinv(2.0, 0.5)  # exact: re encloses half the light of an n=1 Sersic
    img = np.exp(-bn * np.hypot(xx - 0.05, yy + 0.02) / re)
    # tolerance: point sampling of the cusp + sep's 5x5 sub-pixel aperture edges, << 1 %
    assert half_light_radius(img, pix) == pytest.approx(re, rel=0.01)


def test_clumpiness_smooth_vs_clumpy():
    rng = np.random.default_rng(1)
    smooth = _pixel_integrated_gaussian(128, 0.03, 0.3, 0, 0, flux=50)
    noisy = smooth + rng.normal(0, 0.0026, smooth.shape)  # ACS sky noise: must not read as clumps
    clumpy = noisy.copy()
    for x, y in [(0.3, 0.1), (-0.2, 0.25), (0.05, -0.35)]:
        clumpy += _pixel_integrated_gaussian(128, 0.03, 0.04, x, y, flux=5)
    hlr_pix = half_light_radius(noisy, 0.03) / 0.03
    s_smooth = clumpiness(noisy, hlr_pix, flux_weighted_centroid(noisy))
    s_clumpy = clumpiness(clumpy, hlr_pix, flux_weighted_centroid(clumpy))
    assert 0 <= s_smooth < 0.03 and s_clumpy > s_smooth + 0.05 and s_clumpy <= 1


# ----------------------------------------------------------------------------- real stamps
@pytest.fixture(scope="module")
def real_sources(shared_data):
    return [COSMOSLoaderV2(d).get_source_by_index(i) for d in _cosmos_dirs(shared_data)
            for i in range(len(COSMOSLoaderV2(d)))]


def test_all_real_stamps_load_finite_and_background_subtracted(real_sources, shared_data):
    assert len(real_sources) == 12 and len({s.catalog_id for s in real_sources}) == 12
    for s in real_sources:
        assert s.image.dtype == np.float64 and np.all(np.isfinite(s.image)) and not s.image.flags.writeable
        assert s.pixscale == pytest.approx(0.03) and s.band == "F814W" and s.n_nonfinite == 0
        ring = np.ones(s.image.shape, bool)
        ring[4:-4, 4:-4] = False
        assert abs(np.median(s.image[ring])) < 1e-12  # border median removed
        assert 0 <= s.clumpiness <= 1 and s.flux > 0 and math.isfinite(s.mag)
    # slsim's catalog says GAL_HDU=2 for both rows; its stamp_flux picks the right HDU for each
    slsim = [s for s in real_sources if s.catalog_id in (97475, 169753)]
    table = fits.getdata(shared_data / "cosmos_hst" / "slsim" / "real_galaxy_catalog_23.5.fits", 1)
    for s in slsim:
        stamp_flux = float(table["stamp_flux"][table["IDENT"] == s.catalog_id][0])
        assert s.flux == pytest.approx(stamp_flux, rel=0.05)  # minus the small border-median background


def test_half_light_radius_tracks_catalog_flux_radius(real_sources):
    ours = np.array([s.half_light_radius for s in real_sources])
    cat = np.array([s.flux_radius_catalog for s in real_sources])  # SExtractor FLUX_RADIUS, arcsec
    ratio = ours / cat
    # SExtractor normalises by MAG_AUTO's Kron flux on the full tile, we by the stamp total: the
    # median agrees to 10 %, single bulge+disc galaxies to ~30 % (measured 0.71 - 1.06).
    assert abs(np.median(ratio) - 1) < 0.1
    assert np.all((ratio > 0.65) & (ratio < 1.35)), ratio
    assert np.corrcoef(np.log(ours), np.log(cat))[0, 1] > 0.9


def test_aegis_two_bands_colour_matches_acs_zeropoints(shared_data):
    bands = {b: COSMOSLoaderV2(shared_data / "cosmos_hst" / "aegis", band=b) for b in ACS_ZP_AB}
    srcs = {b: {s.catalog_id: s for s in map(ld.get_source_by_index, range(len(ld)))} for b, ld in bands.items()}
    assert set(srcs["F606W"]) == set(srcs["F814W"]) and len(srcs["F606W"]) == 5
    offsets = []
    for ident, v in srcs["F606W"].items():
        i = srcs["F814W"][ident]
        # catalog colour = image colour + (ZP_606 - ZP_814) when images are in counts/s
        offsets.append((v.mag - i.mag) + 2.5 * np.log10(v.flux / i.flux))
        assert v.half_light_radius == pytest.approx(i.half_light_radius, rel=0.3)  # same galaxy
    # 0.1 mag: catalog MAG (aperture photometry) vs stamp sums, measured scatter 0.05 on the bright ones
    assert np.median(offsets) == pytest.approx(ACS_ZP_AB["F606W"] - ACS_ZP_AB["F814W"], abs=0.1)


def test_directory_with_two_bands_needs_a_band(shared_data):
    with pytest.raises(InvalidValueError, match="band"):
        COSMOSLoaderV2(shared_data / "cosmos_hst" / "aegis")
    with pytest.raises(ChoiceError):
        COSMOSLoaderV2(shared_data / "cosmos_hst" / "aegis", band="F125W")


def test_galsim_test_catalog_file_path(shared_data):
    loader = COSMOSLoaderV2(shared_data / "cosmos_hst" / "galsim_test" / "test_catalog.fits")
    src = loader.get_source_by_index(0)
    assert src.catalog_id == 100533 and src.image.shape == (197, 67) and np.isnan(src.flux_radius_catalog)
    assert 0.1 < src.half_light_radius < 2.0


def test_get_source_is_deterministic_and_survives_pickling(shared_data):
    loader = COSMOSLoaderV2(shared_data / "cosmos_hst")
    a, b = loader.get_source(42), loader.get_source(42)
    assert a.catalog_id == b.catalog_id and np.array_equal(a.image, b.image)
    again = pickle.loads(pickle.dumps(loader)).get_source(42)  # what a Spark executor sees
    assert again.catalog_id == a.catalog_id and np.array_equal(again.image, a.image)
    assert len({loader.index_for_seed(s) for s in range(200)}) == len(loader)


def test_nan_pixels_become_zero_with_a_count(tmp_path):
    img = np.ones((40, 40), np.float32) * 0.01
    img[20, 20] = 5.0
    img[3:6, 30:33] = np.nan
    fits.PrimaryHDU(img).writeto(tmp_path / "imgs.fits")
    cols = [fits.Column("IDENT", "J", array=[7]), fits.Column("GAL_FILENAME", "20A", array=["imgs.fits"]),
            fits.Column("GAL_HDU", "J", array=[0]), fits.Column("PIXEL_SCALE", "D", array=[0.03])]
    fits.BinTableHDU.from_columns(cols).writeto(tmp_path / "my_catalog.fits")
    src = COSMOSLoaderV2(tmp_path).get_source_by_index(0)
    assert src.n_nonfinite == 9 and np.all(np.isfinite(src.image)) and np.all(src.image[3:6, 30:33] == 0)


def test_wrong_paths_raise_naming_the_path(tmp_path):
    missing = tmp_path / "no_such_cosmos"
    for mode in ("galsim", "hdf5"):
        with pytest.raises(InvalidValueError, match="no_such_cosmos") as err:
            COSMOSLoaderV2(missing, mode=mode)
        assert str(pickle.loads(pickle.dumps(err.value))) == str(err.value)
    with pytest.raises(InvalidValueError, match=str(tmp_path)):
        COSMOSLoaderV2(tmp_path)  # exists, but holds no catalog: no silent synthetic fallback
    with pytest.raises(ChoiceError):
        COSMOSLoaderV2(tmp_path, mode="auto")


def test_synthetic_only_when_asked():
    loader = COSMOSLoaderV2(None, mode="synthetic", n_synthetic=8)
    src = loader.get_source("task-1")
    assert len(loader) == 8 and src.flux > 0 and 0.1 < src.half_light_radius < 0.6


# ----------------------------------------------------------------------------- HDF5 bank
def test_bank_round_trip(shared_data, tmp_path):
    out = tmp_path / "bank.h5"
    summary = build_cosmos_bank(shared_data / "cosmos_hst", out, n_sources=20, stamp_size=48, pixel_scale=0.03,
                                seed=42)
    assert summary["n_tried"] == 10 and summary["n_written"] + sum(summary["cuts"].values()) == 10
    assert summary["n_written"] >= 8
    bank = COSMOSLoaderV2(out, mode="hdf5")
    native = {s.catalog_id: s for s in map(COSMOSLoaderV2(shared_data / "cosmos_hst").get_source_by_index, range(10))}
    assert len(bank) == summary["n_written"]
    for i in range(len(bank)):
        s = bank.get_source_by_index(i)
        ref = native[s.catalog_id]
        assert s.image.shape == (48, 48) and s.pixscale == pytest.approx(0.262)
        assert s.flux == pytest.approx(ref.flux, rel=0.02)  # flux conserved by the 0.03" -> 0.262" resampling
        assert s.half_light_radius == pytest.approx(ref.half_light_radius, rel=1e-9)  # native measurement kept
        cx, cy = _first_moment(s.image, 23.5, 23.5, 3 * s.half_light_radius / 0.262 + 2)
        # centred on the galaxy: 0.3 pix = 0.08" allows for asymmetric real galaxies and sky noise
        assert abs(cx - 23.5) < 0.3 and abs(cy - 23.5) < 0.3, (s.catalog_id, cx, cy)
    again = tmp_path / "again.h5"
    build_cosmos_bank(shared_data / "cosmos_hst", again, 20, 48, 0.03, 42)
    assert [COSMOSLoaderV2(again, "hdf5").get_source_by_index(i).catalog_id for i in range(len(bank))] == \
        [bank.get_source_by_index(i).catalog_id for i in range(len(bank))]


def test_bank_cuts_sources_too_big_for_the_stamp(shared_data, tmp_path):
    summary = build_cosmos_bank(shared_data / "cosmos_hst", tmp_path / "b.h5", 20, 5, 0.03, 1)
    assert summary["cuts"]["too_big"] >= 5  # a 1.3" stamp cannot hold most galaxies
    with pytest.raises(InvalidValueError, match="pixel_scale"):
        build_cosmos_bank(shared_data / "cosmos_hst", tmp_path / "c.h5", 5, 32, 0.05, 1)


def test_open_bank_cosmos_gives_unit_sum_three_band_templates(shared_data, tmp_path):
    build_cosmos_bank(shared_data / "cosmos_hst", tmp_path / "b.h5", 20, 40, 0.03, 3)
    bank = open_bank("cosmos", tmp_path / "b.h5")
    t = bank.pick("task-7")
    assert isinstance(bank, TemplateBank) and isinstance(t, BankTemplate)
    assert t.images.shape == (3, 40, 40) and np.allclose(t.images.sum(axis=(1, 2)), 1.0)
    assert np.array_equal(t.images[0], t.images[2]) and t.native_colors == {}
    assert bank.pick("task-7").template_id == t.template_id
