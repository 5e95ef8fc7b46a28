"""Stage 4b for cutouts: fetch each host's cutout from the Legacy Surveys cutout service once, into a folder.

    dhs cutout-cache --catalog HOSTS.csv --dest DIR [--service URL_TEMPLATE] [--size 96] [--workers 8]

For every catalog position (``RA``/``DEC`` in any case) the viewer's ``cutout.fits`` with inverse
variance (image + invvar HDU per band, TAN WCS, 0.262"/pix) is written to
``DIR/cutout_<ra>_<dec>.fits``, which ``dhs hosts build --cutouts local:DIR --catalog HOSTS.csv``
then reads. The fetching is the brick cache's (:mod:`jobs.stages.coadd_cache`): threads, retries
with exponential backoff on transient failures (5xx, 429, resets, truncated bodies), a 404 final,
one atomic put per file (never a partial file), and a re-run skips every file already there.
``DIR/_cache_report.json`` lists what was fetched, skipped and failed (with the reason).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import DhsError, InvalidValueError, check_range
from jobs.runtime import outputs, storage
from jobs.stages.coadd_cache import (
    REPORT_NAME,
    CacheConfig,
    FetchError,
    add_fetch_args,
    fetch_with_retries,
    http_get,
)
from jobs.stages.hosts import read_catalog

DEFAULT_SERVICE = ("https://www.legacysurvey.org/viewer/cutout.fits?ra={ra}&dec={dec}&layer=ls-dr10"
                   f"&pixscale={PIXSCALE_DR10_ARCSEC}&size={{size}}&bands=grz&invvar")
DEFAULT_SIZE_PIX = 96


def cutout_filename(ra: float, dec: float) -> str:
    """``cutout_<ra>_<dec>.fits`` (deg, 6 decimals: ~4 mas), the viewer's own naming."""
    return f"cutout_{ra:.6f}_{dec:+.6f}.fits"


class ServiceCutouts:
    """The cutout service as a cache source: ``fetch(name, filename)`` of the file named for a position."""

    def __init__(self, template: str, size_pix: int, positions: dict, timeout_s: float = 60.0):
        for key in ("{ra}", "{dec}", "{size}"):
            if key not in template:
                raise InvalidValueError("service", template, f"URL template must contain {key}")
        self.template, self.size, self.positions, self.timeout_s = template, int(size_pix), positions, timeout_s

    def url(self, name: str, filename: str = "") -> str:
        ra, dec = self.positions[name]
        return self.template.format(ra=f"{ra:.7f}", dec=f"{dec:.7f}", size=self.size)

    def fetch(self, name: str, filename: str = "") -> bytes:
        return http_get(self.url(name), self.timeout_s)


def cache_cutout(name: str, source: ServiceCutouts, dest: str, cfg: CacheConfig, sleep=time.sleep) -> dict:
    """Fetch one cutout unless it is there; ``{name, status: skipped|fetched|failed, reason, bytes, attempts}``."""
    uri = storage.join(dest, name)
    if storage.exists(uri):   # files are written by one atomic put: present means complete
        return {"name": name, "status": "skipped", "reason": None, "bytes": 0, "attempts": 0}
    try:
        data, attempts = fetch_with_retries(source, name, name, cfg, sleep)
    except FetchError as err:
        return {"name": name, "status": "failed", "reason": str(err), "bytes": 0,
                "attempts": cfg.retries + 1 if err.transient else 1}
    if not data.startswith(b"SIMPLE"):
        return {"name": name, "status": "failed", "reason": f"{source.url(name)}: not a FITS file",
                "bytes": 0, "attempts": attempts}
    storage.write_bytes(uri, data)
    return {"name": name, "status": "fetched", "reason": None, "bytes": len(data), "attempts": attempts}


def run(catalog_uri: str, dest: str, service: str = DEFAULT_SERVICE, size_pix: int = DEFAULT_SIZE_PIX,
        cfg: CacheConfig | None = None, progress: bool = True, sleep=time.sleep) -> dict:
    """Cache the cutout of every catalog position into ``dest``; write and return ``_cache_report.json``."""
    from tqdm import tqdm

    cfg = cfg or CacheConfig()
    size = int(check_range("size", size_pix, 8, 3000, integer=True))
    t0 = time.perf_counter()
    positions = {cutout_filename(r["ra"], r["dec"]): (r["ra"], r["dec"]) for r in read_catalog(catalog_uri)}
    source = ServiceCutouts(service, size, positions, cfg.timeout_s)
    results = []
    with ThreadPoolExecutor(max_workers=int(cfg.workers)) as pool, \
            tqdm(total=len(positions), unit="cutout", desc="4b cutout cache", disable=not progress,
                 file=sys.stderr) as bar:
        for fut in as_completed([pool.submit(cache_cutout, n, source, dest, cfg, sleep) for n in sorted(positions)]):
            results.append(fut.result())
            bar.update(1)
    results.sort(key=lambda r: r["name"])
    by = {s: [r for r in results if r["status"] == s] for s in ("fetched", "skipped", "failed")}
    report = {
        "stage": "4b_cutout_cache", "catalog": catalog_uri, "service": service, "size_pix": size, "dest": dest,
        "n_positions": len(positions), "fetched": [r["name"] for r in by["fetched"]],
        "skipped": [r["name"] for r in by["skipped"]],
        "failed": [{"name": r["name"], "reason": r["reason"]} for r in by["failed"]],
        "bytes_fetched": sum(r["bytes"] for r in results), "attempts": sum(r["attempts"] for r in results),
        "seconds": time.perf_counter() - t0, "git_sha": outputs.git_sha(),
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    storage.write_json(storage.join(dest, REPORT_NAME), report)
    return report


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs cutout-cache", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--catalog", required=True, help="host positions (Parquet, CSV or FITS with RA, DEC)")
    p.add_argument("--dest", required=True, help="folder for the cutouts (local or s3://)")
    p.add_argument("--service", default=DEFAULT_SERVICE, help="URL template with {ra} {dec} {size} (default: DR10)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE_PIX, help="cutout side, pixels at 0.262\"/pix (default 96)")
    add_fetch_args(p, "requests")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = CacheConfig("grz", args.workers, args.retries, args.backoff_s, args.timeout_s)
        r = run(args.catalog, args.dest, args.service, args.size, cfg, progress=not args.no_progress)
    except (DhsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"4b cutout cache: {len(r['fetched'])} fetched, {len(r['skipped'])} skipped, {len(r['failed'])} failed "
          f"of {r['n_positions']} ({r['bytes_fetched'] / 1e6:.1f} MB in {r['seconds']:.1f} s) -> "
          f"{storage.join(args.dest, REPORT_NAME)}")
    for f in r["failed"]:
        print(f"  failed {f['name']}: {f['reason']}", file=sys.stderr)
    return 1 if r["failed"] and len(r["failed"]) == r["n_positions"] else 0


if __name__ == "__main__":
    sys.exit(main())
