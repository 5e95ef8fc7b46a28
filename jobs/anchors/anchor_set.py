"""Real anchor sets: known lenses (label 1) and real hard negatives (label 0) with calibrated pixels.

    dhs anchors build --catalog CROSSMATCHED.parquet --cutouts local:DIR --out ANCHORS [--size 64]
    dhs anchors default --shared-data DIR --out ANCHORS        # the embedded default (see below)
    dhs anchors metrics --scores SCORES                        # the anchor gate: jobs.evaluation.gates

Output: ``jobs.runtime.schema.ANCHOR_SCHEMA`` Parquet (``part-00000.parquet`` + ``_manifest.json`` written
last; rows without pixels listed in ``_rejects.parquet`` and counted in the manifest). Images are
float32 ``(3, H, W)`` g, r, z in nanomaggies per 0.262" pixel; ``provenance`` says where the pixels
came from and every step applied (band selection, unit scaling, resampling, cropping).

Cutout sources (:mod:`jobs.cutouts.sources`, registry ``CUTOUT_SOURCES``, spec ``kind:arg``): ``local``
(a folder of DR10 ``.npz`` cutouts or FITS with a TAN WCS, matched by position), ``legacysurvey`` (the
public cutout service over HTTP, with retries) and ``coadd`` (DR10-layout coadd bricks via ``jobs.cutouts.coadds``).

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

import numpy as np
import pyarrow as pa

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import check_range
from dhs_gen.survey.bricks import bricknames_for
from dhs_gen.utils import hash_uint64
from jobs.cutouts.cutout import BANDS, Cutout, CutoutUnavailable
from jobs.cutouts.sources import LocalCutoutFolder, des_lrg_host_cutouts, make_cutout_source
from jobs.runtime import outputs, storage
from jobs.runtime.schema import ANCHOR_SCHEMA, encode_image

LABEL_OF_CLASS = {"known_lens": 1, "candidate": 1, "ring": 0, "merger": 0, "other": 0}


def anchor_id(name: str, ra, dec) -> str:
    """Stable id from the name and position (deg): ``anchor-<16 hex>``."""
    pos = "nopos" if ra is None else f"{float(ra):.6f}|{float(dec):.6f}"
    return f"anchor-{hash_uint64(f'{name}|{pos}', 'anchor'):016x}"


def anchor_row(meta: dict, cut: Cutout) -> dict:
    """One ANCHOR_SCHEMA row from catalog metadata (name, ra, dec, class, ...) and its pixels."""
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


def write_anchor_set(table: pa.Table, rejects: list[dict], out_uri: str, config: dict, inputs: dict,
                     overwrite: bool = False, timings: dict | None = None) -> dict:
    """Commit the anchor set (``_rejects.parquet`` beside it, counted); returns the manifest."""
    labels = table.column("label").to_pylist()
    return outputs.write_single_part("anchors", table, rejects, out_uri, config, inputs, overwrite, timings,
                                     extra={"n_label_1": labels.count(1), "n_label_0": labels.count(0)})


def dr10_candidate_rows(shared_data_dir, size_pix: int = 64) -> list[dict]:
    """ANCHOR_SCHEMA rows of the 6 real DR10 grade-B lens-candidate cutouts (label 1, class candidate)."""
    rows = []
    local = LocalCutoutFolder(os.path.join(str(shared_data_dir), "dr10", "cutouts"), match_radius_arcsec=0.5)
    for path, ra, dec in zip(local.paths, local.ra, local.dec, strict=True):
        with np.load(path, allow_pickle=False) as d:
            name, grade = str(d["meta_galaxy_id"]), str(d["meta_tier"]) if "meta_tier" in d.files else None
            brick = str(d["meta_brickname"]) if "meta_brickname" in d.files else None
        meta = {"name": name, "ra": float(ra), "dec": float(dec), "class": "candidate", "grade": grade,
                "source_catalog": "dr10_grade_b_cutouts", "brickname": brick}
        rows.append(anchor_row(meta, local.fetch(ra, dec, size_pix)))
    return rows


def build_default_anchor_set(shared_data_dir, out_uri: str, size_pix: int = 64, overwrite: bool = False) -> dict:
    """The embedded anchor set from the shared real data; returns the manifest.

    Label 1: the 6 real DR10 grade-B lens-candidate cutouts (class candidate). Label 0: the 46 DES
    LRG hosts and the DECaLS Zooniverse galaxies (class other; the bad-pixel example is rejected by
    the coverage check, not by name).
    """
    t0 = time.perf_counter()
    root = str(shared_data_dir)
    rows, rejects = dr10_candidate_rows(root, size_pix), []
    for meta, cut in des_lrg_host_cutouts(os.path.join(root, "des", "lrg_hosts"), size_pix):
        rows.append(anchor_row(meta, cut))
    zoo = LocalCutoutFolder(os.path.join(root, "decals", "zooniverse_examples"), match_radius_arcsec=0.5)
    for path, ra, dec in zip(zoo.paths, zoo.ra, zoo.dec, strict=True):
        name = "DECaLS_zooniverse_" + os.path.basename(path).split(".")[0]
        meta = {"name": name, "ra": float(ra), "dec": float(dec), "class": "other", "grade": None,
                "source_catalog": "decals_zooniverse"}
        try:
            rows.append(anchor_row(meta, zoo.read(path, size_pix)))
        except CutoutUnavailable as err:
            rejects.append({"name": name, "ra": float(ra), "dec": float(dec), "reason": err.reason,
                            "detail": err.detail})
    table = pa.Table.from_pylist(rows, ANCHOR_SCHEMA)
    return write_anchor_set(table, rejects, out_uri, {"size_pix": int(size_pix), "kind": "default"},
                            {"shared_data": root}, overwrite, {"total_s": time.perf_counter() - t0})


def anchors_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dhs anchors build|default``; prints a JSON summary of the manifest."""
    p = argparse.ArgumentParser(prog="dhs anchors", description="real anchor sets (known lenses + hard negatives); "
                                "`dhs anchors metrics --scores SCORES` runs the anchor gate on scored anchors")
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
    else:
        out = build_default_anchor_set(args.shared_data, args.out, args.size, args.overwrite)
    keys = ("rows_in", "rows_written", "rows_rejected", "rejected_by_reason", "extra")
    print(json.dumps({k: out[k] for k in keys}, indent=2, default=str))
    return 0


main = anchors_main

if __name__ == "__main__":
    sys.exit(anchors_main())
