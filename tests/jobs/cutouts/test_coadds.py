"""Brick reader and stamp cutter: round trip through the written sky, lenstronomy photometry, rejects."""

import shutil
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from dhs_gen.conventions import pixel_centers_arcsec
from dhs_gen.physics.psf import moffat_kernel
from dhs_gen.survey.skysim import GAIN_E_PER_NMGY
from dhs_gen.survey.skysim_scene import SkyConfig
from jobs.cutouts.coadds import WHOLE_READ_AFTER_ROW_FRACTION, coadd_file, cut_stamp, cut_stamp_at, load_brick
from jobs.stages import sky

PS = 0.262
BRICK = "1498p020"          # the first brick written (nearest to RA 150, Dec 2)


def _write(out: Path, cfg: SkyConfig, n_bricks: int = 1) -> Path:
    sky.write_sky(str(out), n_bricks, cfg, seed=11, log=open("/dev/null", "w"))  # noqa: SIM115
    return out


@pytest.fixture(scope="module")
def clean_sky(tmp_path_factory):
    """Noiseless LRGs only: every deviation from the truth is a reader / cutter / renderer error."""
    cfg = SkyConfig(size_pix=600, n_lrg=6, n_field=0, n_star=0, n_bright_star=0, edge_lrg_fraction=0.2,
                    gap_probability=0.0, noise=False)
    return _write(tmp_path_factory.mktemp("clean"), cfg)


@pytest.fixture(scope="module")
def noisy_sky(tmp_path_factory):
    cfg = SkyConfig(size_pix=400, n_lrg=8, n_field=30, n_star=6, n_bright_star=1, edge_lrg_fraction=0.25,
                    gap_probability=0.0)
    return _write(tmp_path_factory.mktemp("noisy"), cfg)


def _parent(out: Path):
    return pq.read_table(out / "parent_sample.parquet").to_pandas()


def _objects(out: Path):
    return pq.read_table(out / "sky_objects.parquet").to_pandas()


def _isolated_lrgs(out: Path, min_sep_pix: float):
    o = _objects(out)
    lrg = o[(o.kind == "lrg") & ~o.near_edge]
    keep = [i for i, r in lrg.iterrows()
            if (np.hypot(o.x_pix - r.x_pix, o.y_pix - r.y_pix) < min_sep_pix).sum() == 1]
    return lrg.loc[keep]


def lenstronomy_stamp(sources, kernel, size):
    """Oracle: PSF-convolved elliptical Sersics rendered by lenstronomy, nanomaggies per pixel.

    ``sources``: (total flux nmgy, r_eff arcsec, n, e1, e2, x, y) with (x, y) in pixels from the
    stamp's central pixel (index ``size // 2``); lenstronomy's own analytic total sets each amplitude.
    """
    from lenstronomy.Data.pixel_grid import PixelGrid
    from lenstronomy.Data.psf import PSF
    from lenstronomy.ImSim.image_model import ImageModel
    from lenstronomy.LightModel.light_model import LightModel

    h = size // 2
    grid = PixelGrid(nx=size, ny=size, transform_pix2angle=np.eye(2) * PS, ra_at_xy_0=-h * PS, dec_at_xy_0=-h * PS)
    light = LightModel(["SERSIC_ELLIPSE"] * len(sources))
    kw = [{"amp": 1.0, "R_sersic": r, "n_sersic": n, "e1": e1, "e2": e2, "center_x": x * PS, "center_y": y * PS}
          for _, r, n, e1, e2, x, y in sources]
    for k, total in zip(kw, light.total_flux(kw), strict=True):
        k["amp"] = sources[kw.index(k)][0] / total
    model = ImageModel(grid, PSF(psf_type="PIXEL", kernel_point_source=kernel), lens_light_model_class=light,
                       kwargs_numerics={"supersampling_factor": 9})
    return model.image(kwargs_lens_light=kw)


