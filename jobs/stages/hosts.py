"""``dhs hosts build``: real host cutouts -> a host dataset that stages 4a and 4c run on.

    dhs hosts build --cutouts SPEC --out HOSTS [--catalog CAT] [--size PIX] [--psf-fwhm-arcsec G,R,Z]
                    [--zeropoint ZP] [--pixscale-arcsec S] [--bands grizy] [--match-fwhm-arcsec G,R,Z]

``SPEC`` is a cutout source of :mod:`jobs.cutouts.sources` (the registry the anchor sets use):
``local:DIR`` (every layout of :mod:`jobs.cutouts.host_images`), ``legacysurvey[:URL]`` (the public
cutout service, image + invvar, with retries; needs ``--catalog``) or ``coadd:ROOT`` (DR10 bricks;
needs ``--catalog``). Without ``--catalog`` every cutout in the folder is a host at its WCS centre.
A catalog (Parquet, CSV or FITS; ``RA``/``DEC`` in any case, optional ``BRICKNAME``, ``FLUX_G/R/Z``,
``TYPE``, ``PSFSIZE_G/R/Z``) picks hosts by position (the nearest cutout within 1").

Each host row (``jobs.runtime.schema.HOST_SCHEMA``) holds a grz stamp at 0.262"/pix in
nanomaggies per pixel, its inverse variance, maskbits when known, the PSF FWHM per band and where
each came from. The PSF, in this order: the catalog's ``PSFSIZE_G/R/Z``; a PSF image beside the
cutout (its measured FWHM); the coadd ``psfsize`` map; ``--psf-fwhm-arcsec``. The inverse variance:
the file's, else a constant per band from the MAD of the stamp's border frame (``invvar_source``
says which; the arc's photon noise is drawn with it). ``--match-fwhm-arcsec`` convolves a sharper
survey (HSC, say) to DR10 seeing with a stated Gaussian kernel before resampling.

Inputs that give no host (no PSF, too small, no coverage, unreadable) are rows of ``_rejects.parquet``
with their reason: rows in = hosts written + rejected.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import time

import numpy as np
import pyarrow as pa

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import DhsError, InvalidValueError, check_range
from dhs_gen.survey.bricks import bricknames_for
from jobs.catalogs.crossmatch import nearest_within
from jobs.cutouts.coadds import HostStamp, cut_stamp, load_brick
from jobs.cutouts.cutout import BANDS, CutoutUnavailable
from jobs.cutouts.host_images import (
    NOISE_BORDER_PIX,
    Declared,
    HostImage,
    host_stamp,
    match_seeing,
    on_dr10_grid,
    read_fits_host,
    read_folder,
)
from jobs.cutouts.sources import (
    CoaddCacheCutouts,
    LegacySurveyCutoutService,
    LocalCutoutFolder,
    make_cutout_source,
)
from jobs.runtime import outputs, storage
from jobs.runtime.schema import HOST_SCHEMA, encode_image
from jobs.stages.manifest import host_id

MATCH_RADIUS_ARCSEC = 1.0
DEFAULT_SIZE_PIX = 64


def _floats3(text: str | None, name: str) -> tuple | None:
    if text is None:
        return None
    parts = [p for p in str(text).split(",") if p.strip()]
    if len(parts) != 3:
        raise InvalidValueError(name, text, "three comma-separated values for g, r, z (arcsec), e.g. 1.5,1.3,1.2")
    return tuple(check_range(f"{name}[{b}]", p, 0.0, 20.0, lo_open=True) for b, p in zip(BANDS, parts, strict=True))


def read_catalog(uri: str) -> list[dict]:
    """Catalog rows with lower-case keys: ra, dec (deg), and brickname, flux_*, type, psfsize_* when present."""
    table = storage.read_table(uri)
    cols = {c.lower(): c for c in table.column_names}
    if "ra" not in cols or "dec" not in cols:
        raise InvalidValueError("catalog", uri, f"needs RA and DEC columns (any case); has {table.column_names}")
    keep = [c for c in ("ra", "dec", "brickname", "flux_g", "flux_r", "flux_z", "type", "name",
                        "psfsize_g", "psfsize_r", "psfsize_z", "hardneg_source", "weight") if c in cols]
    return [{k: row[cols[k]] for k in keep} for row in table.select([cols[k] for k in keep]).to_pylist()]


def catalog_psf(row: dict | None) -> tuple | None:
    """The catalog's PSFSIZE_G/R/Z (arcsec) when all three are there and positive."""
    if not row:
        return None
    vals = [row.get(f"psfsize_{b}") for b in BANDS]
    if all(v is not None and np.isfinite(v) and v > 0 for v in vals):
        return tuple(float(v) for v in vals)
    return None


