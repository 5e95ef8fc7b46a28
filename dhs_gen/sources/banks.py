"""One template-bank interface for Stage 4c: Gen5 COSMOS (HDF5 or GalSim dir) and Gen6 deep banks.

Stage 4c only needs ``open_bank(kind, path)`` and ``bank.pick(task_id)``; it builds
``dhs_gen.sources.profiles.TemplateSource(image=t.images[b], pixscale=t.pixscale_arcsec, flux=flux_b,
center_x, center_y)`` per band b from the returned :class:`BankTemplate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from dhs_gen.conventions import DR10_BANDS
from dhs_gen.errors import InvalidValueError, check_choice


@dataclass(frozen=True)
class BankTemplate:
    """A template chosen for one task.

    Attributes
    ----------
    template_id : str
        Stable id (``cosmos:<catalog_id>:<index>`` or ``deep:<source_file>:<object_index>:<index>``).
    images : ndarray (3, S, S) float64, read-only
        Bands g, r, z, each normalised to unit sum (fraction of the band's flux per pixel). A
        single-band COSMOS template is repeated in all three bands.
    pixscale_arcsec : float
        Arcsec per template pixel.
    native_colors : dict
        The template's own AB colours ``{"g-r", "r-z"}`` (mag); empty for single-band COSMOS,
        whose colours the caller assigns.
    """

    template_id: str
    images: np.ndarray = field(repr=False)
    pixscale_arcsec: float
    native_colors: dict


@runtime_checkable
class TemplateBank(Protocol):
    """What Stage 4c needs from a source bank."""

    def __len__(self) -> int: ...

    def pick(self, task_id: str) -> BankTemplate: ...


def _freeze(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float64)
    images.setflags(write=False)
    return images


class COSMOSTemplateBank:
    """Gen5: a :class:`dhs_gen.sources.cosmos.COSMOSLoaderV2` (hdf5 bank or GalSim directory) as a TemplateBank."""

    def __init__(self, path, mode: str | None = None):
        from dhs_gen.sources.cosmos import COSMOSLoaderV2

        mode = mode or ("hdf5" if str(path).endswith((".h5", ".hdf5")) else "galsim")
        self.loader = COSMOSLoaderV2(path, mode=mode)

    def __len__(self) -> int:
        return len(self.loader)

    def pick(self, task_id: str) -> BankTemplate:
        """Template for ``task_id`` (the loader's rng_for-based deterministic choice)."""
        src = self.loader.get_source(str(task_id))
        if not src.flux > 0:
            raise InvalidValueError("template flux", src.flux, f"COSMOS source {src.catalog_id} must have a positive sum")
        unit = src.image / src.flux
        return BankTemplate(f"cosmos:{src.catalog_id}:{src.index}", _freeze(np.stack([unit] * len(DR10_BANDS))),
                            src.pixscale, {})


class DeepTemplateBank:
    """Gen6: a :class:`dhs_gen.sources.deep_sampler.DeepSourceBank` as a TemplateBank."""

    def __init__(self, path):
        from dhs_gen.sources.deep_sampler import DeepSourceBank

        self.bank = DeepSourceBank.load(path)

    def __len__(self) -> int:
        return len(self.bank)

    def pick(self, task_id: str) -> BankTemplate:
        """Template for ``task_id`` (hash modulo bank size)."""
        i, images = self.bank.sample(str(task_id))
        meta = self.bank.meta
        name = f"{meta['source_file'][i]}:{int(meta['object_index'][i])}" if "source_file" in meta else "?"
        return BankTemplate(f"deep:{name}:{i}", _freeze(images), self.bank.pixscale_arcsec, self.bank.native_colors(i))


BANK_KINDS = {"cosmos": COSMOSTemplateBank, "deep": DeepTemplateBank}


def open_bank(kind: str, path) -> TemplateBank:
    """Open a source bank by kind ("cosmos" | "deep") from a local path.

    Raises
    ------
    ChoiceError for an unknown kind; InvalidValueError naming the path when it does not exist.
    """
    check_choice("kind", kind, BANK_KINDS)
    if not Path(path).exists():
        raise InvalidValueError("path", str(path), f"{kind} bank does not exist")
    return BANK_KINDS[kind](path)

