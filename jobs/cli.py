"""The ``dhs`` command: one subcommand per stage or tool, each a module with ``main(argv)``.

Entries are ``module`` (its ``main``) or ``module:function``. Subcommand modules are imported lazily so ``dhs --help`` is instant and a stage's heavy
imports (pyspark, torch) load only when that stage runs. Each module defines
``main(argv: list[str] | None) -> int`` and builds its own argparse parser, so
``dhs <cmd> --help`` is that parser's help and ``spark-submit jobs/<module>.py`` works too.
"""

from __future__ import annotations

import importlib
import sys

from dhs_gen.errors import DhsError

# name -> (module, one-line description). Keep sorted by pipeline order.
COMMANDS: dict[str, tuple[str, str]] = {
    "sky": ("jobs.stages.sky", "write the embedded synthetic sky in the DR10 coadd layout"),
    "manifest": ("jobs.stages.manifest", "4a: parent sample x injection grid -> task manifest"),
    "coadd-cache": ("jobs.stages.coadd_cache", "4b: copy the DR10 coadd files a manifest needs into the bucket (once per brick)"),
    "inject": ("jobs.stages.inject", "4c: cut stamps, inject arcs, write stamps Parquet"),
    "train": ("jobs.training.train", "train the lens-finder CNN on stamps Parquet (CPU or GPU)"),
    "score": ("jobs.evaluation.score", "score stamps or anchors with a checkpoint (optional leakage masks)"),
    "ensemble": ("jobs.evaluation.ensemble", "score with several checkpoints as one model (mean of calibrated probabilities)"),
    "evaluate": ("jobs.evaluation.evaluate", "metrics.json, leakage and anchor gates, plots and report.html"),
    "catalogs": ("jobs.catalogs.lens_catalogs", "real lens / look-alike catalogs: read | merge | crossmatch (DR10 bricks)"),
    "anchors": ("jobs.anchors.anchor_set", "build the real anchor set (known lenses + real hard negatives) with cutouts"),
    "cutout-cache": ("jobs.stages.cutout_cache", "4b for cutouts: fetch each host cutout (image + invvar) from the cutout service once"),
    "hosts": ("jobs.stages.hosts", "real host cutouts (folder, cutout service, DR10 bricks) -> host dataset for 4a/4c"),
    "anchors metrics": ("jobs.evaluation.gates:anchor_metrics_main", "the anchor gate on `dhs score` output of an anchor set"),
    "hardneg": ("jobs.catalogs.hardneg", "collect real hard negatives (model FPs, rings, mergers) away from known lenses"),
    "realism": ("jobs.evaluation.realism", "sim-to-real realism gates: domain AUC, photometric gate, realism.html"),
    "completeness": ("jobs.stages.completeness", "4d: selection function in theta_E x arc SNR x PSF x depth bins"),
    "emr": ("emr.cli:emr_main", "EMR: plan | launch | status | logs a cluster running the pipeline"),
    "cosmos-bank": ("jobs.experiments.banks:cosmos_bank_main", "Gen5: build a COSMOS source bank (HDF5) from a GalSim catalog"),
    "deep-bank": ("jobs.experiments.banks:deep_bank_main", "Gen6: build a deep ground-based source bank (NPZ) from FITS scenes"),
    "ablate": ("jobs.experiments.ablate", "ablation suite: variants through 4a..evaluate, AUC matrix, paired-bootstrap deltas"),
    "experiment": ("jobs.experiments.run_experiment", "run one experiment config (seed 004): 4a -> 4c -> train -> score -> evaluate"),
    "demo": ("jobs.experiments.demo", "the whole chain on the embedded synthetic sky"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: dhs <command> [options]", "", "Dark Halo Scope: lens-injection pipeline.", "", "commands:"]
    lines += [f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()]
    lines += ["", "Run 'dhs <command> --help' for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error (a :class:`DhsError`, a missing file) is one ``error:`` line and exit 2;
    ``--debug`` anywhere on the line shows the traceback instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if len(argv) > 1 and f"{argv[0]} {argv[1]}" in COMMANDS:   # a subcommand served by another layer's module
        name, rest = f"{argv[0]} {argv[1]}", argv[2:]
    if name not in COMMANDS:
        print(f"dhs: unknown command {name!r}; choose one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module_name, _, func = COMMANDS[name][0].partition(":")
    entry = getattr(importlib.import_module(module_name), func or "main")
    try:
        return int(entry(rest) or 0)
    except (DhsError, FileNotFoundError, FileExistsError, PermissionError) as err:
        if debug:
            raise
        print(f"error: {err} (dhs {name}; add --debug for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
