"""Sources of COSMOS galaxy stamps and the HDF5 bank writer, for :mod:`dhs_gen.sources.cosmos`.

Readers return ``(raw image, pixscale arcsec/pix, metadata dict)`` per row: a GalSim
``real_galaxy_catalog`` directory as distributed (:class:`GalSimCatalog`, astropy alone), the
HDF5 bank :func:`dhs_gen.sources.cosmos.build_cosmos_bank` writes (:class:`HDF5Bank`, h5py imported
lazily) and procedural stand-ins for tests (:class:`SyntheticBank`). :func:`_write_bank`
measures, cuts (:func:`_quality_cut`), resamples and writes such a bank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sep
from astropy.io import fits

from dhs_gen.errors import InvalidValueError, check_choice, check_range
from dhs_gen.imaging.measure import (
    border_pixels,
    clumpiness,
    flux_weighted_centroid,
    half_light_radius,
    robust_sigma,
)
from dhs_gen.imaging.resample import resample_to_pixscale
from dhs_gen.utils import rng_for


@dataclass(frozen=True)
class COSMOSSource:
    """One real galaxy: background-subtracted image and its measurements.

    Attributes
    ----------
    image : ndarray (H, W) float64, read-only
        Flux per pixel in the catalog's image unit (ACS: counts/s), border median subtracted,
        non-finite pixels set to 0 (``n_nonfinite`` counts them).
    pixscale : float, arcsec per pixel.
    half_light_radius : float, arcsec (growth curve, see module docstring).
    clumpiness : float in [0, 1] (NaN if unmeasurable).
    catalog_id : int, the catalog IDENT.
    flux : float, total of ``image`` (image unit).
    flux_radius_catalog : float, arcsec (catalog ``flux_radius`` x catalog pixel scale) or NaN.
    mag : float, catalog MAG (AB) or NaN.
    band : str, e.g. "F814W" ("" when unknown).
    index : int, position in the loader.
    n_nonfinite : int, NaN/inf pixels replaced by 0.
    """

    image: np.ndarray = field(repr=False)
    pixscale: float
    half_light_radius: float
    clumpiness: float
    catalog_id: int
    flux: float
    flux_radius_catalog: float = math.nan
    mag: float = math.nan
    band: str = ""
    index: int = -1
    n_nonfinite: int = 0


def prepare_image(raw) -> tuple[np.ndarray, int]:
    """float64 copy with non-finite pixels set to 0 and the border median subtracted; (image, n_nonfinite)."""
    img = np.array(raw, dtype=np.float64)
    bad = ~np.isfinite(img)
    img[bad] = 0.0
    good_border = border_pixels(np.where(bad, np.nan, img))
    good_border = good_border[np.isfinite(good_border)]
    if good_border.size:
        img -= np.median(good_border)
    img[bad] = 0.0
    return img, int(bad.sum())


def measure_source(raw, pixscale_arcsec: float, meta: dict, index: int) -> COSMOSSource:
    """Build a :class:`COSMOSSource` from a raw stamp (flux per pixel) and catalog metadata."""
    img, n_bad = prepare_image(raw)
    center = flux_weighted_centroid(img)
    hlr = meta.get("hlr_arcsec")
    hlr = half_light_radius(img, pixscale_arcsec, center) if hlr is None else float(hlr)
    clump = meta.get("clumpiness")
    clump = clumpiness(img, hlr / pixscale_arcsec, center) if clump is None else float(clump)
    img.setflags(write=False)
    return COSMOSSource(image=img, pixscale=float(pixscale_arcsec), half_light_radius=hlr, clumpiness=clump,
                        catalog_id=int(meta.get("catalog_id", index)), flux=float(img.sum()),
                        flux_radius_catalog=float(meta.get("flux_radius_arcsec", math.nan)),
                        mag=float(meta.get("mag", math.nan)), band=str(meta.get("band", "")),
                        index=index, n_nonfinite=n_bad)



STAMP_FLUX_RTOL = 1e-3
"""A catalog ``stamp_flux`` and the sum of its HDU agree to float32 rounding (measured < 1e-6)."""


_CATALOG_COLUMNS = {"IDENT", "GAL_FILENAME", "GAL_HDU"}
_NOT_CATALOG_SUFFIXES = ("_fits.fits", "_selection.fits")


def _is_galsim_catalog(path: Path) -> bool:
    with fits.open(path) as hdul:
        return len(hdul) > 1 and isinstance(hdul[1], fits.BinTableHDU) and _CATALOG_COLUMNS <= set(hdul[1].columns.names)


def _find_catalogs(path: Path) -> list[Path]:
    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() == ".fits" and "catalog" in p.name.lower()
                       and not p.name.endswith(_NOT_CATALOG_SUFFIXES))
    cats = [p for p in files if _is_galsim_catalog(p)]
    if not cats:
        raise InvalidValueError("cosmos_path", str(path), "holds no GalSim real_galaxy_catalog FITS table "
                                "(a binary table with columns IDENT, GAL_FILENAME, GAL_HDU)")
    return cats


def _column(table, name, default):
    return table[name] if name in table.columns.names else np.full(len(table), default)


class GalSimCatalog:
    """Rows of one or more GalSim real_galaxy_catalog tables; images read on demand (astropy)."""

    def __init__(self, path: Path, band: str | None = None, pixel_scale: float | None = None):
        rows = []
        for cat in _find_catalogs(path):
            table = fits.getdata(cat, 1)
            fit_path = cat.with_name(cat.stem + "_fits.fits")
            flux_radius = {}
            if fit_path.exists():  # SExtractor FLUX_RADIUS, native pixels
                fit = fits.getdata(fit_path, 1)
                flux_radius = dict(zip(fit["IDENT"].tolist(), fit["flux_radius"].tolist(), strict=True))
            scales = _column(table, "PIXEL_SCALE", math.nan if pixel_scale is None else pixel_scale)
            bands, mags = _column(table, "BAND", ""), _column(table, "MAG", math.nan)
            noise_var, stamp_flux = _column(table, "NOISE_VARIANCE", math.nan), _column(table, "stamp_flux", math.nan)
            for k in range(len(table)):
                ident, scale = int(table["IDENT"][k]), float(scales[k])
                rows.append(dict(catalog_id=ident, image_file=str(cat.parent / str(table["GAL_FILENAME"][k]).strip()),
                                 hdu=int(table["GAL_HDU"][k]), pixscale=scale, band=str(bands[k]).strip(),
                                 mag=float(mags[k]), noise_variance=float(noise_var[k]),
                                 stamp_flux=float(stamp_flux[k]),
                                 flux_radius_arcsec=flux_radius.get(ident, math.nan) * scale))
        found = sorted({r["band"] for r in rows})
        if band is not None:
            rows = [r for r in rows if r["band"].upper() == band.upper()]
            if not rows:
                check_choice("band", band, found)
        elif len(found) > 1:
            raise InvalidValueError("band", band, f"{path} holds catalogs of bands {found}: choose one")
        for r in rows:
            if not r["pixscale"] > 0:
                raise InvalidValueError("pixel_scale", pixel_scale, f"catalog has no PIXEL_SCALE for {r['catalog_id']}")
            if pixel_scale is not None and abs(r["pixscale"] / pixel_scale - 1) > 0.01:
                raise InvalidValueError("pixel_scale", pixel_scale, f"catalog PIXEL_SCALE is {r['pixscale']:.4g}")
        self.rows, self.pixscale, self._open = rows, rows[0]["pixscale"], {}

    def __getstate__(self):  # open file handles do not pickle; reopen on the executor
        return {**self.__dict__, "_open": {}}

    def __len__(self) -> int:
        return len(self.rows)

    def _hdul(self, name: str):
        if name not in self._open:
            if not Path(name).exists():
                raise InvalidValueError("GAL_FILENAME", name, "image file named by the catalog does not exist")
            self._open[name] = fits.open(name, memmap=True)
        return self._open[name]

    def read(self, i: int):
        """(raw image, pixscale arcsec/pix, metadata dict) of row ``i``."""
        row = self.rows[i]
        hdul = self._hdul(row["image_file"])
        data = hdul[row["hdu"]].data if row["hdu"] < len(hdul) else None
        meta = {k: row[k] for k in ("catalog_id", "band", "mag", "flux_radius_arcsec", "noise_variance")}
        if math.isfinite(row["stamp_flux"]) and not _matches(data, row["stamp_flux"]):
            # Some redistributed catalogs carry a wrong GAL_HDU (slsim's test copy gives HDU 2 twice);
            # the catalog's own stamp_flux identifies the right stamp without guessing.
            # Others (AEGIS) define stamp_flux differently (a few % off): keep GAL_HDU unless exactly
            # one other HDU matches to float rounding.
            hits = [k for k, h in enumerate(hdul) if _matches(h.data, row["stamp_flux"])]
            if len(hits) == 1:
                data, meta["hdu_repaired"] = hdul[hits[0]].data, True
        if data is None or data.ndim != 2:
            raise InvalidValueError(f"GAL_HDU of {row['catalog_id']}", row["hdu"], f"no 2-D image in {row['image_file']}")
        return np.asarray(data, dtype=np.float64), row["pixscale"], meta


def _matches(data, stamp_flux: float) -> bool:
    if data is None or getattr(data, "ndim", 0) != 2:
        return False
    return abs(float(np.nansum(data, dtype=np.float64)) - stamp_flux) <= STAMP_FLUX_RTOL * abs(stamp_flux)


_H5_META = ("catalog_id", "hlr_arcsec", "clumpiness", "flux_radius_arcsec", "mag")


class HDF5Bank:
    """Reader of the bank :func:`build_cosmos_bank` writes (stored native-resolution measurements)."""

    def __init__(self, path: Path):
        import h5py  # lazy: only the hdf5 paths need it

        try:
            with h5py.File(path, "r") as f:
                self._n, self.pixscale = int(f["images"].shape[0]), float(f.attrs["pixscale_arcsec"])
                self._band = str(f.attrs.get("band", ""))
        except (OSError, KeyError) as err:
            raise InvalidValueError("cosmos_path", str(path), f"is not a COSMOS HDF5 bank ({err})") from None
        self.path = path

    def __len__(self) -> int:
        return self._n

    def read(self, i: int):
        import h5py

        with h5py.File(self.path, "r") as f:
            meta = {k: f[k][i].item() for k in _H5_META}
            return np.asarray(f["images"][i], dtype=np.float64), self.pixscale, {**meta, "band": self._band}


class SyntheticBank:
    """Procedural stand-ins (exponential disc + Gaussian clumps + ACS-like noise), for tests without data."""

    pixscale = 0.03

    def __init__(self, n: int):
        self._n = n

    def __len__(self) -> int:
        return self._n

    def read(self, i: int):
        rng = rng_for(str(i), "cosmos_synthetic")
        yy, xx = (np.indices((96, 96)) - 47.5) * self.pixscale
        q, phi, re = rng.uniform(0.4, 1.0), rng.uniform(0, np.pi), rng.uniform(0.15, 0.45)
        xr, yr = np.cos(phi) * xx + np.sin(phi) * yy, -np.sin(phi) * xx + np.cos(phi) * yy
        img = np.exp(-1.678 * np.sqrt(q * xr**2 + yr**2 / q) / re)  # b_1 = 1.678: re is the half-light radius
        for _ in range(int(rng.integers(0, 5))):
            cx, cy, s = rng.normal(0, re, 2).tolist() + [rng.uniform(0.03, 0.08)]
            img += rng.uniform(0.1, 0.5) * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))
        img *= rng.uniform(10, 100) / img.sum()
        img += rng.normal(0.0, 0.0026, img.shape)  # ACS COSMOS sky noise per pixel, counts/s
        return img, self.pixscale, {"catalog_id": i, "band": "synthetic", "noise_variance": 0.0026**2}


def _quality_cut(src: COSMOSSource, meta: dict, min_snr, max_edge, max_neighbour) -> str | None:
    """Reason a source fails the bank's cuts, or None."""
    img, pix = src.image, src.pixscale
    if src.n_nonfinite > 0.01 * img.size:
        return "nonfinite"
    var = meta.get("noise_variance", math.nan)
    sigma = math.sqrt(var) if var > 0 else robust_sigma(border_pixels(img))
    if not (src.flux > 0 and src.half_light_radius > 0):
        return "low_snr"
    ring = border_pixels(img, max(2, round(0.05 * min(img.shape))))
    if ring[ring > 3 * sigma].sum() > max_edge * src.flux:  # real flux, not noise, reaches the edge
        return "edge_flux"
    # No deblending (deblend_cont=1): clumps of one galaxy stay one object; only detached ones count.
    objs, seg = sep.extract(np.array(img, order="C"), 3.0, err=sigma, minarea=10, deblend_cont=1.0,
                            segmentation_map=True)
    if len(objs) > 1:
        cx, cy = flux_weighted_centroid(img)
        main = seg[int(round(cy)), int(round(cx))] - 1
        if main < 0:
            main = int(np.argmin(np.hypot(objs["x"] - cx, objs["y"] - cy)))
        others = np.delete(objs["flux"], main)
        if others.max() > max_neighbour * objs["flux"][main]:
            return "neighbour"
    npix = math.pi * (2.0 * src.half_light_radius / pix) ** 2
    if src.flux / (sigma * math.sqrt(max(npix, 1.0))) < min_snr:
        return "low_snr"
    return None


