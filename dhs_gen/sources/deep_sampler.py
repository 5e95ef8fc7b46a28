"""Gen6 sampler for Stage 4c: deterministic template choice from a task id, unit-sum per band."""

from __future__ import annotations

import math

import numpy as np

from dhs_gen.conventions import nmgy_to_mag
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.utils import hash_uint64

SALT = "gen6_deep_bank"
REQUIRED = ("images", "bands", "flux", "target_pixscale_arcsec")


class DeepSourceBank:
    """A loaded deep-source bank (see :func:`dhs_gen.sources.deep_bank.build_deep_source_bank`).

    Attributes
    ----------
    images : ndarray (N, 3, S, S) float32, read-only
        Nanomaggies per pixel, bands ``bands`` (g, r, z).
    bands : tuple of str
    flux : ndarray (N, 3), isophotal flux per band, nanomaggies.
    pixscale_arcsec : float, arcsec per template pixel.
    meta : dict of the bank's other per-template arrays (source_file, object_index, hlr_arcsec...).
    """

    def __init__(self, images, bands, flux, pixscale_arcsec: float, meta: dict | None = None, path: str = ""):
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
            raise InvalidValueError("images", images, "must be (N >= 1, 3, S, S)")
        sums = images.sum(axis=(2, 3), dtype=np.float64)
        if not np.all(np.isfinite(images)) or np.any(sums <= 0):
            bad = np.flatnonzero(~np.all(sums > 0, axis=1)).tolist()[:10]
            raise InvalidValueError("images", images, f"every band of every template needs a finite positive sum "
                                    f"(bad template ids {bad})")
        images.setflags(write=False)
        self.images, self.bands, self.flux = images, tuple(str(b) for b in bands), np.asarray(flux, np.float64)
        self.pixscale_arcsec = check_range("pixscale_arcsec", pixscale_arcsec, 0.0, math.inf, lo_open=True)
        self.meta, self.path, self._sums = dict(meta or {}), path, sums

    @classmethod
    def load(cls, npz_path) -> DeepSourceBank:
        """Read a bank NPZ (never unpickles: ``allow_pickle=False``)."""
        with np.load(npz_path, allow_pickle=False) as z:
            missing = [k for k in REQUIRED if k not in z.files]
            if missing:
                raise InvalidValueError("npz_path", str(npz_path), f"is not a deep-source bank (missing {missing})")
            arrays = {k: z[k] for k in z.files}
        meta = {k: v for k, v in arrays.items() if k not in REQUIRED}
        return cls(arrays["images"], arrays["bands"], arrays["flux"], float(arrays["target_pixscale_arcsec"]),
                   meta, str(npz_path))

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def index_for(self, task_id: str) -> int:
        """Template id for ``task_id``: blake2b hash modulo the bank size (uniform, stable)."""
        return hash_uint64(str(task_id), SALT) % len(self)

    def template(self, template_id: int) -> np.ndarray:
        """(3, S, S) float64 template, each band normalised to unit sum (flux fractions per pixel)."""
        i = int(check_range("template_id", template_id, 0, len(self) - 1))
        return self.images[i].astype(np.float64) / self._sums[i][:, None, None]

    def sample(self, task_id: str) -> tuple[int, np.ndarray]:
        """``(template_id, images (3, S, S))`` chosen by ``task_id``; unit sum per band (g, r, z)."""
        i = self.index_for(task_id)
        return i, self.template(i)

    def native_colors(self, template_id: int) -> dict:
        """The template's own AB colours ``{"g-r": mag, "r-z": mag}`` from its isophotal band fluxes."""
        mags = dict(zip(self.bands, nmgy_to_mag(self.flux[int(template_id)]).tolist(), strict=True))
        return {"g-r": mags["g"] - mags["r"], "r-z": mags["r"] - mags["z"]}

    def band_fluxes(self, template_id: int) -> dict:
        """Isophotal flux per band, nanomaggies."""
        return dict(zip(self.bands, self.flux[int(template_id)].tolist(), strict=True))
