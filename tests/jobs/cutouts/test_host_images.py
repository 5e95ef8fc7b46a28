"""Host images from real cutout files as they are: units against the files' own headers, PSFs, noise, flux."""

import math

import numpy as np
import pytest
from astropy.io import fits

from dhs_gen.imaging.measure import border_pixels, robust_sigma
from dhs_gen.physics.psf import gaussian_kernel, moffat_kernel
from jobs.cutouts.host_images import (
    Declared,
    host_stamp,
    match_seeing,
    measure_psf_fwhm,
    read_band_stacks,
    read_folder,
    read_npz,
)

PIX = 0.262
DR9 = "decals/dr9_cutout_invvar/cutout_59.1067_-30.4848.fits"


@pytest.mark.parametrize("fwhm", [0.9, 1.3, 1.8])
def test_psf_fwhm_measured_on_known_gaussian_and_moffat_kernels(fwhm):
    assert measure_psf_fwhm(gaussian_kernel(fwhm, PIX, size=41), PIX) == pytest.approx(fwhm, rel=0.02)
    assert measure_psf_fwhm(moffat_kernel(fwhm, PIX, beta=3.5, size=41), PIX) == pytest.approx(fwhm, rel=0.02)


def test_dr9_viewer_cutout_units_and_psf_from_the_files_headers(shared_data):
    hosts, failed = read_folder(str(shared_data / "decals" / "dr9_cutout_invvar"), Declared())
    assert failed == [] and len(hosts) == 1
    host = hosts[0]
    with fits.open(shared_data / DR9) as hdul:
        by = {(h.header.get("IMAGETYP"), h.header.get("BAND")): h for h in hdul[1:]}
        assert hdul[0].header["SURVEY"] == "DECaLS"
        # pixel scale from the CD matrix: 7.2778e-5 deg = 0.262"
        assert host.pixscale_arcsec == pytest.approx(abs(by[("image", "g")].header["CD1_1"]) * 3600, rel=1e-6)
        for i, b in enumerate("grz"):   # nanomaggies and 1/nanomaggies^2 as stored, per BAND keyword
            np.testing.assert_array_equal(host.image[i], by[("image", b)].data)
            np.testing.assert_array_equal(host.invvar[i], by[("invvar", b)].data)
    # the PSF file beside it (copsf_*): DECam seeing, g broadest
    assert host.psf_source.startswith("measured on copsf_59.1067_-30.4848.fits")
    assert all(0.7 < f < 2.0 for f in host.psf_fwhm_arcsec) and host.psf_fwhm_arcsec[0] >= host.psf_fwhm_arcsec[2]
    # the invvar is the image's real noise: its sigma matches the MAD of the frame within 30 %
    for i in range(3):
        frame_sigma = robust_sigma(border_pixels(host.image[i], 8))
        assert 1 / math.sqrt(np.median(host.invvar[i])) == pytest.approx(frame_sigma, rel=0.3)


def test_dr9_stamp_is_cut_like_a_brick_around_the_wcs_centre(shared_data):
    host = read_folder(str(shared_data / "decals" / "dr9_cutout_invvar"), Declared())[0][0]
    stamp = host_stamp(host, 64, (1.3, 1.2, 1.1))
    assert stamp.ok and stamp.image.shape == (3, 64, 64)
    # 256 px, even: the WCS centre (127.5) lies between pixels, half a pixel from the central one
    assert (abs(stamp.dx_pix), abs(stamp.dy_pix)) == pytest.approx((0.5, 0.5), abs=1e-6)
    assert {stamp.x0, stamp.y0} <= {95, 96}
    cut = (slice(None), slice(stamp.y0, stamp.y0 + 64), slice(stamp.x0, stamp.x0 + 64))
    np.testing.assert_array_equal(stamp.image, host.image[cut].astype(np.float32))
    np.testing.assert_array_equal(stamp.invvar, host.invvar[cut].astype(np.float32))
    assert stamp.psf_fwhm_arcsec == pytest.approx((1.3, 1.2, 1.1))


def test_dr10_npz_is_cropped_exactly_without_resampling(shared_data):
    path = sorted((shared_data / "dr10" / "cutouts").glob("*.npz"))[0]
    host = read_npz(str(path))
    with np.load(path, allow_pickle=False) as d:
        cube = np.transpose(d["cutout"], (2, 0, 1))
        assert (host.ra, host.dec) == (float(d["meta_ra"]), float(d["meta_dec"]))
    stamp = host_stamp(host, 64, (1.5, 1.3, 1.2))
    assert stamp.ok and (stamp.dx_pix, stamp.dy_pix) == (0.0, 0.0)   # 101 px: the host on pixel 50
    np.testing.assert_array_equal(stamp.image, cube[:, 18:82, 18:82])
    # no invvar in the file: estimated from the frame, near the file's own meta_mad_r (MAD, not sigma)
    with np.load(path, allow_pickle=False) as d:
        assert 1 / math.sqrt(stamp.invvar[1, 0, 0]) == pytest.approx(1.4826 * float(d["meta_mad_r"]), rel=0.5)


