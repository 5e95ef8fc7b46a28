"""Arrow schemas of the stage outputs, as constants (other tools read these exact names).

Images are stored as raw bytes: float32, C-order, shape ``image_shape = [bands, H, W]``, in
nanomaggies per pixel (``invvar`` in 1/nanomaggies^2, same layout). ``decode_image`` is the
one reader; the legacy ``stamp_npz`` format is read by
``dhs_gen.validation.quality_checks.decode_stamp_npz``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

MANIFEST_SCHEMA = pa.schema([
    ("task_id", pa.string()),
    ("host_id", pa.string()),
    ("pair_id", pa.string()),
    ("kind", pa.string()),              # injection | control | hardneg_shuffle
    ("label", pa.int8()),               # 1 injection, 0 control / hard negative
    ("is_control", pa.bool_()),
    ("split", pa.string()),             # train | val | test (spatially disjoint, by brick)
    ("brickname", pa.string()),
    ("ra", pa.float64()),               # deg
    ("dec", pa.float64()),              # deg
    ("host_flux_g_nmgy", pa.float64()),
    ("host_flux_r_nmgy", pa.float64()),
    ("host_flux_z_nmgy", pa.float64()),
    ("host_type", pa.string()),
    ("replicate", pa.int32()),
    ("task_seed", pa.int64()),
    ("source_mode", pa.string()),       # sersic | cosmos | deep | hybrid
    ("artifact_profile", pa.string()),  # none | mild | strong
    ("theta_e_arcsec", pa.float64()),
    ("lens_e1", pa.float64()),
    ("lens_e2", pa.float64()),
    ("shear_gamma1", pa.float64()),
    ("shear_gamma2", pa.float64()),
    ("src_mag_r", pa.float64()),        # unlensed AB
    ("src_color_gr", pa.float64()),     # g - r, AB
    ("src_color_rz", pa.float64()),     # r - z, AB
    ("src_r_eff_arcsec", pa.float64()),
    ("src_n_sersic", pa.float64()),
    ("src_e1", pa.float64()),
    ("src_e2", pa.float64()),
    ("src_x_arcsec", pa.float64()),     # source-plane offset from the lens centre
    ("src_y_arcsec", pa.float64()),
    ("config_hash", pa.string()),
])

_STAMP_EXTRA = [
    ("image", pa.binary()),             # float32 (bands, H, W), nanomaggies per pixel
    ("invvar", pa.binary()),            # float32 (bands, H, W), 1/nanomaggies^2
    ("image_shape", pa.list_(pa.int32())),
    ("bands", pa.string()),
    ("pixscale_arcsec", pa.float64()),
    ("src_mag_g", pa.float64()),
    ("src_mag_z", pa.float64()),
    ("magnification", pa.float64()),    # lensed / unlensed source flux
    ("arc_flux_g_nmgy", pa.float64()),  # total lensed arc flux added, before noise
    ("arc_flux_r_nmgy", pa.float64()),
    ("arc_flux_z_nmgy", pa.float64()),
    ("arc_snr", pa.float64()),
    ("psf_fwhm_g_arcsec", pa.float64()),
    ("psf_fwhm_r_arcsec", pa.float64()),
    ("psf_fwhm_z_arcsec", pa.float64()),
    ("psfdepth_r_nmgy", pa.float64()),  # 5-sigma point-source depth proxy at the host
    ("source_template_id", pa.string()),
    ("artifact_meta", pa.string()),     # JSON of the artifacts applied
    ("cutout_ok", pa.int8()),
    ("reject_reason", pa.string()),
    ("git_sha", pa.string()),
    ("pipeline_version", pa.string()),
]

STAMP_SCHEMA = pa.schema(list(MANIFEST_SCHEMA) + [pa.field(n, t) for n, t in _STAMP_EXTRA])


def encode_image(arr: np.ndarray) -> bytes:
    """(bands, H, W) array -> float32 C-order bytes for the ``image`` / ``invvar`` columns."""
    return np.ascontiguousarray(arr, dtype=np.float32).tobytes()


def decode_image(blob: bytes, shape) -> np.ndarray:
    """Bytes of the ``image`` / ``invvar`` columns -> float32 array of ``shape`` (bands, H, W)."""
    shape = tuple(int(s) for s in shape)
    arr = np.frombuffer(blob, dtype=np.float32)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"image bytes hold {arr.size} float32 values, image_shape {shape} needs {int(np.prod(shape))}")
    return arr.reshape(shape)


ANCHOR_SCHEMA = pa.schema([
    ("anchor_id", pa.string()),
    ("name", pa.string()),
    ("ra", pa.float64()),               # deg
    ("dec", pa.float64()),              # deg
    ("label", pa.int8()),               # 1 known lens, 0 real hard negative (ring, merger, model FP, ...)
    ("class", pa.string()),             # known_lens | candidate | ring | merger | other
    ("grade", pa.string()),
    ("source_catalog", pa.string()),
    ("theta_e_arcsec", pa.float64()),   # null when unknown
    ("z_lens", pa.float64()),
    ("brickname", pa.string()),
    ("image", pa.binary()),             # float32 (bands, H, W), nanomaggies per pixel
    ("invvar", pa.binary()),            # may be null (cutouts without inverse variance)
    ("image_shape", pa.list_(pa.int32())),
    ("bands", pa.string()),
    ("pixscale_arcsec", pa.float64()),
    ("provenance", pa.string()),        # where the pixels came from and what was done to them
])

HOST_SCHEMA = pa.schema([
    ("host_id", pa.string()),           # the manifest's host_id: <brick>_<ra>_<dec> when the position is known
    ("name", pa.string()),
    ("ra", pa.float64()),               # deg; null when the cutout has no position
    ("dec", pa.float64()),
    ("brickname", pa.string()),         # DR10 brick of the position (the split key); null without one
    ("host_flux_g_nmgy", pa.float64()),  # from the catalog when it has FLUX_G/R/Z
    ("host_flux_r_nmgy", pa.float64()),
    ("host_flux_z_nmgy", pa.float64()),
    ("host_type", pa.string()),
    ("hardneg_source", pa.string()),    # from a `dhs hardneg collect` catalog: model_fp | ring | merger
    ("weight", pa.float64()),           # that source's training weight (dhs train --hard-negatives)
    ("split", pa.string()),             # train | val | test fixed per object (else 4a splits by brick)
    ("image", pa.binary()),             # float32 (3, H, W) g, r, z nanomaggies per 0.262" pixel
    ("invvar", pa.binary()),            # float32 (3, H, W), 1/nanomaggies^2
    ("maskbits", pa.binary()),          # int32 (H, W) DR10 maskbits; null when the source has none
    ("image_shape", pa.list_(pa.int32())),
    ("bands", pa.string()),
    ("pixscale_arcsec", pa.float64()),
    ("dx_pix", pa.float64()),           # host position minus the central pixel's centre, pixels (x = column)
    ("dy_pix", pa.float64()),
    ("psf_fwhm_g_arcsec", pa.float64()),
    ("psf_fwhm_r_arcsec", pa.float64()),
    ("psf_fwhm_z_arcsec", pa.float64()),
    ("psf_source", pa.string()),        # catalog PSFSIZE | measured on a PSF image | psfsize map | declared
    ("invvar_source", pa.string()),     # file | coadd | estimated: MAD of the stamp's border frame
    ("source", pa.string()),            # the --cutouts spec
    ("provenance", pa.string()),        # where the pixels came from and every step applied
])

#: Inputs that gave no row (no pixels to keep), beside the data in ``_rejects.parquet``: rows in = written + rejected.
REJECT_SCHEMA = pa.schema([("name", pa.string()), ("ra", pa.float64()), ("dec", pa.float64()),
                                ("reason", pa.string()), ("detail", pa.string())])
