"""Gen5 real-galaxy sources: COSMOS loader V2 and the HDF5 bank builder.

Reads a GalSim ``real_galaxy_catalog`` directory as distributed (catalog FITS table, the
``<catalog>_fits.fits`` parametric-fit table, image files holding one HDU per galaxy) with
astropy alone, or the HDF5 bank :func:`build_cosmos_bank` writes (h5py, imported lazily).

Each galaxy is measured on reading (:mod:`dhs_gen.imaging.measure`: background, centroid, half-light
radius, clumpiness) and resampled area-weighted (:func:`dhs_gen.imaging.resample.resample_to_pixscale`).
The catalog readers and the bank writer live in
:mod:`dhs_gen.sources.cosmos_readers`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, check_choice, check_range
from dhs_gen.imaging.resample import resample_to_pixscale
from dhs_gen.sources.cosmos_readers import (
    COSMOSSource,
    GalSimCatalog,
    HDF5Bank,
    SyntheticBank,
    _write_bank,
    measure_source,
)
from dhs_gen.utils import rng_for

MODES = ("galsim", "hdf5", "synthetic")


class COSMOSLoaderV2:
    """Deterministic access to real galaxy stamps (seed 004, section 6).

    Parameters
    ----------
    cosmos_path : str or Path
        ``galsim``: a real_galaxy_catalog directory or catalog file; ``hdf5``: a bank file from
        :func:`build_cosmos_bank`; ``synthetic``: ignored (procedural stand-ins, tests only).
    mode : {"galsim", "hdf5", "synthetic"}
    band : str, optional
        galsim mode: keep only catalogs of this band (required when a directory mixes bands).
    n_synthetic : int
        Number of synthetic sources (synthetic mode only).
    pixel_scale : float, optional
        Expected native pixel scale, arcsec/pix; galsim mode checks it against the catalog.
    """

    def __init__(self, cosmos_path, mode: str = "galsim", band: str | None = None, n_synthetic: int = 64,
                 pixel_scale: float | None = None):
        self.mode = check_choice("mode", mode, MODES)
        self.cosmos_path = None if cosmos_path is None else str(cosmos_path)
        if mode != "synthetic":
            if cosmos_path is None or not Path(cosmos_path).exists():
                raise InvalidValueError("cosmos_path", self.cosmos_path, f"does not exist (mode={mode!r})")
        if mode == "galsim":
            self._reader = GalSimCatalog(Path(cosmos_path), band=band, pixel_scale=pixel_scale)
        elif mode == "hdf5":
            self._reader = HDF5Bank(Path(cosmos_path))
        else:
            self._reader = SyntheticBank(int(check_range("n_synthetic", n_synthetic, 1, 1e6)))

    def __len__(self) -> int:
        return len(self._reader)

    def get_source_by_index(self, index: int) -> COSMOSSource:
        """Source number ``index`` (0 <= index < len(self))."""
        i = int(check_range("index", index, 0, len(self) - 1))
        raw, pixscale, meta = self._reader.read(i)
        return measure_source(raw, pixscale, meta, i)

    def index_for_seed(self, seed) -> int:
        """Index chosen by ``seed`` (rng from :func:`dhs_gen.utils.rng_for`, salt "cosmos_v2")."""
        return int(rng_for(str(seed), "cosmos_v2").integers(len(self)))

    def get_source(self, seed) -> COSMOSSource:
        """Deterministic source for ``seed`` (any str/int key)."""
        return self.get_source_by_index(self.index_for_seed(seed))

    def resample_to_pixscale(self, image, target_pixscale: float = PIXSCALE_DR10_ARCSEC,
                             src_pixscale: float | None = None, out_size: int | None = None) -> np.ndarray:
        """:func:`resample_to_pixscale` with the loader's native pixel scale as default source scale."""
        src = self._reader.pixscale if src_pixscale is None else src_pixscale
        return resample_to_pixscale(image, src, target_pixscale, out_size=out_size)


def build_cosmos_bank(galsim_path, output_h5, n_sources: int, stamp_size: int, pixel_scale: float, seed,
                      target_pixscale: float = PIXSCALE_DR10_ARCSEC, band: str | None = None,
                      min_snr: float = 20.0, max_edge_flux_frac: float = 0.05,
                      max_neighbour_flux_frac: float = 0.1, max_flux_loss: float = 0.02) -> dict:
    """Select, cut, resample to the target grid and write real galaxies to an HDF5 bank.

    Parameters
    ----------
    galsim_path : str or Path
        GalSim real_galaxy_catalog directory or catalog file.
    output_h5 : str or Path
        Output HDF5 path.
    n_sources : int
        Sources wanted (fewer are written when the catalog runs out; the summary says so).
    stamp_size : int
        Output stamp side, pixels of ``target_pixscale``.
    pixel_scale : float
        Native pixel scale, arcsec/pix (checked against the catalog's PIXEL_SCALE).
    seed : int or str
        Order in which candidates are tried (rng_for(seed, "cosmos_bank").permutation).
    target_pixscale : float
        Output pixel scale, arcsec/pix.
    min_snr : float
        Cut: total flux / (noise sigma * sqrt(pixels within 2 hlr)).
    max_edge_flux_frac : float
        Cut: fraction of |flux| in the border ring of the native stamp (neighbours / truncation).
    max_neighbour_flux_frac : float
        Cut: flux of the brightest other sep detection relative to the galaxy.
    max_flux_loss : float
        Cut: flux fraction falling outside the output stamp ("too big").

    Returns
    -------
    dict: n_requested, n_candidates, n_written, cuts (reason -> count), output path; also stored
    as HDF5 attributes.
    """
    return _write_bank(galsim_path, output_h5, n_sources, stamp_size, pixel_scale, seed, target_pixscale,
                               band, min_snr, max_edge_flux_frac, max_neighbour_flux_frac, max_flux_loss)


__all__ = ["COSMOSLoaderV2", "build_cosmos_bank"]