def test_des_counts_at_zeropoint_30_conserve_flux_through_the_resampling(shared_data):
    folder = shared_data / "des" / "lrg_hosts"
    hosts = read_band_stacks(str(folder), Declared(zeropoint=30.0, pixscale_arcsec=0.263))
    assert len(hosts) == 46
    raw = fits.getdata(folder / "r.fits")[0].astype(float)
    np.testing.assert_allclose(hosts[0].image[1], raw * 1e-3)     # 10**((22.5 - 30) / 2.5) = 1e-3
    # area-weighted resampling keeps the flux of the footprint: each 0.263" pixel counts with the
    # fraction of it inside the 90 x 0.262" stamp (centres aligned), computed here pixel by pixel
    stamp = host_stamp(hosts[0], 90, (1.3, 1.1, 1.0))
    assert stamp.ok
    half = 45 * 0.262
    edges = (np.arange(92) - 45.5) * 0.263
    frac = np.clip(np.minimum(edges[1:], half) - np.maximum(edges[:-1], -half), 0, None) / 0.263
    assert stamp.image[1].sum(dtype=float) == pytest.approx((raw * np.outer(frac, frac)).sum() * 1e-3, rel=1e-5)
    # DR10-like sky noise in r (DES is a little deeper): 0.001 - 0.004 nanomaggies per pixel
    assert 0.001 < 1 / math.sqrt(stamp.invvar[1, 0, 0]) < 0.004


def test_des_without_a_declared_pixel_scale_is_refused(shared_data):
    with pytest.raises(ValueError, match="pixscale_arcsec"):
        read_band_stacks(str(shared_data / "des" / "lrg_hosts"), Declared(zeropoint=30.0))


def test_decals_cubes_resampled_with_the_wcs_and_bad_coverage_rejected(shared_data):
    hosts, failed = read_folder(str(shared_data / "decals" / "zooniverse_examples"), Declared())
    assert failed == [] and len(hosts) == 6
    by_name = {h.name: h for h in hosts}
    bad = host_stamp(by_name["example_bad_pix"], 64, (1.5, 1.3, 1.2))
    assert not bad.ok and bad.reject_reason.startswith("missing_coverage:")
    good = [host_stamp(h, 64, (1.5, 1.3, 1.2)) for n, h in by_name.items() if n != "example_bad_pix"]
    assert all(s.ok for s in good)
    # surface brightness per 0.262" pixel area -> flux per 0.262" pixel: the frame noise is DR10's
    r_sigma = [1 / math.sqrt(s.invvar[1, 0, 0]) for s in good]
    assert all(0.001 < s < 0.008 for s in r_sigma), r_sigma   # real DR10 cutouts: 0.0027


def test_hsc_declared_zeropoint_and_seeing_matched_to_dr10(shared_data):
    declared = Declared(zeropoint=27.0, pixscale_arcsec=0.168, bands="grizy", match_fwhm_arcsec=(1.5, 1.3, 1.2))
    hosts, _ = read_folder(str(shared_data / "hsc"), declared)
    host = next(h for h in hosts if h.name == "hsc_ra150.24071_dec2.06514")
    with fits.open(shared_data / "hsc" / "hsc_ra150.24071_dec2.06514.fits") as hdul:
        np.testing.assert_allclose(host.image[1], hdul[0].data[1] * 10 ** ((22.5 - 27.0) / 2.5))
    assert host.pixscale_arcsec == pytest.approx(0.168, rel=1e-6) and all(0.4 < f < 1.0 for f in host.psf_fwhm_arcsec)   # HSC seeing
    matched, note = match_seeing(host.image, host.psf_fwhm_arcsec, (1.5, 1.3, 1.2), host.pixscale_arcsec,
                                 host.psf_images)
    assert "Gaussian FWHM" in note and "solved on the PSF image" in note
    assert matched.sum(axis=(1, 2)) == pytest.approx(host.image.sum(axis=(1, 2)), rel=1e-9)   # flux kept
    # the PSF file's r plane, convolved by the same kernel, has the target FWHM (wings included)
    psf = fits.getdata(shared_data / "hsc" / "psf_hsc_ra150.24071_dec2.06514.fits")[1].astype(float)
    conv, _ = match_seeing(np.stack([psf] * 3), (host.psf_fwhm_arcsec[1],) * 3, (1.3,) * 3, 0.168,
                           {b: psf for b in "grz"})
    assert measure_psf_fwhm(conv[1], 0.168) == pytest.approx(1.3, rel=1e-3)
    # in quadrature (no PSF image) the HSC core with its wings would come out broader than asked
    quad, _ = match_seeing(np.stack([psf] * 3), (host.psf_fwhm_arcsec[1],) * 3, (1.3,) * 3, 0.168)
    assert measure_psf_fwhm(quad[1], 0.168) > 1.3
