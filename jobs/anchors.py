"""Real anchor sets: known lenses (label 1) and real hard negatives (label 0) with calibrated pixels.

    dhs anchors build --catalog CROSSMATCHED.parquet --cutouts local:DIR --out ANCHORS [--size 64]
    dhs anchors default --shared-data DIR --out ANCHORS        # the embedded default (see below)
    dhs anchors metrics --scores SCORES                        # dhs_gen.metrics.compute_anchor_metrics

Output: ``jobs.schema.ANCHOR_SCHEMA`` Parquet (``part-00000.parquet`` + ``_manifest.json`` written
last; rows without pixels listed in ``_rejects.parquet`` and counted in the manifest). Images are
float32 ``(3, H, W)`` g, r, z in nanomaggies per 0.262" pixel; ``provenance`` says where the pixels
came from and every step applied (band selection, unit scaling, resampling, cropping).

Cutout sources (:mod:`jobs.cutout_sources`, registry ``CUTOUT_SOURCES``, spec ``kind:arg``): ``local``
(a folder of DR10 ``.npz`` cutouts or FITS with a TAN WCS, matched by position), ``legacysurvey`` (the
public cutout service over HTTP, with retries) and ``coadd`` (DR10-layout coadd bricks via ``jobs.coadds``).

Units of the real inputs (verified, see ``tests/jobs/test_anchors.py``):

* DR10 ``.npz`` cutouts: nanomaggies per 0.262" pixel, used as they are.
* DES LRG hosts (``des/lrg_hosts``): DES coadd counts at zeropoint 30, so ``x 1e-3`` gives
  nanomaggies (22.5 - 30 = -7.5 mag = 1e-3). Checked: their 4"-radius aperture r magnitudes
  (median 20.1) and g - r, r - z colours (1.8, 1.2) sit where massive SDSS-spectroscopic LRGs sit, at
  the bright end of the real DR10 LRG sample (r median 21.1, colours 1.6 / 1.2); a factor 10 either
  way would put them 2.5 mag off; their sky noise (0.0016 / 0.0024 / 0.0068 nmgy per pixel) is
  DR10-like (DES is a little deeper). g, r, z kept (i, Y dropped); 0.263 -> 0.262"/pix, area-weighted.
* DECaLS Zooniverse FITS: the Legacy Surveys viewer resamples to finer pixels keeping *surface
  brightness* (values stay "nanomaggies per native 0.262" pixel area"). Converted that way, their
  blank-sky noise (frame corners) is 0.0016-0.0033 / 0.0026-0.0063 / 0.009-0.010 nmgy per 0.262"
  pixel in g / r / z, as in the real DR10 cutouts (0.0018 / 0.0027 / 0.0083); read as flux per
  fine pixel it would be 3.4-6.9x the survey noise. They are therefore converted to flux
  per source pixel (x (s / 0.262)^2) and rebinned area-weighted with the CD-matrix pixel scale.
  Stamps with exact-zero (no coverage) pixels in > 1% of the covered area are rejected
  (``example_bad_pix.fits``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import InvalidValueError, check_range
from dhs_gen.resample import area_weighted_resample, overlap_fractions  # noqa: F401  (re-exported)
from dhs_gen.utils import hash_uint64
from jobs.schema import ANCHOR_SCHEMA, encode_image

BANDS = "grz"
LABEL_OF_CLASS = {"known_lens": 1, "candidate": 1, "ring": 0, "merger": 0, "other": 0}
MAX_ZERO_FRACTION = 0.01


class CutoutUnavailable(Exception):
    """No usable pixels for a position: ``reason`` is a short code, ``detail`` the specifics."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

    def __reduce__(self):
        return type(self), (self.reason, self.detail)


@dataclass(frozen=True)
class AnchorCutout:
    """Standardised pixels: ``image`` (3, H, W) float32 g, r, z nanomaggies per 0.262" pixel."""

    image: np.ndarray
    invvar: np.ndarray | None
    provenance: str


