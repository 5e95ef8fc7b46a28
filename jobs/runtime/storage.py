"""One storage helper for local paths and ``s3://`` URIs, on ``pyarrow.fs``.

Every read and write of the project goes through here, so the same code runs on a laptop, on
EMR and against a real local S3-compatible server in tests. A URI is a local path (``file://``
accepted) or ``s3://bucket/key`` (``s3a://`` accepted); functions that return URIs keep the
caller's form.

S3 honours ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` (a local server in tests, unset on EMR)
and ``AWS_REGION`` / ``AWS_DEFAULT_REGION``. Credentials come from the standard AWS chain only
(environment, profile, instance role), resolved by the AWS SDK inside pyarrow: never from configs,
and never logged. Buckets are never created implicitly (``allow_bucket_creation=False``); tests and
the demo call :func:`ensure_bucket`.

Writes are atomic per file: a local write goes to a temporary name beside the target and is
renamed; an S3 object (single or multipart upload) only appears when the upload completes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from dhs_gen.errors import InvalidValueError
from dhs_gen.json_values import json_safe

#: Rows per record batch in :func:`iter_parquet_batches` (a few MB of stamps).
DEFAULT_BATCH_ROWS = 1024
#: Parquet compression everywhere (DESIGN.md: "Parquet everywhere (zstd)").
PARQUET_COMPRESSION = "zstd"
#: Pixel columns of stamp tables (``stamp_npz``: the seed's Gen5 stamps): never dictionary-encoded
#: (costs read time, saves nothing), and not copied into score tables.
PIXEL_COLUMNS = ("image", "invvar", "stamp_npz")
#: Codec of the ``image`` column, the one the training reader decodes every epoch: none (every
#: other column: zstd). Real DR10 pixels do not compress with a fast codec (measured on the shared
#: DR10 cutouts: zstd level -1 1.00x, lz4 1.00x, zstd level 1 1.07x), and decompressing is one
#: more pass over every stamp: uncompressed, the column reads 1.8x faster than at zstd level -1
#: and 9x faster than at level 1 (``make bench`` prints both), which is what lets one reader
#: process pass 20k stamps/s.
IMAGE_COMPRESSION = "none"


@functools.lru_cache(maxsize=16)  # asked once per schema, not once per task file
def _parquet_column_paths(schema: pa.Schema) -> tuple[str, ...]:
    """Parquet column paths (leaves, e.g. ``image_shape.list.element``) pyarrow writes for
    ``schema``: the keys of per-column writer options, asked of pyarrow itself (an empty file)
    so that no nested type is missed (a column missing from a per-column codec dict would be
    written uncompressed)."""
    sink = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), sink)
    written = pq.ParquetFile(pa.BufferReader(sink.getvalue())).schema
    return tuple(written.column(j).path for j in range(len(written)))


def stamp_parquet_options(schema: pa.Schema) -> dict:
    """``pyarrow.parquet`` writer keywords for a stamp table (stage 4c and the benchmark's
    synthetic stamps): ``image`` uncompressed, every other column zstd; no dictionary pages for
    the pixel columns."""
    paths = _parquet_column_paths(schema)
    return {"compression": {p: IMAGE_COMPRESSION if p == "image" else PARQUET_COMPRESSION for p in paths},
            "use_dictionary": [f.name for f in schema if f.name not in PIXEL_COLUMNS]}


_S3_SCHEMES = ("s3://", "s3a://")


def is_s3(uri) -> bool:
    """True for ``s3://`` (and ``s3a://``) URIs."""
    return str(uri).startswith(_S3_SCHEMES)


def _s3_endpoint() -> tuple[str | None, str]:
    """(host[:port] or None, scheme) from the environment; the service-specific variable wins (AWS SDK rule)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None, "https"
    scheme, sep, host = endpoint.partition("://")
    return (host.rstrip("/"), scheme) if sep else (endpoint.rstrip("/"), "https")


def _credentials_fingerprint() -> str:
    """A digest of the credential-selecting environment, so a changed identity gets a new filesystem.

    Only the digest is kept (as a cache key); the values are never stored or logged.
    """
    names = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
    return hashlib.sha256("\0".join(os.environ.get(n, "") for n in names).encode()).hexdigest()


@functools.lru_cache(maxsize=16)
def _s3_filesystem(endpoint: str | None, scheme: str, region: str | None, allow_bucket_creation: bool,
                   _fingerprint: str) -> pafs.S3FileSystem:
    kwargs = {"allow_bucket_creation": allow_bucket_creation, "allow_bucket_deletion": False}
    if endpoint:
        kwargs.update(endpoint_override=endpoint, scheme=scheme)
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


@functools.lru_cache(maxsize=64)
def _bucket_region(bucket: str) -> str | None:
    """The bucket's region on AWS when none is configured (a bucket outside the default region fails otherwise)."""
    try:
        return pafs.resolve_s3_region(bucket)
    except (OSError, ValueError):
        return None


