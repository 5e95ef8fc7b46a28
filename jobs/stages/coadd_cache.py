"""Stage 4b: copy the DR10 coadd files a manifest needs into the project's bucket, once per brick.

    dhs coadd-cache --manifest MANIFEST --source URL_TEMPLATE_OR_ROOT --dest s3://bucket/prefix [--workers 8]

For every brick named in the manifest, the files stage 4c reads (``jobs.cutouts.coadds``: image, invvar
and psfsize per band, and maskbits, in the DR10 layout
``coadd/<bri>/<brick>/legacysurvey-<brick>-<kind>[-<band>].fits.fz``) are copied from the public
HTTP tree (an URL template with ``{bri}``, ``{brick}``, ``{filename}``; default the NERSC portal)
or from a coadd root on S3 / disk, to ``<dest>/coadd/...``, so ``dhs inject --coadds <dest>`` reads them.

- Parallel over bricks (threads: the work is network-bound), one file in memory per worker.
- Retried with exponential backoff (``backoff_s * 2**attempt``) on transient failures (HTTP 5xx/429,
  timeouts, resets, truncated bodies); a 404/403 is final.
- Never a partial object under a final key: each file is buffered and written in one atomic put.
- All or nothing per brick: a brick's ``_dhs_cache.json`` (size + sha256 of each file) is written
  last; a brick that fails has its files removed, so its manifest rows become rejects in 4c
  (``missing_band:*``), and is listed with the reason in ``<dest>/_cache_report.json``.
- Resumable: a brick whose marker lists files all present with the recorded sizes is skipped
  without contacting the source.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import http.client
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass

import pyarrow.fs as pafs

from dhs_gen.errors import DhsError, InvalidValueError, check_range
from jobs.cutouts.coadds import FILE_KINDS, coadd_file
from jobs.runtime import outputs, storage

DEFAULT_URL_TEMPLATE = ("https://portal.nersc.gov/cfs/cosmo/data/legacysurvey/dr10/south/coadd/"
                        "{bri}/{brick}/{filename}")
MARKER_NAME = "_dhs_cache.json"
REPORT_NAME = "_cache_report.json"
PERMANENT_HTTP = (400, 401, 403, 404, 410)   # retrying cannot help


class FetchError(DhsError):
    """A coadd file could not be fetched; ``transient`` says whether a retry may help."""

    def __init__(self, source: str, reason: str, transient: bool):
        self.source, self.reason, self.transient = source, reason, transient
        super().__init__(f"{source}: {reason}", value=source)

    def __reduce__(self):
        return type(self), (self.source, self.reason, self.transient)


def brick_filenames(brickname: str, bands: str = "grz") -> list[str]:
    """DR10 file names of one brick that 4c reads: image/invvar/psfsize per band, then maskbits."""
    names = [coadd_file("", brickname, kind, b).rsplit("/", 1)[-1] for b in bands for kind in FILE_KINDS]
    return names + [coadd_file("", brickname, "maskbits").rsplit("/", 1)[-1]]


def manifest_bricks(manifest_uri: str) -> list[str]:
    """Sorted distinct brick names of a committed 4a manifest (only its ``brickname`` column is read)."""
    outputs.require_input(manifest_uri, stage="4a_manifest")
    names = set()
    for uri in outputs.dataset_files(manifest_uri):
        names.update(storage.read_parquet(uri, columns=["brickname"]).column(0).to_pylist())
    return sorted(n for n in names if n)


class HttpSource:
    """Files from an HTTP(S) tree: ``template.format(bri=, brick=, filename=)``."""

    def __init__(self, template: str, timeout_s: float = 60.0):
        if "{filename}" not in template:
            template = template.rstrip("/") + "/{bri}/{brick}/{filename}"
        self.template, self.timeout_s = template, timeout_s

    def url(self, brick: str, filename: str) -> str:
        return self.template.format(bri=brick[:3], brick=brick, filename=filename)

    def fetch(self, brick: str, filename: str) -> bytes:
        return http_get(self.url(brick, filename), self.timeout_s)


def http_get(url: str, timeout_s: float) -> bytes:
    """The body of one GET; :class:`FetchError` says whether a retry may help (5xx, 429, resets, truncation)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:   # noqa: S310 - http(s) only
            data = resp.read()
            expected = resp.headers.get("Content-Length")
    except urllib.error.HTTPError as err:
        raise FetchError(url, f"HTTP {err.code}", err.code not in PERMANENT_HTTP) from None
    except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise FetchError(url, f"{type(err).__name__}: {err}", True) from None
    if expected is not None and int(expected) != len(data):
        raise FetchError(url, f"truncated body: {len(data)} of {expected} bytes", True)
    return data