def area_resample(image, src_pixscale_arcsec: float, dst_pixscale_arcsec: float, size_pix: int):
    """Rebin flux-per-pixel images onto a ``size_pix`` grid of another pixel scale, conserving flux.

    Each output pixel receives the flux of every input pixel in proportion to their overlap area
    (exact for pixels as uniform squares; no aliasing when downsampling). Image centres coincide.
    The (B, H, W) wrapper of :func:`dhs_gen.resample.area_weighted_resample`.

    Parameters
    ----------
    image : array (B, H, W)
        Flux per input pixel (e.g. nanomaggies).
    src_pixscale_arcsec, dst_pixscale_arcsec : float
        Input and output pixel scales, arcsec per pixel.
    size_pix : int
        Output side, pixels.

    Returns
    -------
    out : ndarray (B, size, size), float64, flux per output pixel.
    coverage : ndarray (size, size), fraction of each output pixel covered by the input, in [0, 1].
    """
    img = np.asarray(image, dtype=float)
    if img.ndim != 3:
        raise InvalidValueError("image", img, "must be (bands, H, W)")
    src = check_range("src_pixscale_arcsec", src_pixscale_arcsec, 0.0, 60.0, lo_open=True)
    dst = check_range("dst_pixscale_arcsec", dst_pixscale_arcsec, 0.0, 60.0, lo_open=True)
    return area_weighted_resample(img, src, dst, (size_pix, size_pix))


def standardize(image, pixscale_arcsec: float, bands: str, size_pix: int, source: str, scale: float = 1.0,
                scale_note: str = "", surface_brightness: bool = False, invvar=None) -> AnchorCutout:
    """Any (B, H, W) cutout -> g, r, z nanomaggies per 0.262" pixel, ``size_pix`` square, with provenance.

    Parameters
    ----------
    image : array (B, H, W)
        Pixels in ``bands`` order.
    pixscale_arcsec : float
        Input pixel scale, arcsec per pixel.
    bands : str
        Band letters of the planes, e.g. ``"grizy"``; g, r, z are kept.
    size_pix : int
        Output side, pixels.
    source : str
        Where the pixels came from (first item of the provenance).
    scale : float
        Factor to nanomaggies (e.g. 1e-3 for counts at zeropoint 30).
    scale_note : str
        Why that factor (goes into the provenance).
    surface_brightness : bool
        Values are nanomaggies per 0.262" pixel *area* on a finer/coarser grid (Legacy Surveys
        viewer resampling) rather than flux per input pixel.
    invvar : array (B, H, W), optional
        1/nanomaggies^2 per pixel; kept only when no resampling is needed.
    """
    img = np.asarray(image, dtype=float)
    steps = [source]
    missing = [b for b in BANDS if b not in bands]
    if img.ndim != 3 or img.shape[0] != len(bands) or missing:
        raise CutoutUnavailable("missing_band", f"bands {bands!r}, image shape {img.shape}, need {BANDS}")
    idx = [bands.index(b) for b in BANDS]
    img = img[idx] * float(scale)
    if bands != BANDS:
        steps.append(f"bands g,r,z of {bands}")
    if scale != 1.0:
        steps.append(f"x{scale:g} to nanomaggies ({scale_note})")
    ratio = pixscale_arcsec / PIXSCALE_DR10_ARCSEC
    if surface_brightness:
        img = img * ratio**2  # per 0.262" pixel area -> per input pixel
        steps.append("surface brightness per 0.262\" pixel -> flux per input pixel")
    if abs(ratio - 1.0) > 1e-6:
        img, coverage = area_resample(img, pixscale_arcsec, PIXSCALE_DR10_ARCSEC, size_pix)
        steps.append(f"area-weighted resample {pixscale_arcsec:.4f} -> {PIXSCALE_DR10_ARCSEC}\"/pix, {size_pix} px")
        inv = None
    else:
        h, w = img.shape[1:]
        y0, x0 = (h - size_pix) // 2, (w - size_pix) // 2
        coverage = np.zeros((size_pix, size_pix))
        out = np.zeros((3, size_pix, size_pix))
        inv = None if invvar is None else np.zeros((3, size_pix, size_pix))
        ys, xs = slice(max(0, y0), min(h, y0 + size_pix)), slice(max(0, x0), min(w, x0 + size_pix))
        yd, xd = slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0)
        out[:, yd, xd], coverage[yd, xd] = img[:, ys, xs], 1.0
        if inv is not None:
            inv[:, yd, xd] = np.asarray(invvar, float)[idx][:, ys, xs]
        img = out
        if (h, w) != (size_pix, size_pix):
            steps.append(f"centre {'crop' if h >= size_pix else 'pad'} {h}x{w} -> {size_pix} px")
    if not np.all(np.isfinite(img)):
        raise CutoutUnavailable("nonfinite_pixels", source)
    covered = coverage >= 0.999
    zero_frac = max(float(np.mean(plane[covered] == 0.0)) if covered.any() else 1.0 for plane in img)
    if zero_frac > MAX_ZERO_FRACTION:
        raise CutoutUnavailable("missing_coverage", f"{zero_frac:.1%} of covered pixels are exactly 0 in {source}")
    if not covered.all():
        steps.append(f"{np.mean(~covered):.1%} of pixels outside the input (zero)")
    inv32 = None if inv is None else inv.astype(np.float32)
    return AnchorCutout(img.astype(np.float32), inv32, "; ".join(steps))