def _s3(bucket: str, allow_bucket_creation: bool = False) -> pafs.S3FileSystem:
    endpoint, scheme = _s3_endpoint()
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if not region and not endpoint and bucket:
        region = _bucket_region(bucket)
    return _s3_filesystem(endpoint, scheme, region, allow_bucket_creation, _credentials_fingerprint())


def resolve(uri) -> tuple[pafs.FileSystem, str]:
    """URI -> (filesystem, path inside it).

    Parameters
    ----------
    uri : str or Path
        Local path, ``file://`` URI, or ``s3://bucket/key``.

    Returns
    -------
    (pyarrow.fs.FileSystem, str)
        ``LocalFileSystem`` and an absolute path, or ``S3FileSystem`` and ``bucket/key`` (no
        trailing slash).
    """
    uri = str(uri)
    if is_s3(uri):
        bucket_key = uri.split("://", 1)[1].rstrip("/")
        return _s3(bucket_key.split("/", 1)[0]), bucket_key
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))


def open_for_read(uri):
    """A random-access input file: memory-mapped when local (no copy out of the page cache; the
    training reader's Parquet reads are 1.4x faster, measured), an S3 stream otherwise."""
    fs, path = resolve(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return pa.memory_map(path, "r")
    return fs.open_input_file(path)


def join(uri, *parts: str) -> str:
    """Append path components with ``/`` (also for local paths), keeping the URI's scheme.

    Parameters
    ----------
    uri : str or Path
        Base URI.
    *parts : str
        Components; empty ones are skipped, surrounding slashes are trimmed.
    """
    out = str(uri).rstrip("/") or "/"
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}" if out != "/" else f"/{part}"
    return out


def _uri_under(base: str, base_path: str, path: str) -> str:
    """The URI of ``path`` (inside a filesystem) written relative to ``base`` in the caller's form."""
    rel = os.path.relpath(path, base_path) if not is_s3(base) else path[len(base_path):].lstrip("/")
    return join(base, rel.replace(os.sep, "/"))


def exists(uri) -> bool:
    """True if a file or directory (or a non-empty S3 prefix) exists at ``uri``."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri) -> bool:
    """True if ``uri`` is a directory (on S3: a prefix with objects under it, or a bucket)."""
    fs, path = resolve(uri)
    return fs.get_file_info(path).type == pafs.FileType.Directory


def makedirs(uri) -> None:
    """Create a directory and its parents (on S3 this writes directory markers; the bucket must exist)."""
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def _ensure_parent(fs: pafs.FileSystem, path: str) -> None:
    # Only local files need their folder first; S3 keys need no parents (and markers would just add requests).
    if isinstance(fs, pafs.LocalFileSystem):
        fs.create_dir(os.path.dirname(path), recursive=True)


def list_files(uri, suffix: str | None = None, recursive: bool = False) -> list[str]:
    """URIs of the files in a directory, sorted.

    Parameters
    ----------
    uri : str
        Directory (or S3 prefix). A missing directory yields ``[]``.
    suffix : str, optional
        Keep only names ending with it (e.g. ``".parquet"``).
    recursive : bool
        Descend into sub-directories.

    Returns
    -------
    list of str
        File URIs in the caller's form (``s3://...`` or local), sorted; directories are not listed.
    """
    fs, path = resolve(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=recursive, allow_not_found=True))
    base = str(uri).rstrip("/")
    return sorted(_uri_under(base, path, i.path) for i in infos
                  if i.type == pafs.FileType.File and (suffix is None or i.base_name.endswith(suffix)))


def read_bytes(uri) -> bytes:
    """The whole content of one file (bytes)."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def _atomic_local_target(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")


def _write_with(uri, write) -> None:
    """Open ``uri`` for output and call ``write(stream)``; atomic locally (temp name + rename)."""
    fs, path = resolve(uri)
    _ensure_parent(fs, path)
    if not isinstance(fs, pafs.LocalFileSystem):
        with fs.open_output_stream(path) as out:   # the object appears only when the upload completes
            write(out)
        return
    tmp = _atomic_local_target(path)
    try:
        with fs.open_output_stream(tmp) as out:
            write(out)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(uri, data: bytes) -> None:
    """Write ``data`` to ``uri``, replacing it; readers never see a partial file."""
    _write_with(uri, lambda out: out.write(data))