class StorageSource:
    """Files from a DR10 coadd root on S3 or disk (the folder holding ``<bri>/``, or its parent)."""

    def __init__(self, root: str):
        inner = storage.join(root, "coadd")
        self.root = inner if storage.exists(inner) else root

    def url(self, brick: str, filename: str) -> str:
        return storage.join(self.root, brick[:3], brick, filename)

    def fetch(self, brick: str, filename: str) -> bytes:
        uri = self.url(brick, filename)
        try:
            return storage.read_bytes(uri)
        except FileNotFoundError:
            raise FetchError(uri, "not found", False) from None
        except OSError as err:
            raise FetchError(uri, f"{type(err).__name__}: {err}", True) from None


def make_source(source: str, timeout_s: float = 60.0):
    """:class:`HttpSource` for ``http(s)://`` templates, :class:`StorageSource` otherwise."""
    if source.startswith(("http://", "https://")):
        return HttpSource(source, timeout_s)
    return StorageSource(source)


@dataclass(frozen=True)
class CacheConfig:
    """How to fetch: bands, threads, retries and backoff (seconds), per-request timeout (seconds)."""

    bands: str = "grz"
    workers: int = 8
    retries: int = 4
    backoff_s: float = 1.0
    timeout_s: float = 60.0

    def __post_init__(self):
        if not self.bands or any(b not in "grizY" for b in self.bands):
            raise InvalidValueError("bands", self.bands, "letters of 'grizY', e.g. 'grz'")
        check_range("workers", self.workers, 1, 256)
        check_range("retries", self.retries, 0, 20)
        check_range("backoff_s", self.backoff_s, 0.0, 600.0)
        check_range("timeout_s", self.timeout_s, 0.0, 3600.0, lo_open=True)


def fetch_with_retries(source, brick: str, filename: str, cfg: CacheConfig, sleep=time.sleep) -> tuple[bytes, int]:
    """``(bytes, attempts)``; transient failures are retried ``cfg.retries`` times, waiting ``backoff_s * 2**k``."""
    for attempt in range(cfg.retries + 1):
        try:
            return source.fetch(brick, filename), attempt + 1
        except FetchError as err:
            if not err.transient or attempt == cfg.retries:
                raise FetchError(err.source, f"{err.reason} (after {attempt + 1} attempt(s))", err.transient) from None
            sleep(cfg.backoff_s * 2**attempt)
    raise AssertionError("unreachable")


def _sizes(uris: list[str]) -> list[int | None]:
    """Size in bytes of each file (None where absent)."""
    if not uris:
        return []
    fs, _ = storage.resolve(uris[0])
    infos = fs.get_file_info([storage.resolve(u)[1] for u in uris])
    return [i.size if i.type == pafs.FileType.File else None for i in infos]


def brick_is_cached(dest_root: str, brick: str, filenames: list[str]) -> bool:
    """True if the brick's marker lists exactly ``filenames`` and each is present with the recorded size."""
    marker = storage.join(dest_root, brick[:3], brick, MARKER_NAME)
    try:
        recorded = storage.read_json(marker)["files"]
    except (FileNotFoundError, KeyError, ValueError):
        return False
    if sorted(recorded) != sorted(filenames):
        return False
    sizes = _sizes([storage.join(dest_root, brick[:3], brick, f) for f in filenames])
    return all(s == recorded[f]["bytes"] for f, s in zip(filenames, sizes, strict=True))


