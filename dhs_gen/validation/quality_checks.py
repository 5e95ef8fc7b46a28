"""Stamp QA: the legacy ``stamp_npz`` codec and the per-stamp checks that set reject reasons.

Legacy blobs are ``.npz`` archives (optionally gzip-wrapped) with one 2-D array per band under
``image_g``, ``image_r``, ``image_z`` (any subset). They are read with
``np.load(allow_pickle=False)``: an archive holding pickled object arrays is refused, never
unpickled. Images are flux per pixel (nanomaggies); inverse variances are 1/nanomaggies^2.
"""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib

import numpy as np

from dhs_gen.errors import InvalidValueError

LEGACY_BANDS = "grz"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_ZIP_EMPTY_MAGIC = b"PK\x05\x06"


def _describe(blob: bytes) -> str:
    return f"<{len(blob)} bytes, first bytes 0x{bytes(blob[:8]).hex()}>"


def decode_stamp_npz(blob: bytes) -> tuple[np.ndarray, str]:
    """Decode a legacy ``stamp_npz`` blob into a (bands, H, W) float32 array.

    Parameters
    ----------
    blob : bytes
        Raw ``.npz`` bytes, or the same gzip-compressed.

    Returns
    -------
    image : ndarray (B, H, W), float32
        Flux per pixel (nanomaggies), bands in g, r, z order.
    bands : str
        The bands present, in order, e.g. ``"grz"`` or ``"gr"``.

    Raises
    ------
    InvalidValueError (a ValueError)
        Not npz (or gzip of npz), a corrupt archive, no ``image_*`` key, an unknown band,
        a non-2-D / non-numeric / pickled-object image, or bands of different shapes.
    """
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise InvalidValueError("blob", type(blob).__name__, "stamp_npz must be bytes")
    data = bytes(blob)
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise InvalidValueError("blob", _describe(blob), f"corrupt gzip stream ({exc})") from None
    if data[:4] not in (_ZIP_MAGIC, _ZIP_EMPTY_MAGIC):
        raise InvalidValueError("blob", _describe(blob), "not an npz archive (nor gzip-wrapped npz)")
    planes = {}
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            keys = [k for k in archive.files if k.startswith("image_")]
            if not keys:
                raise InvalidValueError("blob", _describe(blob),
                                        f"npz has no image_<band> key (keys: {sorted(archive.files)})")
            for k in keys:
                band = k[len("image_"):]
                if band not in LEGACY_BANDS or len(band) != 1:
                    raise InvalidValueError("blob", _describe(blob), f"unknown band key {k!r}; allowed image_g/r/z")
                planes[band] = archive[k]  # object arrays raise ValueError here (allow_pickle=False)
                if not isinstance(planes[band], np.ndarray):  # np.load hands back non-.npy members as bytes
                    raise InvalidValueError("blob", _describe(blob), f"unreadable npz member {k!r} (not a .npy array)")
    except InvalidValueError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
        raise InvalidValueError("blob", _describe(blob), f"unreadable npz ({type(exc).__name__}: {exc})") from None
    bands = "".join(b for b in LEGACY_BANDS if b in planes)
    shapes = {b: planes[b].shape for b in bands}
    for b in bands:
        a = planes[b]
        if a.ndim != 2 or a.size == 0:
            raise InvalidValueError("blob", _describe(blob), f"image_{b} must be a non-empty 2-D array, got shape {a.shape}")
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise InvalidValueError("blob", _describe(blob), f"image_{b} has non-numeric dtype {a.dtype}")
    if len(set(shapes.values())) != 1:
        raise InvalidValueError("blob", _describe(blob), f"bands have different shapes {shapes}")
    return np.stack([planes[b] for b in bands]).astype(np.float32), bands


def encode_stamp_npz(image, bands: str, compress: bool = True, gzip_wrap: bool = False) -> bytes:
    """Encode a (B, H, W) stamp as a legacy ``stamp_npz`` blob (inverse of :func:`decode_stamp_npz`).

    Parameters
    ----------
    image : array (B, H, W)
        Flux per pixel (nanomaggies); stored as float32.
    bands : str
        One letter per plane, a sub-sequence of ``"grz"`` in that order (e.g. ``"gr"``).
    compress : bool
        Deflate the archive members (``np.savez_compressed``).
    gzip_wrap : bool
        Additionally gzip the whole archive (the other legacy variant).

    Returns
    -------
    bytes
    """
    arr = np.asarray(image)
    if arr.ndim != 3:
        raise InvalidValueError("image", arr, "must be (bands, H, W)")
    if not isinstance(bands, str) or len(bands) != arr.shape[0]:
        raise InvalidValueError("bands", bands, f"needs one letter per plane ({arr.shape[0]})")
    if bands != "".join(b for b in LEGACY_BANDS if b in bands):  # also rejects repeats and unknown letters
        raise InvalidValueError("bands", bands, "must be distinct letters from 'grz' in g, r, z order")
    buf = io.BytesIO()
    save = np.savez_compressed if compress else np.savez
    save(buf, **{f"image_{b}": arr[i].astype(np.float32) for i, b in enumerate(bands)})
    out = buf.getvalue()
    return gzip.compress(out, mtime=0) if gzip_wrap else out


def check_stamp(image, invvar=None, bands: str = LEGACY_BANDS) -> list[str]:
    """Problems that make a stamp unusable, as reject-reason codes (empty list: usable).

    Parameters
    ----------
    image : array (B, H, W)
        Flux per pixel (nanomaggies).
    invvar : array (B, H, W), optional
        Inverse variance per pixel (1/nanomaggies^2); 0 means no coverage.
    bands : str
        Band letters naming the planes in the codes (default ``"grz"``).

    Returns
    -------
    list of str
        Codes in a fixed order: ``bad_shape``, ``nonfinite_image_<b>``, ``zero_image_<b>``,
        ``invvar_shape_mismatch``, ``nonfinite_invvar_<b>``, ``negative_invvar_<b>``,
        ``no_coverage_<b>`` (invvar 0 everywhere in the band).
    """
    img = np.asarray(image)
    if img.ndim != 3 or img.size == 0 or not np.issubdtype(img.dtype, np.number):
        return ["bad_shape"]
    names = bands if isinstance(bands, str) and len(bands) == img.shape[0] else [str(i) for i in range(img.shape[0])]
    problems = []
    finite = np.isfinite(img)
    for i, b in enumerate(names):
        if not finite[i].all():
            problems.append(f"nonfinite_image_{b}")
        elif not np.any(img[i]):
            problems.append(f"zero_image_{b}")
    if invvar is None:
        return problems
    iv = np.asarray(invvar)
    if iv.shape != img.shape:
        return problems + ["invvar_shape_mismatch"]
    for i, b in enumerate(names):
        band = iv[i]
        ok = np.isfinite(band)
        if not ok.all():
            problems.append(f"nonfinite_invvar_{b}")
        if np.any(band[ok] < 0):
            problems.append(f"negative_invvar_{b}")
        if not np.any(band[ok] > 0):
            problems.append(f"no_coverage_{b}")
    return problems