CUT_REASONS = ("nonfinite", "edge_flux", "neighbour", "low_snr", "too_big")


def _write_bank(galsim_path, output_h5, n_sources, stamp_size, pixel_scale, seed, target_pixscale, band,
                min_snr, max_edge, max_neighbour, max_flux_loss) -> dict:
    import h5py

    n_sources = int(check_range("n_sources", n_sources, 1, 10_000_000))
    stamp_size = int(check_range("stamp_size", stamp_size, 3, 4096))
    target = check_range("target_pixscale", target_pixscale, 0.0, math.inf, lo_open=True)
    max_flux_loss = check_range("max_flux_loss", max_flux_loss, 0.0, 1.0)
    reader = GalSimCatalog(Path(galsim_path), band=band, pixel_scale=pixel_scale)
    cuts = dict.fromkeys(CUT_REASONS, 0)
    kept, n_tried = [], 0
    for i in rng_for(str(seed), "cosmos_bank").permutation(len(reader)).tolist():
        if len(kept) >= n_sources:
            break
        n_tried += 1
        raw, pix, meta = reader.read(i)
        src = measure_source(raw, pix, meta, i)
        reason = _quality_cut(src, meta, min_snr, max_edge, max_neighbour)
        if reason is None:
            cx, cy = flux_weighted_centroid(src.image)
            h, w = src.image.shape
            centre = ((cx - (w - 1) / 2.0) * pix, (cy - (h - 1) / 2.0) * pix)
            stamp = resample_to_pixscale(src.image, pix, target, out_size=stamp_size, center_arcsec=centre)
            if abs(1.0 - stamp.sum() / src.flux) > max_flux_loss:
                reason = "too_big"
        if reason is not None:
            cuts[reason] += 1
            continue
        kept.append((src, stamp))
    summary = {"output": str(output_h5), "n_requested": n_sources, "n_candidates": len(reader),
               "n_tried": n_tried, "n_written": len(kept), "cuts": cuts}
    Path(output_h5).parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(output_h5, "w") as f:
        images = np.zeros((len(kept), stamp_size, stamp_size), np.float32)
        for k, (_, stamp) in enumerate(kept):
            images[k] = stamp
        f.create_dataset("images", data=images, compression="gzip", shuffle=True)
        cols = {"catalog_id": ("catalog_id", np.int64), "hlr_arcsec": ("half_light_radius", np.float64),
                "clumpiness": ("clumpiness", np.float64), "flux_radius_arcsec": ("flux_radius_catalog", np.float64),
                "mag": ("mag", np.float64), "flux": ("flux", np.float64), "src_pixscale_arcsec": ("pixscale", np.float64)}
        for name, (attr, dtype) in cols.items():
            f.create_dataset(name, data=np.array([getattr(s, attr) for s, _ in kept], dtype=dtype))
        f.attrs.update({"pixscale_arcsec": target, "stamp_size": stamp_size, "seed": str(seed),
                        "galsim_path": str(galsim_path), "band": kept[0][0].band if kept else (band or ""),
                        "flux_unit": "catalog image unit per pixel (ACS: counts/s)",
                        **{k: v for k, v in summary.items() if k not in ("cuts", "output")},
                        **{f"cut_{k}": v for k, v in cuts.items()}})
    return summary