def cache_brick(brick: str, source, dest_root: str, cfg: CacheConfig, sleep=time.sleep) -> dict:
    """Copy one brick's files (all or nothing); returns ``{brick, status, reason, files, bytes, attempts}``.

    ``status`` is ``skipped`` (already cached), ``fetched`` or ``failed`` (files removed, ``reason`` set).
    """
    filenames = brick_filenames(brick, cfg.bands)
    folder = storage.join(dest_root, brick[:3], brick)
    if brick_is_cached(dest_root, brick, filenames):
        return {"brick": brick, "status": "skipped", "reason": None, "files": 0, "bytes": 0, "attempts": 0}
    storage.delete_file(storage.join(folder, MARKER_NAME))   # stale marker: the brick is incomplete until the end
    record, attempts = {}, 0
    try:
        for name in filenames:
            data, n = fetch_with_retries(source, brick, name, cfg, sleep)
            attempts += n
            storage.write_bytes(storage.join(folder, name), data)   # one atomic put per file
            record[name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    except FetchError as err:
        for name in filenames:   # all or nothing: 4c must see the brick as absent, not half there
            storage.delete_file(storage.join(folder, name))
        return {"brick": brick, "status": "failed", "reason": str(err), "files": 0, "bytes": 0,
                "attempts": attempts}
    storage.write_json(storage.join(folder, MARKER_NAME),
                       {"brick": brick, "source": source.url(brick, "{filename}"), "files": record})
    return {"brick": brick, "status": "fetched", "reason": None, "files": len(record),
            "bytes": sum(r["bytes"] for r in record.values()), "attempts": attempts}


def run(manifest_uri: str, source: str, dest: str, cfg: CacheConfig | None = None, progress: bool = True,
        sleep=time.sleep) -> dict:
    """Cache every brick of ``manifest_uri`` from ``source`` into ``<dest>/coadd``; write and return the report.

    Returns
    -------
    dict
        ``_cache_report.json``: ``fetched`` / ``skipped`` brick names, ``failed`` ``[{brick, reason}]``,
        ``bytes_fetched``, ``files_fetched``, ``attempts``, ``seconds``, and the inputs.
    """
    from tqdm import tqdm

    cfg = cfg or CacheConfig()
    t0 = time.perf_counter()
    bricks = manifest_bricks(manifest_uri)
    src = make_source(source, cfg.timeout_s)
    dest_root = storage.join(dest, "coadd")
    results = []
    with ThreadPoolExecutor(max_workers=int(cfg.workers)) as pool, \
            tqdm(total=len(bricks), unit="brick", desc="4b coadd cache", disable=not progress, file=sys.stderr) as bar:
        futures = [pool.submit(cache_brick, b, src, dest_root, cfg, sleep) for b in bricks]
        for fut in as_completed(futures):
            results.append(fut.result())
            bar.update(1)
    results.sort(key=lambda r: r["brick"])
    by = {s: [r for r in results if r["status"] == s] for s in ("fetched", "skipped", "failed")}
    report = {
        "stage": "4b_coadd_cache", "manifest": manifest_uri, "source": source, "dest": dest,
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, "n_bricks": len(bricks),
        "fetched": [r["brick"] for r in by["fetched"]], "skipped": [r["brick"] for r in by["skipped"]],
        "failed": [{"brick": r["brick"], "reason": r["reason"]} for r in by["failed"]],
        "files_fetched": sum(r["files"] for r in results), "bytes_fetched": sum(r["bytes"] for r in results),
        "attempts": sum(r["attempts"] for r in results), "seconds": time.perf_counter() - t0,
        "git_sha": outputs.git_sha(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(storage.join(dest, REPORT_NAME), report)
    return report


def add_fetch_args(p: argparse.ArgumentParser, what: str) -> None:
    """The fetching options of the 4b caches (:class:`CacheConfig`): workers, retries, backoff, timeout."""
    p.add_argument("--workers", type=int, default=8, help=f"parallel {what} (default 8)")
    p.add_argument("--retries", type=int, default=4, help="retries of a transient failure (default 4)")
    p.add_argument("--backoff-s", type=float, default=1.0, help="first retry wait, s, doubled each time (default 1)")
    p.add_argument("--timeout-s", type=float, default=60.0, help="per-request timeout, s (default 60)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs coadd-cache", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--manifest", required=True, help="4a manifest directory or s3:// URI")
    p.add_argument("--source", default=DEFAULT_URL_TEMPLATE,
                   help="URL template with {bri} {brick} {filename}, or a coadd root (s3:// or local); "
                        "default: the DR10 south tree on the NERSC portal")
    p.add_argument("--dest", required=True, help="cache root (s3://bucket/prefix or local); files go to DEST/coadd/")
    p.add_argument("--bands", default="grz", help="bands (default grz)")
    add_fetch_args(p, "bricks")
    p.add_argument("--strict", action="store_true", help="exit 1 if any brick failed (default: only if all did)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = CacheConfig(args.bands, args.workers, args.retries, args.backoff_s, args.timeout_s)
    except ValueError as err:
        print(f"dhs coadd-cache: {err}", file=sys.stderr)
        return 2
    r = run(args.manifest, args.source, args.dest, cfg, progress=not args.no_progress)
    print(f"4b coadd cache: {len(r['fetched'])} fetched, {len(r['skipped'])} skipped, {len(r['failed'])} failed "
          f"of {r['n_bricks']} bricks ({r['bytes_fetched'] / 1e6:.1f} MB in {r['seconds']:.1f} s) -> "
          f"{storage.join(args.dest, REPORT_NAME)}")
    for f in r["failed"]:
        print(f"  failed {f['brick']}: {f['reason']}", file=sys.stderr)
    all_failed = r["n_bricks"] > 0 and len(r["failed"]) == r["n_bricks"]
    return 1 if r["failed"] and (args.strict or all_failed) else 0


if __name__ == "__main__":
    sys.exit(main())
