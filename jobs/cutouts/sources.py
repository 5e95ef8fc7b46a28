"""Cutout sources for anchor sets: where the pixels of a catalog position come from.

Registry :data:`CUTOUT_SOURCES` (spec ``kind:arg``, :func:`make_cutout_source`): ``local`` (a folder
of DR10 ``.npz`` cutouts or FITS with a TAN WCS, matched by position), ``legacysurvey`` (the public
cutout service over HTTP, with retries) and ``coadd`` (DR10-layout coadd bricks via ``jobs.cutouts.coadds``).
Each source has ``fetch(ra, dec, size_pix) -> Cutout`` (deg, deg, pixels) and raises
:class:`jobs.cutouts.cutout.CutoutUnavailable` when a position has no usable pixels; the units of each
input are described (and converted) in :mod:`jobs.anchors.anchor_set`.
"""

from __future__ import annotations

import glob
import os
import time
import urllib.error
import urllib.request

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, check_choice, check_range
from jobs.cutouts.cutout import BANDS, Cutout, CutoutUnavailable, standardize
from jobs.cutouts.host_images import Declared, HostImage, read_band_stacks, read_fits_host, read_npz

DEFAULT_SERVICE_URL = ("https://www.legacysurvey.org/viewer/cutout.fits?ra={ra}&dec={dec}&layer=ls-dr10"
                       f"&pixscale={PIXSCALE_DR10_ARCSEC}&size={{size}}&bands=grz")


def standard_cutout(host: HostImage, size_pix: int, where: str) -> Cutout:
    """A host image read by :mod:`jobs.cutouts.host_images` (any layout) as an anchor cutout: g, r, z
    nanomaggies per 0.262" pixel, ``size_pix`` square, centred on the cutout (:func:`standardize`)."""
    return standardize(host.image, host.pixscale_arcsec, BANDS, size_pix, "; ".join([where, *host.provenance]),
                       invvar=host.invvar)


class LocalCutoutFolder:
    """Cutouts in a folder (``*.npz`` DR10 style or ``*.fits[.gz]`` with a WCS), matched by position.

    Parameters
    ----------
    root : str
        Folder (local path).
    match_radius_arcsec : float
        A catalog row takes the nearest cutout centre within this radius.
    fits_surface_brightness : bool
        FITS values are per 0.262" pixel area (Legacy Surveys viewer products; module docstring).
    """

    def __init__(self, root: str, match_radius_arcsec: float = 2.0, fits_surface_brightness: bool = True):
        from astropy.wcs import WCS

        from jobs.catalogs.crossmatch import open_fits

        self.root, self.radius = str(root), check_range("match_radius_arcsec", match_radius_arcsec, 0.0, 3600.0)
        self.fits_sb = bool(fits_surface_brightness)
        self.paths, ra, dec = [], [], []
        for path in sorted(glob.glob(os.path.join(self.root, "*.npz"))):
            with np.load(path, allow_pickle=False) as d:
                if "cutout" in d.files and "meta_ra" in d.files:
                    self.paths.append(path), ra.append(float(d["meta_ra"])), dec.append(float(d["meta_dec"]))
        for path in sorted(glob.glob(os.path.join(self.root, "*.fits")) + glob.glob(os.path.join(self.root, "*.fits.gz"))):
            with open_fits(path) as hdul:
                head = hdul[0].header
                if "CTYPE1" not in head:
                    continue
                w = WCS(head, naxis=2)
                c = w.pixel_to_world_values((head["NAXIS1"] - 1) / 2.0, (head["NAXIS2"] - 1) / 2.0)
                self.paths.append(path), ra.append(float(c[0]) % 360.0), dec.append(float(c[1]))
        self.ra, self.dec = np.array(ra), np.array(dec)

    def fetch(self, ra: float, dec: float, size_pix: int) -> Cutout:
        from jobs.catalogs.crossmatch import nearest_within

        idx, sep = nearest_within([ra], [dec], self.ra, self.dec, self.radius)
        if idx[0] < 0:
            raise CutoutUnavailable("no_cutout", f"none within {self.radius}\" in {self.root}")
        path = self.paths[idx[0]]
        return self.read(path, size_pix, f"{os.path.basename(path)} ({sep[0]:.2f}\" from the position)")

    def read(self, path: str, size_pix: int, where: str | None = None) -> Cutout:
        """The standardised cutout of one file of the folder."""
        from jobs.catalogs.crossmatch import open_fits

        where = where or os.path.basename(path)
        if path.endswith(".npz"):
            return standard_cutout(read_npz(path), size_pix, where)
        with open_fits(path) as hdul:
            return standard_cutout(read_fits_host(path, hdul, Declared(), self.fits_sb), size_pix, where)