def json_default(value):
    """``json.dumps`` fallback: numpy scalars/arrays via ``tolist()``, paths as strings."""
    # numpy scalars and arrays (row counts, timings) and paths appear in manifests.
    if hasattr(value, "tolist"):
        return json_safe(value.tolist())
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def config_hash(config: dict) -> str:
    """First 16 hex digits of sha256 over the canonical JSON (sorted keys, no spaces) of ``config``.

    Here rather than in :mod:`jobs.runtime.outputs` because :mod:`jobs.runtime.config` needs it
    and ``outputs`` imports ``config``.
    """
    blob = json.dumps(config, sort_keys=True, separators=(",", ":"), default=json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_json(uri):
    """Parse a JSON file."""
    return json.loads(read_bytes(uri).decode("utf-8"))


def write_json(uri, obj, indent: int = 2) -> None:
    """Write ``obj`` as strict UTF-8 JSON (sorted keys, numpy values converted, NaN / inf as null), atomically."""
    text = json.dumps(json_safe(obj), indent=indent, sort_keys=True, default=json_default, allow_nan=False)
    write_bytes(uri, (text + "\n").encode("utf-8"))


def _parquet_uris(uri_or_list) -> list[str]:
    """A file, a list of files, or a directory (its ``*.parquet`` files, not ``_``/``.`` ones)."""
    if isinstance(uri_or_list, str | Path):
        uri = str(uri_or_list)
        if is_dir(uri):
            return [u for u in list_files(uri, suffix=".parquet")
                    if not u.rsplit("/", 1)[-1].startswith(("_", "."))]
        return [uri]
    return [str(u) for u in uri_or_list]


def read_table(uri: str) -> pa.Table:
    """A catalog as a table, whatever its format: Parquet (file or dataset folder), CSV, or a FITS binary table.

    FITS tables (``.fits``, ``.fits.gz``, ``.fit``) are read with astropy; multi-dimensional columns
    are dropped (catalog columns are scalars). Column names are kept exactly as in the file.
    """
    import io

    text = str(uri).lower()
    if not exists(uri):
        raise FileNotFoundError(f"no such catalog: {uri}")
    if text.endswith(".csv") or text.endswith(".csv.gz"):
        import pyarrow.csv as pacsv

        data = read_bytes(uri)
        if text.endswith(".gz"):
            import gzip

            data = gzip.decompress(data)
        return pacsv.read_csv(io.BytesIO(data))
    if text.endswith((".fits", ".fits.gz", ".fit", ".fit.gz")):
        from astropy.table import Table

        data = read_bytes(uri)
        if data[:2] == b"\x1f\x8b":
            import gzip

            data = gzip.decompress(data)
        tab = Table.read(io.BytesIO(data), format="fits")
        cols = {}
        for name in tab.colnames:
            col = np.asarray(tab[name])
            if col.ndim != 1:
                continue
            # FITS is big-endian; Arrow takes native byte order only
            cols[name] = col.astype("U").tolist() if col.dtype.kind in "SU" else col.astype(col.dtype.newbyteorder("="))
        return pa.table(cols)
    return read_parquet(uri)


def read_parquet(uri_or_list, columns: Sequence[str] | None = None) -> pa.Table:
    """Read Parquet file(s) into one table (for small data; stream big data with :func:`iter_parquet_batches`).

    Parameters
    ----------
    uri_or_list : str or list of str
        A file, a directory of ``*.parquet`` files, or a list of files.
    columns : sequence of str, optional
        Columns to read (all by default).

    Returns
    -------
    pyarrow.Table
        The files concatenated in the given order (schemas unified); an empty table for no files.
    """
    tables = []
    for uri in _parquet_uris(uri_or_list):
        fs, path = resolve(uri)
        tables.append(pq.read_table(path, filesystem=fs, columns=None if columns is None else list(columns)))
    if not tables:
        return pa.table({})
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")


def iter_parquet_batches(uris, columns: Sequence[str] | None = None,
                         batch_size: int = DEFAULT_BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """Stream record batches from Parquet file(s); memory holds about one row group, never the dataset.

    Parameters
    ----------
    uris : str or iterable of str
        A file, a directory of ``*.parquet`` files, or files, read in order.
    columns : sequence of str, optional
        Columns to read (all by default).
    batch_size : int
        Maximum rows per yielded batch.
    """
    if int(batch_size) < 1:
        raise InvalidValueError("batch_size", batch_size, "must be a positive number of rows")
    for uri in _parquet_uris(uris):
        fs, path = resolve(uri)
        with fs.open_input_file(path) as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=int(batch_size),
                                                      columns=None if columns is None else list(columns))


def write_parquet(table: pa.Table, uri, row_group_rows: int | None = None) -> None:
    """Write one Parquet file (zstd), atomically.

    Parameters
    ----------
    table : pyarrow.Table
        Rows to write (a zero-row table writes a valid file holding only the schema).
    uri : str
        Target file.
    row_group_rows : int, optional
        Rows per row group (pyarrow's default otherwise); smaller groups stream with less memory.
    """
    _write_with(uri, lambda out: pq.write_table(table, out, compression=PARQUET_COMPRESSION,
                                                row_group_size=row_group_rows))


def open_input(uri):
    """A seekable binary file object (``read``/``seek``/``tell``), e.g. for ``astropy.io.fits.open``.

    Use as a context manager; S3 reads are ranged requests, so only the bytes read are fetched.
    """
    fs, path = resolve(uri)
    return fs.open_input_file(path)


def delete_file(uri, missing_ok: bool = True) -> None:
    """Delete one file; a missing one is fine unless ``missing_ok`` is False."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        if not missing_ok:
            raise


def delete_tree(uri) -> None:
    """Delete a directory with everything under it, or a single file; nothing happens if absent."""
    fs, path = resolve(uri)
    kind = fs.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        if is_s3(uri) and "/" not in path:
            # Never delete a bucket, only what is in it.
            fs.delete_dir_contents(path, missing_dir_ok=True)
        else:
            fs.delete_dir(path)
    elif kind == pafs.FileType.File:
        fs.delete_file(path)


def copy_file(src, dst) -> None:
    """Copy one file, within or across filesystems (local <-> S3); ``dst`` is replaced."""
    src_fs, src_path = resolve(src)
    dst_fs, dst_path = resolve(dst)
    _ensure_parent(dst_fs, dst_path)
    if type(src_fs) is type(dst_fs):
        src_fs.copy_file(src_path, dst_path)   # a server-side copy on S3: the bytes never leave it
    else:
        pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)


def move(src, dst) -> None:
    """Move one file (a rename locally; copy + delete on S3 or across filesystems); ``dst`` is replaced."""
    src_fs, src_path = resolve(src)
    dst_fs, dst_path = resolve(dst)
    if type(src_fs) is type(dst_fs):
        _ensure_parent(dst_fs, dst_path)
        src_fs.move(src_path, dst_path)
    else:
        copy_file(src, dst)
        src_fs.delete_file(src_path)


def ensure_bucket(uri) -> str:
    """Create the bucket of an ``s3://`` URI if it is missing (tests and the demo only, never on EMR).

    Returns
    -------
    str
        The bucket name.
    """
    if not is_s3(uri):
        raise InvalidValueError("uri", str(uri), "ensure_bucket needs an s3:// URI")
    bucket = str(uri).split("://", 1)[1].split("/", 1)[0]
    fs = _s3(bucket, allow_bucket_creation=True)
    if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
        fs.create_dir(bucket)
    return bucket


def local_copy(uri, cache_dir: str | None = None) -> str:
    """A local path holding the file or directory at ``uri`` (downloaded once for S3).

    Parameters
    ----------
    uri : str
        Local path (returned unchanged) or ``s3://`` file or prefix.
    cache_dir : str, optional
        Where downloads go; default ``$DHS_CACHE_DIR`` or ``<tmp>/dhs-cache``. Each URI gets its own
        sub-folder named by its hash; a file already there with the same size is reused.

    Returns
    -------
    str
        Local path of the copy.
    """
    if not is_s3(uri):
        return resolve(uri)[1]
    fs, path = resolve(uri)
    root = Path(cache_dir or os.environ.get("DHS_CACHE_DIR") or Path(tempfile.gettempdir()) / "dhs-cache")
    target = root / hashlib.sha256(str(uri).rstrip("/").encode()).hexdigest()[:16] / path.rsplit("/", 1)[-1]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        pairs = [(path, target, info.size)]
    elif info.type == pafs.FileType.Directory:
        found = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        pairs = [(i.path, target / i.path[len(path):].lstrip("/"), i.size) for i in found
                 if i.type == pafs.FileType.File]
    else:
        raise FileNotFoundError(f"{uri} does not exist")
    local = pafs.LocalFileSystem()
    for src, dst, size in pairs:
        if dst.is_file() and dst.stat().st_size == size:
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = _atomic_local_target(str(dst))
        pafs.copy_files(src, tmp, source_filesystem=fs, destination_filesystem=local)
        os.replace(tmp, dst)
    return str(target)