def _aperture(size, dx, dy, radius_pix):
    yy, xx = np.mgrid[0:size, 0:size]
    return np.hypot(xx - size // 2 - dx, yy - size // 2 - dy) < radius_pix


def test_brightest_pixel_is_the_centre_pixel(clean_sky):
    brick = load_brick(str(clean_sky / "coadd"), BRICK)
    assert brick.problems == {} and brick.shape == (600, 600)
    checked = 0
    for r in _parent(clean_sky).itertuples():
        for size in (64, 65):
            c = cut_stamp(brick, r.RA, r.DEC, size)
            if not c.ok:
                continue
            assert c.image.shape == c.invvar.shape == (3, size, size) and c.maskbits.shape == (size, size)
            for band in range(3):
                assert np.unravel_index(np.argmax(c.image[band]), (size, size)) == (size // 2, size // 2)
            checked += 1
    assert checked >= 8


def test_tile_section_reads_give_the_whole_read_stamps(noisy_sky):
    """4c reads bricks by tile sections: every stamp field equals the whole-file read's, edges and rejects included."""
    whole = load_brick(str(noisy_sky / "coadd"), BRICK)
    tiled = load_brick(str(noisy_sky / "coadd"), BRICK, tiles=True)
    assert tiled.problems == whole.problems == {} and tiled.shape == whole.shape
    rng = np.random.default_rng(0)
    positions = [(x, y) for x, y in rng.uniform(-20, 620, (200, 2))] + [(31.6, 31.6), (567.4, 567.4), (0.2, 300.0)]
    n_ok = 0
    for x, y in positions:
        a, b = cut_stamp_at(whole, x, y, 64), cut_stamp_at(tiled, x, y, 64)
        assert (a.ok, a.reject_reason, a.psf_fwhm_arcsec, a.median_invvar, a.psfdepth_nmgy) == \
            (b.ok, b.reject_reason, b.psf_fwhm_arcsec, b.median_invvar, b.psfdepth_nmgy)
        if a.ok:
            n_ok += 1
            for name in ("image", "invvar", "maskbits"):
                got, want = getattr(b, name), getattr(a, name)
                assert got.dtype == want.dtype and np.array_equal(got, want)
    assert n_ok >= 40


def test_aperture_flux_matches_the_truth_through_lenstronomy(clean_sky):
    brick = load_brick(str(clean_sky / "coadd"), BRICK)
    parent = _parent(clean_sky)
    lrgs = _objects(clean_sky).query("kind == 'lrg'")
    checked = 0
    for r in lrgs.itertuples():
        c = cut_stamp(brick, r.ra, r.dec, 101)
        if not c.ok:
            continue
        # the oracle holds every LRG of the brick (neighbours' wings fall in the aperture too), with
        # the fluxes of the written parent sample (matched by position) as their totals
        idx = [int(np.argmin(np.hypot(parent.RA - o.ra, parent.DEC - o.dec))) for o in lrgs.itertuples()]
        inside = _aperture(101, c.dx_pix, c.dy_pix, 40)
        for bi, band in enumerate("grz"):
            sources = [(float(parent[f"FLUX_{band.upper()}"].iloc[i]), o.r_eff_arcsec, 4.0, o.e1, o.e2,
                        o.x_pix - c.x0 - 50, o.y_pix - c.y0 - 50) for i, o in zip(idx, lrgs.itertuples(), strict=True)]
            expected = lenstronomy_stamp(sources, moffat_kernel(c.psf_fwhm_arcsec[bi], PS, beta=3.5), 101)
            # noiseless: pixel integration of the n=4 cusp (~0.1 % here and in the oracle), the 0.005"
            # FWHM grid of skysim's kernels and its truncation of profiles at 25 r_eff (< 0.6 % of the
            # light, mostly outside the aperture) are all that differ from the oracle
            assert c.image[bi][inside].sum() == pytest.approx(expected[inside].sum(), rel=5e-3)
        checked += 1
    assert checked >= 4


def test_aperture_flux_in_noise_is_within_its_error(noisy_sky):
    brick = load_brick(str(noisy_sky / "coadd"), BRICK)
    lrgs = _isolated_lrgs(noisy_sky, 40)
    assert len(lrgs) >= 2
    for r in lrgs.itertuples():
        c = cut_stamp(brick, r.ra, r.dec, 65)
        kernel = moffat_kernel(c.psf_fwhm_arcsec[1], PS, beta=3.5)
        model = lenstronomy_stamp([(r.flux_r, r.r_eff_arcsec, 4.0, r.e1, r.e2, c.dx_pix, c.dy_pix)], kernel, 65)
        inside = _aperture(65, c.dx_pix, c.dy_pix, 12)
        expected = model[inside].sum()
        # sky variance from the stamp's own invvar plus the source's shot noise (skysim's gain)
        sigma = np.sqrt((1 / c.invvar[1][inside]).sum() + expected / GAIN_E_PER_NMGY["r"])
        assert abs(c.image[1][inside].sum() - expected) < 5 * sigma + 5e-3 * expected


def test_wcs_position_matches_astropy_and_the_truth(noisy_sky):
    brick = load_brick(str(noisy_sky / "coadd"), BRICK)
    header = fits.getheader(coadd_file(str(noisy_sky / "coadd"), BRICK, "image", "r"), 1)
    wcs = WCS(header)
    assert brick.wcs.pixel_shape == wcs.pixel_shape == brick.shape[::-1]   # the image's axes, not its table's
    for r in _objects(noisy_sky).query("kind == 'lrg'").itertuples():
        c = cut_stamp(brick, r.ra, r.dec, 64)
        x, y = wcs.all_world2pix([[r.ra, r.dec]], 0)[0]
        assert (c.x_pix, c.y_pix) == pytest.approx((x, y), abs=1e-8)
        assert (c.x_pix, c.y_pix) == pytest.approx((r.x_pix, r.y_pix), abs=1e-6)
        assert -0.5 <= c.dx_pix <= 0.5 and -0.5 <= c.dy_pix <= 0.5
        assert (c.x0 + 32 + c.dx_pix, c.y0 + 32 + c.dy_pix) == pytest.approx((x, y), abs=1e-9)
        if c.ok:   # the offset in the stamp grid of dhs_gen.conventions, from its own pixel centres
            centre = pixel_centers_arcsec(64, PS)[32]
            assert c.lens_offset_arcsec == pytest.approx((centre + c.dx_pix * PS, centre + c.dy_pix * PS), abs=1e-6)
            assert c.psf_fwhm_arcsec[1] == brick.psfsize["r"][c.y0 + 32, c.x0 + 32]
            assert np.all(np.isfinite(c.psfdepth_nmgy)) and all(m > 0 for m in c.median_invvar)


def test_off_edge_and_far_positions_are_rejected(noisy_sky):
    brick = load_brick(str(noisy_sky / "coadd"), BRICK)
    edge = _objects(noisy_sky).query("near_edge")
    assert len(edge) == 2
    for r in edge.itertuples():
        c = cut_stamp(brick, r.ra, r.dec, 64)
        assert not c.ok and c.reject_reason == "off_brick_edge" and c.image is None
    assert cut_stamp(brick, 10.0, -40.0, 64).reject_reason == "off_brick_edge"   # other side of the sky


@pytest.fixture
def broken_sky(noisy_sky, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(noisy_sky, copy)
    return copy


def _lrgs_ok(out):
    lrg = _objects(out).query("kind == 'lrg' and not near_edge")
    return list(zip(lrg.ra, lrg.dec, lrg.x_pix, lrg.y_pix, strict=True))


def test_missing_band_file(broken_sky):
    root = str(broken_sky / "coadd")
    Path(coadd_file(root, BRICK, "image", "r")).unlink()
    brick = load_brick(root, BRICK)
    assert brick.problems == {"r": f"missing file legacysurvey-{BRICK}-image-r.fits.fz"}
    assert {cut_stamp(brick, ra, dec).reject_reason for ra, dec, _, _ in _lrgs_ok(broken_sky)} == {"missing_band:r"}


def test_corrupt_band_file(broken_sky):
    root = str(broken_sky / "coadd")
    path = Path(coadd_file(root, BRICK, "invvar", "g"))
    path.write_bytes(path.read_bytes()[:20000])                        # truncated mid-data
    brick = load_brick(root, BRICK)
    assert list(brick.problems) == ["g"] and brick.problems["g"].startswith("corrupt FITS: ")
    ra, dec, _, _ = _lrgs_ok(broken_sky)[0]
    assert cut_stamp(brick, ra, dec).reject_reason == "corrupt_fits:g"


def test_missing_and_corrupt_maskbits_and_missing_brick(broken_sky):
    root = str(broken_sky / "coadd")
    ra, dec, _, _ = _lrgs_ok(broken_sky)[0]
    path = Path(coadd_file(root, BRICK, "maskbits"))
    path.write_bytes(b"SIMPLE  = this is not a FITS file")
    assert cut_stamp(load_brick(root, BRICK), ra, dec).reject_reason == "corrupt_fits:maskbits"
    path.unlink()
    assert cut_stamp(load_brick(root, BRICK), ra, dec).reject_reason == "missing_maskbits"
    absent = load_brick(root, "0001m040")                     # no file of it at all: the brick is absent
    assert set(absent.problems) == {"brick"}
    assert cut_stamp(absent, 0.1, -4.0).reject_reason == "missing_brick"


def _rewrite(path: Path, edit) -> None:
    data, header = fits.getdata(path, 1), fits.getheader(path, 1)
    edit(data)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header)]).writeto(path, overwrite=True)