def anchor_id(name: str, ra, dec) -> str:
    """Stable id from the name and position (deg): ``anchor-<16 hex>``."""
    pos = "nopos" if ra is None else f"{float(ra):.6f}|{float(dec):.6f}"
    return f"anchor-{hash_uint64(f'{name}|{pos}', 'anchor'):016x}"


def anchor_row(meta: dict, cut: AnchorCutout) -> dict:
    """One ANCHOR_SCHEMA row from catalog metadata (name, ra, dec, class, ...) and its pixels."""
    from dhs_gen.bricks import bricknames_for

    ra, dec = meta.get("ra"), meta.get("dec")
    brick = meta.get("brickname") or (str(bricknames_for(ra, dec)) if ra is not None else None)
    return {"anchor_id": anchor_id(meta["name"], ra, dec), "name": meta["name"], "ra": ra, "dec": dec,
            "label": LABEL_OF_CLASS[meta["class"]], "class": meta["class"], "grade": meta.get("grade"),
            "source_catalog": meta.get("source_catalog"), "theta_e_arcsec": meta.get("theta_e_arcsec"),
            "z_lens": meta.get("z", meta.get("z_lens")), "brickname": brick, "image": encode_image(cut.image),
            "invvar": None if cut.invvar is None else encode_image(cut.invvar),
            "image_shape": list(cut.image.shape), "bands": BANDS, "pixscale_arcsec": PIXSCALE_DR10_ARCSEC,
            "provenance": cut.provenance}


def build_anchor_set(catalog: pa.Table, source, size_pix: int = 64, include_candidates: bool = False):
    """Cutouts for every catalog row: label 1 known lenses (+ candidates), label 0 ring / merger / other.

    Returns
    -------
    table : pyarrow.Table in ANCHOR_SCHEMA
    rejects : list of dict ``{name, ra, dec, reason, detail}`` (rows without pixels, or not selected)
    """
    rows, rejects = [], []
    for meta in catalog.to_pylist():
        cls = meta.get("class")
        if cls not in LABEL_OF_CLASS or (cls == "candidate" and not include_candidates):
            rejects.append({"name": meta.get("name"), "ra": meta.get("ra"), "dec": meta.get("dec"),
                            "reason": f"class_not_selected:{cls}", "detail": ""})
            continue
        try:
            rows.append(anchor_row(meta, source.fetch(meta["ra"], meta["dec"], size_pix)))
        except CutoutUnavailable as err:
            rejects.append({"name": meta.get("name"), "ra": meta.get("ra"), "dec": meta.get("dec"),
                            "reason": err.reason, "detail": err.detail})
    return pa.Table.from_pylist(rows, ANCHOR_SCHEMA), rejects


REJECT_COLUMNS = pa.schema([("name", pa.string()), ("ra", pa.float64()), ("dec", pa.float64()),
                            ("reason", pa.string()), ("detail", pa.string())])


def write_anchor_set(table: pa.Table, rejects: list[dict], out_uri: str, config: dict, inputs: dict,
                     overwrite: bool = False, timings: dict | None = None) -> dict:
    """Write ``part-00000.parquet``, ``_rejects.parquet`` and, last, ``_manifest.json``; returns the manifest.

    Rejected rows have no pixels, so they are kept beside the data (not in it) and counted:
    ``rows_in = rows_written + rows_rejected``.
    """
    from jobs import outputs, storage

    outputs.prepare_output(out_uri, overwrite)
    by_reason: dict[str, int] = {}
    for r in rejects:
        by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    labels = table.column("label").to_pylist()
    manifest = outputs.build_manifest(
        "anchors", config, inputs, table.num_rows + len(rejects), table.num_rows, len(rejects), by_reason,
        timings or {}, extra={"n_label_1": labels.count(1), "n_label_0": labels.count(0),
                              "rejects_file": "_rejects.parquet"})
    name = outputs.part_name(0)
    storage.write_parquet(table, storage.join(out_uri, name))
    storage.write_parquet(pa.Table.from_pylist(rejects, REJECT_COLUMNS), storage.join(out_uri, "_rejects.parquet"))
    manifest.update(files=[name], file_rows={name: table.num_rows}, rows_in_files=table.num_rows,
                    committed_utc=manifest["created_utc"])
    storage.write_json(storage.join(out_uri, outputs.MANIFEST_NAME), manifest)
    return manifest