def host_row(stamp: HostStamp, meta: dict, psf_source: str, invvar_source: str, source: str, provenance: list) -> dict:
    """One HOST_SCHEMA row from an accepted stamp and its catalog / file metadata."""
    ra, dec = meta.get("ra"), meta.get("dec")
    brick = meta.get("brickname") or (str(bricknames_for(ra, dec)) if ra is not None else None)
    hid = host_id(brick, ra, dec) if ra is not None else f"host_{meta['name']}"
    return {"host_id": hid, "name": meta["name"], "ra": ra, "dec": dec, "brickname": brick,
            "host_flux_g_nmgy": meta.get("flux_g"), "host_flux_r_nmgy": meta.get("flux_r"),
            "host_flux_z_nmgy": meta.get("flux_z"), "host_type": meta.get("type"),
            "hardneg_source": meta.get("hardneg_source"), "weight": meta.get("weight"),
            "image": encode_image(stamp.image), "invvar": encode_image(stamp.invvar),
            "maskbits": None if stamp.maskbits is None else np.ascontiguousarray(stamp.maskbits, np.int32).tobytes(),
            "image_shape": list(stamp.image.shape), "bands": BANDS, "pixscale_arcsec": stamp.pixscale_arcsec,
            "dx_pix": stamp.dx_pix, "dy_pix": stamp.dy_pix,
            "psf_fwhm_g_arcsec": stamp.psf_fwhm_arcsec[0], "psf_fwhm_r_arcsec": stamp.psf_fwhm_arcsec[1],
            "psf_fwhm_z_arcsec": stamp.psf_fwhm_arcsec[2], "psf_source": psf_source,
            "invvar_source": invvar_source, "source": source, "provenance": "; ".join(provenance)}


def _catalog_meta(row: dict) -> dict:
    """A catalog row as host metadata, named by its ``name`` column or else its position."""
    return {"name": row.get("name") or f"{row['ra']:.6f}{row['dec']:+.6f}", **row}


def _brick_of(row: dict) -> str:
    return str(row.get("brickname") or bricknames_for(row["ra"], row["dec"]))


def _keep(result: tuple, rows: list, rejects: list) -> None:
    """File a ``(row, reject)`` result of :func:`from_host_image` where it belongs."""
    row, reject = result
    if row:
        rows.append(row)
    else:
        rejects.append(reject)


def _reject(meta: dict, reason: str, detail: str = "") -> dict:
    return {"name": meta.get("name"), "ra": meta.get("ra"), "dec": meta.get("dec"), "reason": reason, "detail": detail}


def from_host_image(host: HostImage, meta: dict, size: int, declared: Declared, source: str):
    """A host image (a cutout file) -> (host row, None) or (None, reject)."""
    psf, psf_source = catalog_psf(meta), "catalog PSFSIZE_G/R/Z"
    if psf is None and host.psf_fwhm_arcsec is not None:
        psf, psf_source = host.psf_fwhm_arcsec, host.psf_source
    if psf is None and declared.psf_fwhm_arcsec is not None:
        psf, psf_source = declared.psf_fwhm_arcsec, "declared (--psf-fwhm-arcsec)"
    if psf is None:
        return None, _reject(meta, "no_psf", "no PSFSIZE columns, no PSF image beside it, no --psf-fwhm-arcsec")
    provenance = list(host.provenance)
    if declared.match_fwhm_arcsec is not None:
        image, note = match_seeing(host.image, psf, declared.match_fwhm_arcsec, host.pixscale_arcsec,
                                   host.psf_images if psf_source == host.psf_source else None)
        if note:   # the file's invvar no longer describes the blurred noise: estimated on the stamp
            host = dataclasses.replace(host, image=image, invvar=None)
            psf = tuple(max(p, t) for p, t in zip(psf, declared.match_fwhm_arcsec, strict=True))
            psf_source += "; " + note
            provenance.append(note)
    stamp = host_stamp(host, size, psf, meta.get("ra"), meta.get("dec"))
    if not stamp.ok:
        return None, _reject(meta, stamp.reject_reason, host.name)
    on_grid = on_dr10_grid(host.pixscale_arcsec)
    provenance.append(f"cut {size}x{size} at the host's nearest pixel" if on_grid else
                      f"area-weighted resample {host.pixscale_arcsec:.4f} -> {PIXSCALE_DR10_ARCSEC}\"/pix, "
                      f"{size}x{size}, centred on the cutout centre")
    invvar_source = ("file" if host.invvar is not None and on_grid
                     else f"estimated: MAD of the {NOISE_BORDER_PIX}-pixel border frame of the whole cutout at 0.262\"/pix")
    return host_row(stamp, meta, psf_source, invvar_source, source, provenance), None


