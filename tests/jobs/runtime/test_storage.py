"""jobs.runtime.storage on both backends: the local filesystem and a real S3 server (SeaweedFS on 127.0.0.1).

Oracles: pyarrow/astropy reading the real files in the shared data folder directly, boto3 talking
to the S3 server directly, and plain byte equality.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.runtime import storage

PARENT_SAMPLE = "dr10/phase3_lrg_parent_sample.parquet"
FITS_EXAMPLE = "decals/zooniverse_examples/example_a.fits"


@pytest.fixture(params=["local", "s3"])
def base_uri(request, tmp_path):
    """A fresh, empty directory URI on each backend."""
    if request.param == "local":
        return str(tmp_path / "store")
    server = request.getfixturevalue("s3_env")
    return f"s3://{server.bucket}/{request.node.name.replace('[', '-').rstrip(']')}-{uuid.uuid4().hex[:8]}"


def test_join_and_resolve():
    assert storage.join("s3://b/pre/", "a", "/b/", "", "c.parquet") == "s3://b/pre/a/b/c.parquet"
    assert storage.join("/data/x", "y") == "/data/x/y"
    assert storage.join("/", "y") == "/y"
    fs, path = storage.resolve("file:///tmp/x/../y")
    assert path == "/tmp/y" and fs.type_name == "local"
    assert storage.is_s3("s3a://b/k") and not storage.is_s3("/s3://b")


def test_bytes_json_list_delete_round_trip(base_uri):
    names = ["b.bin", "a.bin", "sub/c.bin", "sub/deeper/d.txt"]
    payloads = {n: hashlib.sha256(n.encode()).digest() * (i + 1) for i, n in enumerate(names)}
    assert not storage.exists(base_uri)
    assert storage.list_files(base_uri) == []
    for name, data in payloads.items():
        storage.write_bytes(storage.join(base_uri, name), data)
    for name, data in payloads.items():
        assert storage.read_bytes(storage.join(base_uri, name)) == data
    assert storage.list_files(base_uri) == [f"{base_uri}/a.bin", f"{base_uri}/b.bin"]
    assert storage.list_files(base_uri, suffix=".bin", recursive=True) == [
        f"{base_uri}/{n}" for n in ("a.bin", "b.bin", "sub/c.bin")]
    assert storage.is_dir(storage.join(base_uri, "sub")) and not storage.is_dir(storage.join(base_uri, "a.bin"))

    doc = {"rows": np.int64(7), "seconds": np.float32(0.5), "ids": np.arange(3), "path": Path("/x")}
    storage.write_json(storage.join(base_uri, "m.json"), doc)
    assert storage.read_json(storage.join(base_uri, "m.json")) == {"rows": 7, "seconds": 0.5, "ids": [0, 1, 2],
                                                                   "path": "/x"}
    storage.write_bytes(storage.join(base_uri, "a.bin"), b"replaced")
    assert storage.read_bytes(storage.join(base_uri, "a.bin")) == b"replaced"

    storage.delete_tree(storage.join(base_uri, "sub"))
    assert storage.list_files(base_uri, recursive=True) == [f"{base_uri}/{n}" for n in ("a.bin", "b.bin", "m.json")]
    storage.delete_tree(base_uri)
    assert not storage.exists(base_uri) and storage.list_files(base_uri, recursive=True) == []
    storage.delete_tree(base_uri)   # deleting something absent is a no-op
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(storage.join(base_uri, "a.bin"))


def test_parquet_round_trip_on_real_catalog(base_uri, shared_data):
    expected = pq.read_table(shared_data / PARENT_SAMPLE)     # oracle: pyarrow on the real file
    halves = [expected.slice(0, 3000), expected.slice(3000)]
    uris = [storage.join(base_uri, f"part-{i}.parquet") for i in range(2)]
    for table, uri in zip(halves, uris, strict=True):
        storage.write_parquet(table, uri, row_group_rows=1000)

    assert storage.read_parquet(uris).equals(expected)
    assert storage.read_parquet(base_uri).equals(expected)   # a directory reads its *.parquet files in order
    cols = ["RA", "DEC", "BRICKNAME"]
    assert storage.read_parquet(uris[1], columns=cols).equals(halves[1].select(cols))

    with storage.open_input(uris[0]) as f:
        meta = pq.ParquetFile(f).metadata
    assert meta.num_row_groups == 3
    assert {meta.row_group(0).column(j).compression for j in range(meta.num_columns)} == {"ZSTD"}

    batches = list(storage.iter_parquet_batches(uris, columns=cols, batch_size=700))
    assert max(b.num_rows for b in batches) <= 700
    assert pa.Table.from_batches(batches).equals(expected.select(cols))


def test_iter_parquet_batches_is_lazy(tmp_path):
    """Batches of the first file come out before the second file is even opened (streaming)."""
    good = str(tmp_path / "good.parquet")
    storage.write_parquet(pa.table({"x": np.arange(10)}), good)
    batches = storage.iter_parquet_batches([good, str(tmp_path / "missing.parquet")], batch_size=4)
    assert [next(batches).num_rows for _ in range(3)] == [4, 4, 2]
    with pytest.raises(FileNotFoundError):
        next(batches)
    with pytest.raises(ValueError, match="batch_size"):
        next(storage.iter_parquet_batches([good], batch_size=0))


def test_local_write_is_atomic(tmp_path, monkeypatch):
    """A write that dies half way leaves the old file intact and no temporary behind."""
    target = tmp_path / "t.parquet"
    storage.write_parquet(pa.table({"x": [1, 2]}), str(target))
    before = target.read_bytes()

    def dies_half_way(table, out, **kwargs):
        out.write(b"PAR1 partial")
        raise OSError("disk vanished")

    monkeypatch.setattr(pq, "write_table", dies_half_way)
    with pytest.raises(OSError, match="disk vanished"):
        storage.write_parquet(pa.table({"x": [3]}), str(target))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["t.parquet"]


def test_fits_through_open_input(base_uri, shared_data):
    from astropy.io import fits

    src = shared_data / FITS_EXAMPLE
    uri = storage.join(base_uri, "example.fits")
    storage.copy_file(str(src), uri)
    with storage.open_input(uri) as f, fits.open(f) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header
    with fits.open(src) as oracle:
        np.testing.assert_array_equal(data, oracle[0].data)
        assert header["CD1_1"] == oracle[0].header["CD1_1"]


def test_copy_and_move_across_backends(s3_env, tmp_path):
    local_src = tmp_path / "src.bin"
    local_src.write_bytes(b"payload-123")
    s3_a = f"s3://{s3_env.bucket}/mv-{uuid.uuid4().hex[:8]}/a.bin"
    s3_b = s3_a.replace("a.bin", "nested/b.bin")
    storage.copy_file(str(local_src), s3_a)                 # local -> S3
    storage.move(s3_a, s3_b)                                # S3 -> S3 (server-side copy + delete)
    assert not storage.exists(s3_a)
    storage.move(s3_b, str(tmp_path / "back" / "c.bin"))    # S3 -> local
    assert not storage.exists(s3_b)
    assert (tmp_path / "back" / "c.bin").read_bytes() == b"payload-123"
    storage.move(str(tmp_path / "back" / "c.bin"), str(tmp_path / "d.bin"))
    assert (tmp_path / "d.bin").read_bytes() == b"payload-123" and not (tmp_path / "back" / "c.bin").exists()


def test_multipart_sized_object_on_s3(s3_env):
    """12 MiB goes up as a multipart upload (ETag '<md5>-<parts>'), and comes back byte-identical."""
    data = np.random.default_rng(0).bytes(12 * 2**20)
    key = f"big-{uuid.uuid4().hex[:8]}/blob.bin"
    storage.write_bytes(f"s3://{s3_env.bucket}/{key}", data)
    head = s3_env.client().head_object(Bucket=s3_env.bucket, Key=key)   # oracle: boto3 directly
    assert head["ContentLength"] == len(data)
    assert "-" in head["ETag"], f"expected a multipart ETag, got {head['ETag']}"
    body = s3_env.client().get_object(Bucket=s3_env.bucket, Key=key)["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert storage.read_bytes(f"s3://{s3_env.bucket}/{key}") == data


def test_buckets_are_never_created_implicitly(s3_env):
    bucket = f"fresh-{uuid.uuid4().hex[:8]}"
    with pytest.raises(OSError, match="(?i)bucket"):
        storage.write_bytes(f"s3://{bucket}/x.bin", b"x")
    assert storage.ensure_bucket(f"s3://{bucket}/some/prefix") == bucket
    assert storage.ensure_bucket(f"s3://{bucket}") == bucket     # idempotent
    storage.write_bytes(f"s3://{bucket}/x.bin", b"x")
    names = [b["Name"] for b in s3_env.client().list_buckets()["Buckets"]]
    assert bucket in names
    with pytest.raises(ValueError, match="s3://"):
        storage.ensure_bucket("/local/path")


def test_requests_are_signed_with_the_environment_credentials(s3_env, monkeypatch):
    """A wrong secret is refused: the server checks signatures, and a changed identity is picked up."""
    uri = f"s3://{s3_env.bucket}/auth-{uuid.uuid4().hex[:8]}.bin"
    storage.write_bytes(uri, b"ok")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(OSError):
        storage.read_bytes(uri)


def test_local_copy_downloads_once(s3_env, tmp_path):
    prefix = f"s3://{s3_env.bucket}/bank-{uuid.uuid4().hex[:8]}"
    storage.write_bytes(f"{prefix}/bank.npz", b"bank-bytes")
    storage.write_bytes(f"{prefix}/dir/a.txt", b"A")
    storage.write_bytes(f"{prefix}/dir/sub/b.txt", b"B")
    path = Path(storage.local_copy(f"{prefix}/bank.npz", cache_dir=str(tmp_path)))
    assert path.read_bytes() == b"bank-bytes" and path.name == "bank.npz"
    mtime = path.stat().st_mtime_ns
    assert storage.local_copy(f"{prefix}/bank.npz", cache_dir=str(tmp_path)) == str(path)
    assert path.stat().st_mtime_ns == mtime
    folder = Path(storage.local_copy(f"{prefix}/dir", cache_dir=str(tmp_path)))
    assert (folder / "a.txt").read_bytes() == b"A" and (folder / "sub" / "b.txt").read_bytes() == b"B"
    assert storage.local_copy(str(tmp_path / "x")) == str(tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        storage.local_copy(f"{prefix}/nope", cache_dir=str(tmp_path))


def test_stamp_parquet_options_give_every_nested_column_a_codec(tmp_path):
    schema = pa.schema([("image", pa.binary()), ("shape", pa.list_(pa.int32())), ("fixed", pa.list_(pa.int32(), 2)),
                        ("tags", pa.map_(pa.string(), pa.int32())), ("psf", pa.struct([("fwhm", pa.float32())]))])
    row = {"image": b"\0" * 8, "shape": [1, 2], "fixed": [3, 4], "tags": [("a", 1)], "psf": {"fwhm": 1.2}}
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([row], schema=schema), path, **storage.stamp_parquet_options(schema))
    rg = pq.ParquetFile(path).metadata.row_group(0)
    codecs = {rg.column(j).path_in_schema: rg.column(j).compression for j in range(rg.num_columns)}
    assert codecs.pop("image") == "UNCOMPRESSED"
    assert len(codecs) == 5 and set(codecs.values()) == {"ZSTD"}, codecs


def test_json_is_strict_nan_and_inf_become_null(tmp_path):
    import json as _json
    import math as _math

    import numpy as _np

    from jobs.runtime import storage as _storage

    uri = str(tmp_path / "x.json")
    _storage.write_json(uri, {"a": _math.nan, "b": [1.0, _math.inf], "c": _np.array([0.5, _np.nan]), "d": _np.float32(2)})
    text = (tmp_path / "x.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert _json.loads(text) == {"a": None, "b": [1.0, None], "c": [0.5, None], "d": 2.0}