DES_ZEROPOINT_SCALE = 1e-3   # DES counts at zeropoint 30 -> nanomaggies (module docstring)
DES_PIXSCALE_ARCSEC = 0.263


def des_lrg_host_cutouts(des_dir: str, size_pix: int) -> list[tuple[dict, AnchorCutout]]:
    """The 46 real DES LRG hosts (no lensing): (metadata, cutout) per galaxy, label 0, class other."""
    from astropy.io import fits

    cubes = {}
    for band in BANDS:
        with fits.open(os.path.join(des_dir, f"{band}.fits")) as hdul:
            cubes[band] = np.asarray(hdul[0].data, dtype=float)       # (n_galaxies, 91, 91)
    sigma = np.loadtxt(os.path.join(des_dir, "map.txt"), skiprows=1)[:, 1] if os.path.exists(
        os.path.join(des_dir, "map.txt")) else None
    out = []
    for i in range(cubes["g"].shape[0]):
        cube = np.stack([cubes[b][i] for b in BANDS])
        sv = "" if sigma is None else f", SDSS sigma_v {sigma[i]:.0f} km/s"
        cut = standardize(cube, DES_PIXSCALE_ARCSEC, BANDS, size_pix, f"DES coadd LRG host #{i}{sv} (deeplenstronomy)",
                          scale=DES_ZEROPOINT_SCALE, scale_note="DES counts at zeropoint 30")
        meta = {"name": f"DES_LRG_host_{i:02d}", "ra": None, "dec": None, "class": "other", "grade": None,
                "source_catalog": "des_lrg_hosts", "brickname": None}
        out.append((meta, cut))
    return out


def build_default_anchor_set(shared_data_dir, out_uri: str, size_pix: int = 64, overwrite: bool = False) -> dict:
    """The embedded anchor set from the shared real data; returns the manifest.

    Label 1: the 6 real DR10 grade-B lens-candidate cutouts (class candidate). Label 0: the 46 DES
    LRG hosts and the DECaLS Zooniverse galaxies (class other; the bad-pixel example is rejected by
    the coverage check, not by name).
    """
    from jobs.cutout_sources import LocalCutoutFolder, _fits_cutout  # not at the top: it imports this module

    t0 = time.perf_counter()
    root = str(shared_data_dir)
    rows, rejects = [], []
    local = LocalCutoutFolder(os.path.join(root, "dr10", "cutouts"), match_radius_arcsec=0.5)
    for path, ra, dec in zip(local.paths, local.ra, local.dec, strict=True):
        with np.load(path, allow_pickle=False) as d:
            name, grade = str(d["meta_galaxy_id"]), str(d["meta_tier"]) if "meta_tier" in d.files else None
            brick = str(d["meta_brickname"]) if "meta_brickname" in d.files else None
        meta = {"name": name, "ra": float(ra), "dec": float(dec), "class": "candidate", "grade": grade,
                "source_catalog": "dr10_grade_b_cutouts", "brickname": brick}
        rows.append(anchor_row(meta, local.fetch(ra, dec, size_pix)))
    for meta, cut in des_lrg_host_cutouts(os.path.join(root, "des", "lrg_hosts"), size_pix):
        rows.append(anchor_row(meta, cut))
    zoo = LocalCutoutFolder(os.path.join(root, "decals", "zooniverse_examples"), match_radius_arcsec=0.5)
    for path, ra, dec in zip(zoo.paths, zoo.ra, zoo.dec, strict=True):
        name = "DECaLS_zooniverse_" + os.path.basename(path).split(".")[0]
        meta = {"name": name, "ra": float(ra), "dec": float(dec), "class": "other", "grade": None,
                "source_catalog": "decals_zooniverse"}
        try:
            from jobs.crossmatch import open_fits

            with open_fits(path) as hdul:
                rows.append(anchor_row(meta, _fits_cutout(hdul, f"fits {os.path.basename(path)}", size_pix, True)))
        except CutoutUnavailable as err:
            rejects.append({"name": name, "ra": float(ra), "dec": float(dec), "reason": err.reason,
                            "detail": err.detail})
    table = pa.Table.from_pylist(rows, ANCHOR_SCHEMA)
    return write_anchor_set(table, rejects, out_uri, {"size_pix": int(size_pix), "kind": "default"},
                            {"shared_data": root}, overwrite, {"total_s": time.perf_counter() - t0})