def test_nan_pixels_and_zero_coverage(broken_sky):
    root = str(broken_sky / "coadd")
    (ra1, dec1, x1, y1), (ra2, dec2, x2, y2), (ra3, dec3, _, _) = _lrgs_ok(broken_sky)[:3]

    def add_nan(d):
        d[int(y1) + 5, int(x1) - 7] = np.nan

    def no_coverage(d):
        d[int(round(y2)) - 2: int(round(y2)) + 3, int(round(x2)) - 2: int(round(x2)) + 3] = 0.0

    _rewrite(Path(coadd_file(root, BRICK, "image", "z")), add_nan)
    _rewrite(Path(coadd_file(root, BRICK, "invvar", "r")), no_coverage)
    brick = load_brick(root, BRICK)
    assert brick.problems == {}
    assert cut_stamp(brick, ra1, dec1).reject_reason == "nonfinite_pixels"
    assert cut_stamp(brick, ra2, dec2).reject_reason == "zero_invvar"
    third = cut_stamp(brick, ra3, dec3)
    if np.hypot(*(np.array([third.x_pix, third.y_pix]) - [x1, y1])) > 60:
        assert third.ok and third.reject_reason is None


def test_load_brick_reads_s3_like_local(tmp_path, s3_env):
    from jobs.runtime import storage

    cfg = SkyConfig(size_pix=200, n_lrg=2, n_field=5, n_star=2, n_bright_star=0)
    local = _write(tmp_path / "local", cfg)
    uri = f"s3://{s3_env.bucket}/sky-{uuid.uuid4().hex[:8]}"
    storage.ensure_bucket(uri)
    sky.write_sky(uri, 1, cfg, seed=11, log=open("/dev/null", "w"))  # noqa: SIM115
    remote = load_brick(storage.join(uri, "coadd"), BRICK)
    here = load_brick(str(local / "coadd"), BRICK)
    assert remote.problems == {} and np.array_equal(remote.maskbits, here.maskbits)
    for b in "grz":
        assert np.array_equal(remote.image[b], here.image[b]) and np.array_equal(remote.invvar[b], here.invvar[b])
    Path(coadd_file(str(local / "coadd"), BRICK, "psfsize", "z")).unlink()
    storage.delete_file(coadd_file(storage.join(uri, "coadd"), BRICK, "psfsize", "z"))
    assert load_brick(storage.join(uri, "coadd"), BRICK).problems == load_brick(str(local / "coadd"), BRICK).problems


