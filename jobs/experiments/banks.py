"""``dhs cosmos-bank`` (Gen5) and ``dhs deep-bank`` (Gen6): build source-template banks.

Inputs and outputs are local paths or ``s3://`` URIs (through :mod:`jobs.runtime.storage`): inputs are
fetched once to the local cache, the bank is built in a temporary folder and copied to its
destination with a provenance record beside it, ``<output>.manifest.json`` (config, git SHA,
package versions, candidates in = written + cut, cut counts by reason).

Examples
--------
dhs cosmos-bank --galsim-path /data/COSMOS_25.2 --output s3://bucket/cosmos_sources.h5 \
    --n-sources 10000 --stamp-size 64 --pixel-scale 0.03 --seed 42
dhs deep-bank --fits-dir /data/hsc --output deep_bank.npz --n-sources 20000 --stamp-size 96
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from jobs.runtime import storage
from jobs.runtime.outputs import build_manifest


def _cosmos_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs cosmos-bank", description="Gen5: GalSim COSMOS catalog -> HDF5 source bank "
                                "(resampled to the target grid, quality-cut, with measured hlr and clumpiness).")
    p.add_argument("--galsim-path", required=True, help="GalSim real_galaxy_catalog directory or catalog file")
    p.add_argument("--output", required=True, help="output .h5 (local path or s3://)")
    p.add_argument("--n-sources", type=int, default=10000, help="sources wanted")
    p.add_argument("--stamp-size", type=int, default=64, help="output stamp side, target pixels")
    p.add_argument("--pixel-scale", type=float, default=0.03, help="native pixel scale, arcsec/pix (checked)")
    p.add_argument("--target-pixscale", type=float, default=PIXSCALE_DR10_ARCSEC, help="output arcsec/pix")
    p.add_argument("--seed", default="42", help="selection order seed")
    p.add_argument("--band", default=None, help="catalog band to use when the directory mixes bands")
    p.add_argument("--min-snr", type=float, default=20.0, help="cut: total S/N within 2 hlr")
    return p


def _deep_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs deep-bank", description="Gen6: deep multi-band ground-based scenes -> "
                                "NPZ bank of isolated g, r, z galaxy templates.")
    p.add_argument("--fits-dir", required=True, help="folder of multi-band scenes (FITS cubes / scarlet NPZ)")
    p.add_argument("--output", required=True, help="output .npz (local path or s3://)")
    p.add_argument("--n-sources", type=int, default=20000, help="templates wanted")
    p.add_argument("--stamp-size", type=int, default=96, help="output stamp side, target pixels")
    p.add_argument("--src-pixscale", type=float, default=0.168, help="scene arcsec/pix (HSC: 0.168)")
    p.add_argument("--target-pixscale", type=float, default=PIXSCALE_DR10_ARCSEC, help="output arcsec/pix")
    p.add_argument("--src-zeropoint", type=float, default=27.0, help="AB mag of one scene image unit (HSC: 27)")
    p.add_argument("--min-snr", type=float, default=10.0, help="cut: isophotal S/N on the g+r+z image")
    return p


def _publish(local_file: Path, output: str, stage: str, config: dict, inputs: dict, summary: dict,
             seconds: float) -> None:
    cuts = summary["cuts"]
    rows_written = summary["n_written"]
    manifest = build_manifest(stage, config, inputs, rows_written + sum(cuts.values()), rows_written,
                              sum(cuts.values()), cuts, {"build_s": seconds}, extra=summary)
    storage.copy_file(str(local_file), output)
    storage.write_json(output + ".manifest.json", manifest)


def _build_and_publish(args, stage: str, suffix: str, inputs: dict, build) -> dict:
    """Build a bank into a local temporary file with ``build(local_path) -> summary``, then publish it
    (local or s3://) with its provenance record; returns the summary."""
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"dhs-{stage}-") as tmp:
        local = Path(tmp) / f"bank{suffix}"
        summary = build(local)
        _publish(local, args.output, stage, dict(vars(args)), inputs, summary, time.perf_counter() - t0)
    return summary


def cosmos_bank_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dhs cosmos-bank``; returns the exit status."""
    from dhs_gen.sources.cosmos import build_cosmos_bank

    args = _cosmos_parser().parse_args(argv)
    galsim_path = storage.local_copy(args.galsim_path)

    def build(local: Path) -> dict:
        summary = build_cosmos_bank(galsim_path, local, args.n_sources, args.stamp_size, args.pixel_scale,
                                    args.seed, target_pixscale=args.target_pixscale, band=args.band,
                                    min_snr=args.min_snr)
        return {**summary, "output": args.output}

    summary = _build_and_publish(args, "gen5_cosmos_bank", ".h5", {"galsim_path": args.galsim_path}, build)
    print(f"cosmos-bank: wrote {summary['n_written']}/{summary['n_requested']} sources to {args.output}; "
          f"cuts {summary['cuts']}")
    return 0


def deep_bank_main(argv: list[str] | None = None) -> int:
    """Entry point of ``dhs deep-bank``; returns the exit status."""
    from dhs_gen.sources.deep_bank import build_deep_source_bank

    args = _deep_parser().parse_args(argv)
    fits_dir = storage.local_copy(args.fits_dir)

    def build(local: Path) -> dict:
        summary = build_deep_source_bank(fits_dir, str(local), args.n_sources, args.stamp_size, args.src_pixscale,
                                         args.target_pixscale, src_zeropoint_ab=args.src_zeropoint,
                                         min_snr=args.min_snr)
        return {**summary, "out_npz": args.output}

    summary = _build_and_publish(args, "gen6_deep_bank", ".npz", {"fits_dir": args.fits_dir}, build)
    print(f"deep-bank: wrote {summary['n_written']}/{summary['n_requested']} templates to {args.output}; "
          f"cuts {summary['cuts']}; skipped {len(summary['skipped_files'])} files")
    return 0


#: The real-data folder each bank kind is built from, under ``$DHS_SHARED_DATA``, and the bank's file name.
REAL_BANK_SOURCES = {"cosmos": "cosmos_hst", "deep": "hsc"}
REAL_BANK_FILES = {"cosmos": "cosmos.h5", "deep": "deep.npz"}


def build_real_bank(kind: str, shared: Path, folder: Path, n_sources: int = 100) -> str | None:
    """A small bank of ``kind`` (``cosmos`` | ``deep``) from the shared real data, built once into ``folder``;
    None when that data is absent. COSMOS templates keep 4x finer sampling than the survey pixel: lensing
    magnifies source detail."""
    src = Path(shared) / REAL_BANK_SOURCES[kind]
    if not src.is_dir():
        return None
    output = Path(folder) / REAL_BANK_FILES[kind]
    if not output.is_file():
        output.parent.mkdir(parents=True, exist_ok=True)
        if kind == "cosmos":
            cosmos_bank_main(["--galsim-path", str(src), "--output", str(output), "--n-sources", str(n_sources),
                              "--stamp-size", "96", "--target-pixscale", "0.0655", "--seed", "0"])
        else:
            deep_bank_main(["--fits-dir", str(src), "--output", str(output), "--n-sources", str(n_sources)])
    return str(output)


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.experiments.banks {cosmos,deep} ...`` (the ``dhs`` command calls the two mains directly)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("cosmos", "deep"):
        print("usage: python -m jobs.experiments.banks {cosmos,deep} [options]", file=sys.stderr)
        return 2
    return (cosmos_bank_main if argv[0] == "cosmos" else deep_bank_main)(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