def build_local(folder: str, catalog: list[dict] | None, size: int, declared: Declared, source: str):
    """Hosts from a folder: every cutout at its centre, or the nearest cutout of each catalog row."""
    images, failed = read_folder(folder, declared)
    rows, rejects = [], [{"name": f, "ra": None, "dec": None, "reason": r, "detail": d} for f, r, d in failed]
    if catalog is None:
        pairs = [(h, {"name": h.name, "ra": h.ra, "dec": h.dec}) for h in images]
    else:
        placed = [h for h in images if h.ra is not None]
        ras, decs = np.array([h.ra for h in placed]), np.array([h.dec for h in placed])
        idx, _ = (nearest_within([c["ra"] for c in catalog], [c["dec"] for c in catalog], ras, decs,
                                 MATCH_RADIUS_ARCSEC) if placed else (np.full(len(catalog), -1), None))
        pairs = []
        for c, i in zip(catalog, idx, strict=True):
            meta = _catalog_meta(c)
            if i < 0:
                rejects.append(_reject(meta, "no_cutout", f"none within {MATCH_RADIUS_ARCSEC}\" in {folder}"))
            else:
                pairs.append((placed[i], meta))
    for host, meta in pairs:
        _keep(from_host_image(host, meta, size, declared, source), rows, rejects)
    return rows, rejects


def build_coadd(cutouts: CoaddCacheCutouts, catalog: list[dict], size: int, declared: Declared, source: str):
    """Hosts cut from DR10 bricks exactly as stage 4c cuts them (psfsize map unless the catalog has PSFSIZE)."""
    rows, rejects, brick = [], [], None
    for c in sorted(catalog, key=lambda r: (_brick_of(r), r["ra"])):   # each brick loaded once
        meta, name = _catalog_meta(c), _brick_of(c)
        if brick is None or brick.brickname != name:
            brick = load_brick(cutouts.root, name, BANDS)
        stamp = cut_stamp(brick, c["ra"], c["dec"], size)
        if not stamp.ok:
            rejects.append(_reject(meta, stamp.reject_reason, f"brick {name}"))
            continue
        psf, psf_source = catalog_psf(c), "catalog PSFSIZE_G/R/Z"
        if psf is None:
            psf, psf_source = stamp.psf_fwhm_arcsec, "coadd psfsize map at the host pixel"
        stamp.psf_fwhm_arcsec = psf
        rows.append(host_row(stamp, meta, psf_source, "coadd", source,
                             [f"coadd {cutouts.root} brick {name}, stamp corner ({stamp.x0}, {stamp.y0})"]))
    return rows, rejects


def build_service(service: LegacySurveyCutoutService, catalog: list[dict], size: int, declared: Declared,
                  source: str):
    """Hosts fetched from the cutout service (image + invvar HDUs), one request per catalog row."""
    from astropy.io import fits

    if "invvar" not in service.url_template:   # the viewer adds an invvar HDU per band on request
        service = LegacySurveyCutoutService(service.url_template + "&invvar", service.retries, service.backoff_s,
                                            service.timeout_s)
    if declared.pixscale_arcsec is None:   # the service is asked for 0.262"/pix (used when a file has no WCS)
        declared = dataclasses.replace(declared, pixscale_arcsec=PIXSCALE_DR10_ARCSEC)
    rows, rejects = [], []
    for c in catalog:
        meta = _catalog_meta(c)
        try:
            data = service.fetch_bytes(c["ra"], c["dec"], size + 2)
            with fits.open(io.BytesIO(data)) as hdul:
                host = read_fits_host(f"cutout_{meta['name']}.fits", hdul, declared)
        except CutoutUnavailable as err:
            rejects.append(_reject(meta, err.reason, err.detail))
            continue
        except OSError as err:
            rejects.append(_reject(meta, "corrupt_fits", str(err)[:200]))
            continue
        _keep(from_host_image(host, meta, size, declared, source), rows, rejects)
    return rows, rejects