def anchor_metrics(scored: pa.Table, threshold: float = 0.5, thresholds: dict | None = None) -> dict:
    """``compute_anchor_metrics`` on ``dhs score`` output of an anchor set, plus per-class counts.

    Rows with a null score are counted (``n_unscored``) and left out of the metrics.
    """
    from dhs_gen.metrics import compute_anchor_metrics

    d = scored.select([c for c in ("score", "label", "class") if c in scored.column_names]).to_pylist()
    ok = [r for r in d if r["score"] is not None]
    m = compute_anchor_metrics([r["score"] for r in ok], [r["label"] for r in ok], threshold, thresholds)
    per_class = {}
    for r in ok:
        c = per_class.setdefault(r.get("class") or "unknown", {"n": 0, "n_at_or_above_threshold": 0})
        c["n"] += 1
        c["n_at_or_above_threshold"] += int(r["score"] >= threshold)
    return {**m.as_dict(), "n_unscored": len(d) - len(ok), "per_class": per_class}


def anchors_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dhs anchors build|default|metrics``; prints a JSON summary."""
    from jobs import storage
    from jobs.cutout_sources import make_cutout_source  # not at the top: it imports this module

    p = argparse.ArgumentParser(prog="dhs anchors", description="real anchor sets (known lenses + hard negatives)")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="cutouts for a (cross-matched) catalog")
    b.add_argument("--catalog", required=True, help="catalog Parquet (dhs catalogs / dhs hardneg output)")
    b.add_argument("--cutouts", required=True, help="local:DIR | coadd:ROOT | legacysurvey[:URL_TEMPLATE]")
    b.add_argument("--out", required=True)
    b.add_argument("--size", type=int, default=64, help="stamp side, pixels at 0.262\"/pix")
    b.add_argument("--include-candidates", action="store_true", help="label candidates 1 too")
    b.add_argument("--overwrite", action="store_true")
    d = sub.add_parser("default", help="the embedded default anchor set from the shared real data")
    d.add_argument("--shared-data", required=True)
    d.add_argument("--out", required=True)
    d.add_argument("--size", type=int, default=64)
    d.add_argument("--overwrite", action="store_true")
    m = sub.add_parser("metrics", help="anchor gate on `dhs score` output")
    m.add_argument("--scores", required=True)
    m.add_argument("--threshold", type=float, default=0.5)
    args = p.parse_args(argv)
    if args.cmd == "build":
        check_range("size", args.size, 8, 512)
        source = make_cutout_source(args.cutouts)   # fails before any cutout is fetched
        t0 = time.perf_counter()
        table, rejects = build_anchor_set(storage.read_parquet(args.catalog), source, args.size,
                                          args.include_candidates)
        cfg = {"size_pix": args.size, "cutouts": args.cutouts, "include_candidates": args.include_candidates}
        out = write_anchor_set(table, rejects, args.out, cfg, {"catalog": args.catalog}, args.overwrite,
                               {"total_s": time.perf_counter() - t0})
    elif args.cmd == "default":
        out = build_default_anchor_set(args.shared_data, args.out, args.size, args.overwrite)
    else:
        out = anchor_metrics(storage.read_parquet(args.scores), args.threshold)
    keys = ("rows_in", "rows_written", "rows_rejected", "rejected_by_reason", "extra")
    print(json.dumps({k: out[k] for k in keys} if args.cmd != "metrics" else out, indent=2, default=str))
    return 0


main = anchors_main

# The cutout sources moved to jobs.cutout_sources; their names stay importable from here. They are
# looked up on first use (PEP 562) rather than imported at the top, because jobs.cutout_sources
# builds on standardize above: an eager import would fail whenever it is imported first.
_CUTOUT_SOURCE_NAMES = ("LocalCutoutFolder", "LegacySurveyCutoutService", "CoaddCacheCutouts", "CUTOUT_SOURCES",
                        "make_cutout_source", "DEFAULT_SERVICE_URL")


def __getattr__(name: str):
    """The names of :mod:`jobs.cutout_sources`; AttributeError for any other missing name."""
    if name in _CUTOUT_SOURCE_NAMES:
        from jobs import cutout_sources

        return getattr(cutout_sources, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(anchors_main())