class LegacySurveyCutoutService:
    """The public Legacy Surveys cutout service (FITS over HTTP), with retries on network/5xx errors.

    Parameters
    ----------
    url_template : str
        With ``{ra}``, ``{dec}`` (deg) and ``{size}`` (pixels) fields.
    retries : int
        Extra attempts after the first on a URLError, HTTP 429 or 5xx.
    backoff_s : float
        Seconds before retry k (doubling each time).
    timeout_s : float
        Per-request timeout, seconds.
    """

    def __init__(self, url_template: str = DEFAULT_SERVICE_URL, retries: int = 3, backoff_s: float = 1.0,
                 timeout_s: float = 30.0):
        for key in ("{ra}", "{dec}", "{size}"):
            if key not in url_template:
                raise InvalidValueError("url_template", url_template, f"must contain {key}")
        self.url_template, self.retries = url_template, int(check_range("retries", retries, 0, 20))
        self.backoff_s, self.timeout_s = float(backoff_s), float(timeout_s)

    def _get(self, url: str) -> bytes:
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(url, timeout=self.timeout_s) as resp:  # noqa: S310 - http(s) template
                    return resp.read()
            except urllib.error.HTTPError as err:
                if err.code != 429 and err.code < 500 or attempt == self.retries:
                    raise CutoutUnavailable("http_error", f"{err.code} for {url}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
                if attempt == self.retries:
                    raise CutoutUnavailable("network_error", f"{err} for {url}") from None
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")

    def fetch_bytes(self, ra: float, dec: float, size_pix: int) -> bytes:
        """The service's FITS bytes for one position (gzip undone); CutoutUnavailable after the retries."""
        import gzip

        url = self.url_template.format(ra=f"{ra:.7f}", dec=f"{dec:.7f}", size=int(size_pix))
        data = self._get(url)
        return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data

    def fetch(self, ra: float, dec: float, size_pix: int) -> Cutout:
        import io

        from astropy.io import fits

        url = self.url_template.format(ra=f"{ra:.7f}", dec=f"{dec:.7f}", size=int(size_pix))
        data = self.fetch_bytes(ra, dec, size_pix)
        try:
            with fits.open(io.BytesIO(data)) as hdul:
                # the service is asked for 0.262"/pix: that scale stands when its file has no usable WCS
                host = read_fits_host(f"legacysurvey {url}", hdul, Declared(pixscale_arcsec=PIXSCALE_DR10_ARCSEC),
                                      surface_brightness=True)
            return standard_cutout(host, size_pix, f"legacysurvey {url}")
        except OSError as err:
            raise CutoutUnavailable("corrupt_fits", f"{err} from {url}") from None


class CoaddCacheCutouts:
    """Stamps cut from DR10-layout coadd bricks (``jobs.cutouts.coadds``); the last brick stays in memory."""

    def __init__(self, coadd_root: str):
        self.root, self._brick = str(coadd_root), None

    def fetch(self, ra: float, dec: float, size_pix: int) -> Cutout:
        from dhs_gen.survey.bricks import bricknames_for
        from jobs.cutouts.coadds import cut_stamp, load_brick

        name = str(bricknames_for(ra, dec))
        if self._brick is None or self._brick.brickname != name:
            self._brick = load_brick(self.root, name, BANDS, tiles=True)
        stamp = cut_stamp(self._brick, ra, dec, size_pix)
        if not stamp.ok:
            raise CutoutUnavailable(stamp.reject_reason or "coadd_reject", f"brick {name}")
        src = f"coadd {self.root} brick {name} stamp corner ({stamp.x0}, {stamp.y0})"
        pix = self._brick.pixscale_arcsec or PIXSCALE_DR10_ARCSEC
        return standardize(stamp.image, pix, BANDS, size_pix, src, invvar=stamp.invvar)


CUTOUT_SOURCES = {"local": LocalCutoutFolder, "legacysurvey": LegacySurveyCutoutService, "coadd": CoaddCacheCutouts}


def make_cutout_source(spec: str):
    """``local:DIR`` | ``coadd:ROOT`` | ``legacysurvey[:URL_TEMPLATE]`` -> a cutout source."""
    kind, _, arg = str(spec).partition(":")
    cls = CUTOUT_SOURCES[check_choice("cutouts kind", kind, CUTOUT_SOURCES)]
    return cls(arg) if arg else cls()


#: What the DES LRG-host stacks do not say themselves: counts at zeropoint 30, 0.263"/pix
DES_DECLARED = Declared(zeropoint=30.0, pixscale_arcsec=0.263)


def des_lrg_host_cutouts(des_dir: str, size_pix: int) -> list[tuple[dict, Cutout]]:
    """The 46 real DES LRG hosts (no lensing): (metadata, cutout) per galaxy, label 0, class other.

    Read by :func:`jobs.cutouts.host_images.read_band_stacks` (the hosts' reader); ``map.txt``, when
    there, adds each galaxy's SDSS velocity dispersion to the provenance.
    """
    sigma_path = os.path.join(des_dir, "map.txt")
    sigma = np.loadtxt(sigma_path, skiprows=1)[:, 1] if os.path.exists(sigma_path) else None
    out = []
    for i, host in enumerate(read_band_stacks(des_dir, DES_DECLARED)):
        sv = "" if sigma is None else f", SDSS sigma_v {sigma[i]:.0f} km/s"
        cut = standard_cutout(host, size_pix, f"DES coadd LRG host #{i}{sv} (deeplenstronomy)")
        meta = {"name": f"DES_LRG_host_{i:02d}", "ra": None, "dec": None, "class": "other", "grade": None,
                "source_catalog": "des_lrg_hosts", "brickname": None}
        out.append((meta, cut))
    return out
