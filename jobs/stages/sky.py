"""Write the embedded synthetic sky in the real DR10 coadd layout (offline, deterministic).

    dhs sky --out DIR [--n-bricks 4] [--size-pix 1200] [--seed 0] [--n-lrg 40]

Writes, for each brick (real brick names around RA 150, Dec 2 by default) and band g, r, z::

    DIR/coadd/<bri>/<brick>/legacysurvey-<brick>-image-<band>.fits.fz     nanomaggies per pixel
    DIR/coadd/<bri>/<brick>/legacysurvey-<brick>-invvar-<band>.fits.fz    1 / nanomaggies^2
    DIR/coadd/<bri>/<brick>/legacysurvey-<brick>-psfsize-<band>.fits.fz   PSF FWHM, arcsec
    DIR/coadd/<bri>/<brick>/legacysurvey-<brick>-maskbits.fits.fz         int32 DR10 maskbits

each a RICE-compressed image in HDU 1 (as DR10) with the brick's TAN WCS (CD keywords), plus
``DIR/parent_sample.parquet`` (the LRGs placed, with the columns and dtypes of the real Phase-3
parent sample), ``DIR/sky_objects.parquet`` (every object rendered, the truth) and
``DIR/sky_truth.json`` (seed, configuration, bricks, files, statistics).

Compression: images are quantised like DR10 (q = 16, i.e. a step of sigma/16, subtractive
dither 2 so exact zeros stay zero); invvar and psfsize with an absolute step of 1e-6 of their
median (relative error < 1e-6); maskbits losslessly (RICE on int32).
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
import pyarrow as pa

from dhs_gen import PIPELINE_VERSION
from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC, nmgy_to_mag
from dhs_gen.survey.bricks import brick_by_name, neighbour_bricks, wcs_header_cd
from dhs_gen.survey.skysim import (
    BANDS,
    DEPTH_GAL_MAG,
    FWHM_NOMINAL_ARCSEC,
    GAIN_E_PER_NMGY,
    MOFFAT_BETA,
    SATURATION_NMGY,
    SimulatedBrick,
    simulate_brick,
)
from dhs_gen.survey.skysim_scene import MASKBITS, SkyConfig
from dhs_gen.utils import hash_uint64, rng_for
from jobs.cutouts.coadds import coadd_file
from jobs.runtime import storage

#: Columns and dtypes of the real Phase-3 parent sample (dr10/phase3_lrg_parent_sample.parquet).
PARENT_SAMPLE_SCHEMA = pa.schema(
    [("RA", pa.float64()), ("DEC", pa.float64()), ("BRICKNAME", pa.string())]
    + [(f"FLUX_{b}", pa.float32()) for b in ("G", "R", "Z", "W1")]
    + [("TYPE", pa.string())]
    + [(f"{b}_mag", pa.float64()) for b in ("g", "r", "z", "w1")]
    + [("r_minus_z", pa.float64()), ("z_minus_w1", pa.float64())]
    + [(f"is_lrg_v{k}", pa.bool_()) for k in range(1, 6)]
    + [("phase3_ranking_mode", pa.string()), ("region_id", pa.int64()), ("phase3_region_rank", pa.int64())])

#: Phase-3 LRG colour cuts (z_mag max, r-z min, z-W1 min) of the variants v1..v5; v3 defines the sample.
LRG_CUTS = {1: (20.0, 0.5, 1.6), 2: (20.4, 0.4, 1.6), 3: (20.4, 0.4, 0.8), 4: (21.0, 0.4, 0.8), 5: (21.5, 0.3, 0.8)}
DEFAULT_CENTRE_DEG = (150.0, 2.0)
FILE_KINDS = ("image", "invvar", "psfsize")


def lrg_flags(z_mag, r_minus_z, z_minus_w1) -> dict:
    """``is_lrg_v1..v5`` boolean arrays from AB magnitudes and colours (Phase-3 cuts, strict inequalities)."""
    return {f"is_lrg_v{k}": (np.asarray(z_mag) < zmax) & (np.asarray(r_minus_z) > rz) & (np.asarray(z_minus_w1) > zw)
            for k, (zmax, rz, zw) in LRG_CUTS.items()}


def _hdu_bytes(data: np.ndarray, header, quantize_level: float, dither_seed: int) -> bytes:
    from astropy.io import fits

    hdu = fits.CompImageHDU(data=data, header=header, compression_type="RICE_1",
                            quantize_level=quantize_level, quantize_method=2, dither_seed=dither_seed)
    buf = io.BytesIO()
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(buf)
    # CHECKSUM / DATASUM as real DR10 files carry, on the compressed HDU as written; a fixed comment
    # instead of astropy's timestamp keeps the files bit-identical from run to run
    with fits.open(io.BytesIO(buf.getvalue()), disable_image_compression=True) as hdul:
        for h in hdul:
            h.add_checksum(when="dhs sky")
        out = io.BytesIO()
        hdul.writeto(out, checksum=False)
    return out.getvalue()


def write_brick(sim: SimulatedBrick, coadd_root: str) -> list[str]:
    """Write the four file kinds of one simulated brick; returns the URIs written."""
    base = wcs_header_cd(sim.wcs)
    base["BRICKNAM"] = (sim.brickname, "Legacy Surveys brick name")
    base["SURVEY"] = ("DHS-SYNTHETIC", "Dark Halo Scope embedded synthetic sky")
    written = []
    for b in BANDS:
        for kind in FILE_KINDS:
            data = getattr(sim, kind)[b]
            header = base.copy()
            header["BAND"] = b
            header["BUNIT"] = {"image": "nanomaggy", "invvar": "1/nanomaggy^2", "psfsize": "arcsec"}[kind]
            positive = data[data > 0]
            # images: DR10-like noise-relative quantisation; smooth maps: absolute step 1e-6 of their median
            q = 16.0 if kind == "image" else -1e-6 * float(np.median(positive) if positive.size else 1.0)
            seed = 1 + hash_uint64(f"{sim.brickname}:{kind}:{b}", "dither") % 10000
            uri = coadd_file(coadd_root, sim.brickname, kind, b)
            storage.write_bytes(uri, _hdu_bytes(data.astype(np.float32), header, q, int(seed)))
            written.append(uri)
    header = base.copy()
    for name, bit in MASKBITS.items():
        header[f"MB_{name}"[:8]] = (bit, f"maskbits: {name}")
    uri = coadd_file(coadd_root, sim.brickname, "maskbits")
    storage.write_bytes(uri, _hdu_bytes(sim.maskbits.astype(np.int32), header, 16.0, 1))
    written.append(uri)
    return written


def parent_rows(sim: SimulatedBrick, seed: int) -> pa.Table:
    """The LRGs of one brick as parent-sample rows (PARENT_SAMPLE_SCHEMA)."""
    o = sim.objects
    sel = np.flatnonzero(o["kind"] == "lrg")
    rng = rng_for(f"{seed}:{sim.brickname}", "skysim_v1:parent")
    mag = {b: o[f"mag_{b}"][sel] for b in BANDS}
    z_minus_w1 = rng.uniform(0.9, 1.9, sel.size)              # real sample: 5-95 % = 0.83-1.87
    mag["w1"] = mag["z"] - z_minus_w1
    flux = {b: 10 ** ((22.5 - mag[b]) / 2.5) for b in ("g", "r", "z", "w1")}
    # magnitudes as the real table has them: from the stored float32 fluxes
    mags = {b: nmgy_to_mag(flux[b].astype(np.float32).astype(np.float64)) for b in flux}
    cols = {"RA": o["ra"][sel], "DEC": o["dec"][sel], "BRICKNAME": [sim.brickname] * sel.size}
    cols.update({f"FLUX_{b.upper()}": flux[b].astype(np.float32) for b in flux})
    cols["TYPE"] = ["DEV"] * sel.size                          # n = 4 profiles are DEV in DR10
    cols.update({f"{b}_mag": mags[b] for b in mags})
    cols["r_minus_z"], cols["z_minus_w1"] = mags["r"] - mags["z"], mags["z"] - mags["w1"]
    cols.update(lrg_flags(mags["z"], cols["r_minus_z"], cols["z_minus_w1"]))
    cols["phase3_ranking_mode"] = ["total_lrg_v3"] * sel.size
    cols["region_id"] = np.full(sel.size, brick_by_name(sim.brickname).brickid, dtype=np.int64)
    cols["phase3_region_rank"] = np.ones(sel.size, dtype=np.int64)
    return pa.table(cols, schema=PARENT_SAMPLE_SCHEMA)


def object_rows(sim: SimulatedBrick) -> pa.Table:
    """Every rendered object of one brick (the truth), one row each."""
    o = sim.objects
    skip = {"near_edge"}
    cols = {"brickname": [sim.brickname] * len(o["kind"])}
    cols.update({k: (v.astype(str) if v.dtype.kind in "US" else v) for k, v in o.items() if k not in skip})
    cols["near_edge"] = o["near_edge"].astype(bool)
    return pa.table(cols)


def choose_bricks(n_bricks: int, centre_deg=DEFAULT_CENTRE_DEG) -> list[str]:
    """Real brick names nearest to ``centre_deg`` (RA, Dec in deg), nearest first."""
    return [b.brickname for b in neighbour_bricks(centre_deg[0], centre_deg[1], n_bricks)]


def write_sky(out: str, n_bricks: int = 4, cfg: SkyConfig | None = None, seed: int = 0,
              centre_deg=DEFAULT_CENTRE_DEG, log=sys.stderr) -> dict:
    """Simulate and write the sky; returns the truth dictionary also written to ``sky_truth.json``.

    Parameters
    ----------
    out : str
        Output directory (local or ``s3://``).
    n_bricks : int
        Number of bricks, the real ones nearest to ``centre_deg`` (RA, Dec in deg).
    cfg : SkyConfig, optional
        Per-brick content (default ``SkyConfig()``).
    seed : int
        Sky seed.
    log : file
        Where the progress lines go.
    """
    cfg = cfg or SkyConfig()
    t0 = time.perf_counter()
    coadd_root = storage.join(out, "coadd")
    parents, objects, bricks = [], [], []
    for i, name in enumerate(choose_bricks(n_bricks, centre_deg)):
        t = time.perf_counter()
        sim = simulate_brick(name, cfg, seed)
        files = write_brick(sim, coadd_root)
        parents.append(parent_rows(sim, seed))
        objects.append(object_rows(sim))
        info = brick_by_name(name)
        bricks.append({**info.__dict__, "size_pix": cfg.size_pix, "files": files, "stats": sim.stats})
        print(f"sky: brick {i + 1}/{n_bricks} {name}: {sim.stats['n_lrg']} LRGs ({sim.stats['n_edge_lrg']} near "
              f"the edge), {sim.stats['n_field']} galaxies, {sim.stats['n_star']} stars, "
              f"{sim.stats['masked_pix']} masked px in {time.perf_counter() - t:.1f} s", file=log, flush=True)
    parent = pa.concat_tables(parents) if parents else PARENT_SAMPLE_SCHEMA.empty_table()
    storage.write_parquet(parent, storage.join(out, "parent_sample.parquet"))
    storage.write_parquet(pa.concat_tables(objects), storage.join(out, "sky_objects.parquet"))
    truth = {
        "stage": "sky", "pipeline_version": PIPELINE_VERSION, "seed": int(seed),
        "config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "pixscale_arcsec": cfg.pixscale_arcsec, "bands": BANDS, "depth_gal_mag": DEPTH_GAL_MAG,
        "fwhm_nominal_arcsec": FWHM_NOMINAL_ARCSEC, "moffat_beta": MOFFAT_BETA,
        "gain_e_per_nmgy": GAIN_E_PER_NMGY, "saturation_nmgy": SATURATION_NMGY, "maskbits": MASKBITS,
        "coadd_root": coadd_root, "parent_sample": storage.join(out, "parent_sample.parquet"),
        "objects": storage.join(out, "sky_objects.parquet"), "n_lrg": parent.num_rows, "bricks": bricks,
        "seconds": time.perf_counter() - t0,
    }
    storage.write_json(storage.join(out, "sky_truth.json"), truth)
    print(f"sky: {len(bricks)} bricks, {parent.num_rows} LRGs written to {out} in {truth['seconds']:.1f} s",
          file=log, flush=True)
    return truth


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs sky", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="output directory or s3:// URI")
    p.add_argument("--n-bricks", type=int, default=4, help="number of bricks (default 4)")
    p.add_argument("--size-pix", type=int, default=1200,
                   help="side of the centred sub-image written per brick, pixels, even (default 1200; DR10: 3600)")
    p.add_argument("--seed", type=int, default=0, help="sky seed (default 0)")
    p.add_argument("--n-lrg", type=int, default=40, help="LRGs per brick (default 40)")
    p.add_argument("--n-field", type=int, default=250, help="field galaxies per brick (default 250)")
    p.add_argument("--n-star", type=int, default=40, help="faint stars per brick, plus 3 bright ones (default 40)")
    p.add_argument("--ra", type=float, default=DEFAULT_CENTRE_DEG[0], help="RA of the first brick, deg (default 150)")
    p.add_argument("--dec", type=float, default=DEFAULT_CENTRE_DEG[1], help="Dec of the first brick, deg (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 1 <= args.n_bricks <= 200:
        from dhs_gen.errors import RangeError

        raise RangeError("--n-bricks", args.n_bricks, 1, 200)
    cfg = SkyConfig(size_pix=args.size_pix, n_lrg=args.n_lrg, n_field=args.n_field, n_star=args.n_star,
                    pixscale_arcsec=PIXSCALE_DR10_ARCSEC)
    write_sky(args.out, args.n_bricks, cfg, args.seed, (args.ra, args.dec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