def test_a_coadd_root_with_brackets_in_its_path_reads_like_any_other(noisy_sky, tmp_path):
    """cfitsio reads ``[...]`` in a file name as an extension selector: such paths are opened through a link."""
    odd = tmp_path / "run[1] (copy)" / "coadd"
    shutil.copytree(noisy_sky / "coadd", odd)
    here, there = load_brick(str(noisy_sky / "coadd"), BRICK), load_brick(str(odd), BRICK)
    assert there.problems == {} and np.array_equal(there.maskbits, here.maskbits)
    assert all(np.array_equal(there.image[b], here.image[b]) for b in "grz")


def test_tile_reader_refuses_keys_it_cannot_read_as_a_section(noisy_sky):
    brick = load_brick(str(noisy_sky / "coadd"), BRICK, tiles=True, n_stamps=1, stamp_size_pix=64)
    reader = brick.image["r"]
    assert reader[10:12, 5:9].shape == (2, 4) and np.isfinite(reader[3, 4])
    for key in ((slice(10, 2), slice(0, 4)), (slice(0, 8, 2), slice(0, 4)), (3, slice(0, 4))):
        with pytest.raises((ValueError, TypeError)):
            reader[key]


def test_flipped_bytes_that_still_decode_fail_the_files_checksum(broken_sky):
    root = str(broken_sky / "coadd")
    path = Path(coadd_file(root, BRICK, "image", "r"))
    raw = bytearray(path.read_bytes())
    assert raw.count(b"CHECKSUM=") == 2 and raw.count(b"DATASUM =") == 2   # dhs sky writes them, as DR10 does
    raw[len(raw) // 2] ^= 0x04                            # one bit in the compressed pixel heap
    path.write_bytes(bytes(raw))
    brick = load_brick(root, BRICK)
    assert brick.problems["r"].startswith("corrupt FITS: ValueError: checksum mismatch")
    assert {cut_stamp(brick, ra, dec).reject_reason for ra, dec, _, _ in _lrgs_ok(broken_sky)} == \
        {"checksum_mismatch:r"}


def test_a_damaged_tile_rejects_the_stamps_that_touch_it(tmp_path):
    """A file without checksums, damaged past its first tiles: read by sections, only the stamps over the
    damaged rows are rejected, as corrupt_fits:<band>; the others are cut as usual."""
    from astropy.io import fits

    rng = np.random.default_rng(0)
    root, brick_name = str(tmp_path / "coadd"), "1500p020"
    for band in "grz":
        for kind, data in (("image", rng.normal(0, 0.01, (400, 400))), ("invvar", np.full((400, 400), 1e4)),
                           ("psfsize", np.full((400, 400), 1.2))):
            path = Path(coadd_file(root, brick_name, kind, band))
            path.parent.mkdir(parents=True, exist_ok=True)
            hdu = fits.CompImageHDU(data=data.astype(np.float32), compression_type="RICE_1", quantize_level=16.0)
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    mask = fits.CompImageHDU(data=np.zeros((400, 400), np.int32), compression_type="RICE_1")
    fits.HDUList([fits.PrimaryHDU(), mask]).writeto(coadd_file(root, brick_name, "maskbits"))
    damaged = Path(coadd_file(root, brick_name, "image", "r"))
    raw = bytearray(damaged.read_bytes())
    end = len(raw) - 2880            # the last FITS block may be padding: damage the heap's last tiles
    for i in range(end - 20000, end, 7):
        raw[i] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    brick = load_brick(root, brick_name, tiles=True, n_stamps=1, stamp_size_pix=64)   # sparse: sections
    assert brick.problems == {}
    # enough rounds for the requests to pass WHOLE_READ_AFTER_ROW_FRACTION of the rows: the whole read is
    # tried, fails, and sections go on
    for _ in range(int(WHOLE_READ_AFTER_ROW_FRACTION * 400 / 128) + 2):
        assert cut_stamp_at(brick, 200.0, 40.0, 64).ok                   # rows 8-71: intact tiles
        late = cut_stamp_at(brick, 200.0, 360.0, 64)                      # rows 328-391: damaged
        assert not late.ok and late.reject_reason == "corrupt_fits:r"
    assert brick.image["r"]._sections_only   # the whole read was tried and failed
    dense = load_brick(root, brick_name, tiles=True, n_stamps=40, stamp_size_pix=64)   # whole read at load
    assert "corrupt FITS" in dense.problems["r"] and cut_stamp_at(dense, 200.0, 40.0, 64).reject_reason == "corrupt_fits:r"
