"""Legacy stamp_npz codec and stamp checks, on real DR10 cutouts and hand-built bad blobs."""

import gzip
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dhs_gen.validation.quality_checks import check_stamp, decode_stamp_npz, encode_stamp_npz


def _real_stamp(shared_data: Path) -> np.ndarray:
    files = sorted((shared_data / "dr10" / "cutouts").glob("*.npz"))
    if not files:
        pytest.skip("no DR10 cutouts in the shared data folder")
    with np.load(files[0], allow_pickle=False) as f:
        return np.moveaxis(f["cutout"], -1, 0)  # (H, W, 3) grz -> (3, H, W)


def _npz(**arrays) -> bytes:
    """A legacy blob built with numpy directly (independent of encode_stamp_npz)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def test_decodes_hand_built_legacy_blob_with_real_pixels(shared_data):
    stamp = _real_stamp(shared_data)
    blob = _npz(image_g=stamp[0], image_r=stamp[1], image_z=stamp[2], meta_ra=np.float64(1.0))
    image, bands = decode_stamp_npz(blob)
    assert bands == "grz" and image.dtype == np.float32 and image.shape == stamp.shape
    assert image.tobytes() == stamp.astype(np.float32).tobytes()


def test_gzip_wrapped_and_band_subsets_in_grz_order():
    rng = np.random.default_rng(1)
    g, z = rng.normal(size=(2, 16, 16)).astype(np.float32)
    blob = _npz(image_z=z, image_g=g)  # stored out of order
    for b in (blob, gzip.compress(blob)):
        image, bands = decode_stamp_npz(b)
        assert bands == "gz"
        np.testing.assert_array_equal(image, np.stack([g, z]))
    image, bands = decode_stamp_npz(_npz(image_r=np.arange(12, dtype=np.int16).reshape(3, 4)))
    assert bands == "r" and image.dtype == np.float32 and image[0, 2, 3] == 11.0


@pytest.mark.parametrize("bands", ["grz", "gr", "z"])
@pytest.mark.parametrize("compress, gzip_wrap", [(True, False), (False, False), (True, True)])
def test_encode_decode_round_trip(shared_data, bands, compress, gzip_wrap):
    stamp = _real_stamp(shared_data)[[("grz".index(b)) for b in bands]]
    blob = encode_stamp_npz(stamp, bands, compress=compress, gzip_wrap=gzip_wrap)
    assert blob[:2] == (b"\x1f\x8b" if gzip_wrap else b"PK")
    image, got = decode_stamp_npz(blob)
    assert got == bands and image.tobytes() == stamp.astype(np.float32).tobytes()
    # the blob is a plain npz numpy itself can read: the keys are the legacy ones
    if not gzip_wrap:
        with np.load(io.BytesIO(blob), allow_pickle=False) as f:
            assert sorted(f.files) == sorted(f"image_{b}" for b in bands)


def _pickled_object_npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, image_g=np.array([{"evil": 1}, None], dtype=object))
    return buf.getvalue()


def _truncated() -> bytes:
    return _npz(image_g=np.ones((8, 8)))[:60]


def _zip_without_npy() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("image_g.npy", b"not a numpy file")
    return buf.getvalue()


@pytest.mark.parametrize("blob, words", [
    (b"", "not an npz"),
    (b"hello world, not a stamp", "not an npz"),
    (np.ones(4).tobytes(), "not an npz"),
    (b"\x1f\x8b\x08\x00garbage", "gzip"),
    (gzip.compress(b"plain text"), "not an npz"),
    (_npz(cutout=np.ones((4, 4))), "no image_<band>"),
    (_npz(image_g=np.ones((4, 4)), image_r=np.ones((4, 5))), "different shapes"),
    (_npz(image_g=np.ones((2, 4, 4))), "2-D"),
    (_npz(image_g=np.array([["a", "b"]])), "non-numeric"),
    (_npz(image_i=np.ones((4, 4))), "unknown band"),
    (_pickled_object_npz(), "unreadable npz"),
    (_truncated(), "unreadable npz"),
    (_zip_without_npy(), "unreadable npz"),
])
def test_bad_blobs_raise_value_error_saying_what(blob, words):
    with pytest.raises(ValueError) as info:
        decode_stamp_npz(blob)
    assert words in str(info.value)
    assert str(pickle.loads(pickle.dumps(info.value))) == str(info.value)


def test_object_arrays_are_never_unpickled(monkeypatch):
    calls = []
    monkeypatch.setattr(pickle, "load", lambda *a, **k: calls.append(a))  # what np.load would call
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: calls.append(a))
    with pytest.raises(ValueError):
        decode_stamp_npz(_pickled_object_npz())
    assert calls == []


def test_encode_rejects_bad_band_strings():
    x = np.zeros((2, 4, 4))
    for bands in ("rg", "gg", "gx", "g"):
        with pytest.raises(ValueError, match="bands"):
            encode_stamp_npz(x, bands)
    with pytest.raises(ValueError, match="image"):
        encode_stamp_npz(np.zeros((4, 4)), "g")


def test_check_stamp_real_cutout_is_clean_and_damage_is_named(shared_data):
    stamp = _real_stamp(shared_data).astype(np.float32)
    invvar = np.full(stamp.shape, 1e4, dtype=np.float32)
    assert check_stamp(stamp, invvar) == []
    bad = stamp.copy()
    bad[0, 5, 5] = np.nan
    bad[1, 7, 7] = np.inf
    bad[2] = 0.0
    iv = invvar.copy()
    iv[0, 0, 0] = -1.0
    iv[1] = 0.0
    iv[2, 3, 3] = np.nan
    assert check_stamp(bad, iv) == ["nonfinite_image_g", "nonfinite_image_r", "zero_image_z", "negative_invvar_g",
                                    "no_coverage_r", "nonfinite_invvar_z"]
    assert check_stamp(bad[:2], None, bands="gr") == ["nonfinite_image_g", "nonfinite_image_r"]
    assert check_stamp(stamp, invvar[:2]) == ["invvar_shape_mismatch"]
    assert check_stamp(stamp[0]) == ["bad_shape"]