def build_hosts(spec: str, out_uri: str, catalog_uri: str | None = None, size: int = DEFAULT_SIZE_PIX,
                declared: Declared | None = None, overwrite: bool = False) -> dict:
    """Build and commit a host dataset; returns its manifest (errors in the arguments raise before any read)."""
    t0 = time.perf_counter()
    declared = declared or Declared()
    size = int(check_range("size", size, 8, 1024, integer=True))
    source = make_cutout_source(spec)
    catalog = read_catalog(catalog_uri) if catalog_uri else None
    if catalog is None and not isinstance(source, LocalCutoutFolder):
        raise InvalidValueError("catalog", None, f"--cutouts {spec} needs --catalog (positions to cut)")
    if isinstance(source, LocalCutoutFolder):
        rows, rejects = build_local(source.root, catalog, size, declared, spec)
    elif isinstance(source, CoaddCacheCutouts):
        rows, rejects = build_coadd(source, catalog, size, declared, spec)
    else:
        rows, rejects = build_service(source, catalog, size, declared, spec)
    unique: dict = {}
    for r in rows:   # one row per host: a position listed twice would plan its tasks twice
        if r["host_id"] in unique:
            rejects.append(_reject(r, "duplicate_host", f"same host_id as an earlier row: {r['host_id']}"))
        else:
            unique[r["host_id"]] = r
    table = pa.Table.from_pylist([unique[k] for k in sorted(unique)], HOST_SCHEMA)
    config = {"cutouts": spec, "size_pix": size, "catalog": catalog_uri,
              "declared": {k: v for k, v in vars(declared).items() if v is not None}}
    by_psf: dict = {}
    for r in rows:
        key = r["psf_source"].split(";")[0]
        by_psf[key] = by_psf.get(key, 0) + 1
    return outputs.write_single_part("hosts", table, rejects, out_uri, config, {"cutouts": spec, "catalog": catalog_uri},
                                     overwrite, {"total_s": time.perf_counter() - t0},
                                     extra={"psf_sources": by_psf})


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs hosts", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="real host cutouts -> host dataset (Parquet + _manifest.json)")
    b.add_argument("--cutouts", required=True, help="local:DIR | legacysurvey[:URL_TEMPLATE] | coadd:ROOT")
    b.add_argument("--out", required=True, help="output directory (local or s3://)")
    b.add_argument("--catalog", help="host positions (Parquet, CSV or FITS with RA, DEC; optional PSFSIZE_G/R/Z)")
    b.add_argument("--size", type=int, default=DEFAULT_SIZE_PIX, help="stamp side at 0.262\"/pix (default 64)")
    b.add_argument("--psf-fwhm-arcsec", help="g,r,z PSF FWHM when nothing better is known, e.g. 1.5,1.3,1.2")
    b.add_argument("--zeropoint", type=float, help="AB zeropoint of files in counts (DES: 30, HSC: 27)")
    b.add_argument("--pixscale-arcsec", type=float, help="pixel scale of files without a usable WCS")
    b.add_argument("--bands", help="band letters of cube planes without BAND keywords, e.g. grizy")
    b.add_argument("--match-fwhm-arcsec", help="g,r,z seeing to convolve sharper images to, e.g. 1.5,1.3,1.2")
    b.add_argument("--overwrite", action="store_true", help="replace an existing output")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        declared = Declared(
            zeropoint=None if args.zeropoint is None else check_range("zeropoint", args.zeropoint, 0.0, 50.0),
            pixscale_arcsec=None if args.pixscale_arcsec is None else check_range(
                "pixscale_arcsec", args.pixscale_arcsec, 0.0, 60.0, lo_open=True),
            bands=args.bands, psf_fwhm_arcsec=_floats3(args.psf_fwhm_arcsec, "psf_fwhm_arcsec"),
            match_fwhm_arcsec=_floats3(args.match_fwhm_arcsec, "match_fwhm_arcsec"))
        manifest = build_hosts(args.cutouts, args.out, args.catalog, args.size, declared, args.overwrite)
    except (DhsError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    keys = ("rows_in", "rows_written", "rows_rejected", "rejected_by_reason", "extra")
    print(json.dumps({k: manifest[k] for k in keys}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
