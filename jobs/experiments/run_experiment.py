"""``dhs experiment run CONFIG.yaml``: one experiment config through 4a -> 4c -> train -> score -> evaluate.

    dhs experiment run configs/experiments/v4_sota_moffat.yaml \\
        --set data.phase3_parent_sample=out/sky/parent_sample.parquet --set data.coadd_cache=out/sky \\
        --set output_dir=out/experiments/v4_sota_moffat

CONFIG is an experiment YAML (:mod:`jobs.experiment`): a path, or a name in ``configs/experiments/``.
``--set FIELD=VALUE`` replaces one field (dotted, the value read as YAML). Everything is checked
before Spark starts: the config's fields, that the parent sample (or host dataset), the coadd cache
and the hard negatives exist, and that ``output_dir`` does not hold another experiment.

Writes into ``output_dir``: ``config.yaml`` (the config as run, with the code's git state; ``dhs experiment
run output_dir/config.yaml`` repeats it), ``reproducibility.txt`` (the header of seed 004 section 11),
``manifest/`` (4a), ``stamps/`` (4c) unless the data variant names other places, ``model/`` (best.pt,
train_config.json), ``test_stamps/``, ``scores/``, ``anchors/`` + ``anchor_scores/`` (real lenses and real
non-lenses, when the anchor set is ``auto`` and ``$DHS_SHARED_DATA`` exists, or a given dataset), ``eval/``
(metrics.json, report.html) and ``experiment_state.json`` (the steps done, each with the git commit, dirty flag
and diff hash of the code that ran it). A re-run of the same config skips the steps done whose output is still
there and redoes every step after the first it runs; a different config in the same ``output_dir`` is refused
unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

from dhs_gen.errors import ConfigError
from jobs.experiment import ExperimentConfig, set_all_seeds
from jobs.runtime import storage
from jobs.runtime.config import shared_data_dir
from jobs.runtime.outputs import git_provenance
from jobs.runtime.stage import partition_count

STEPS = ("manifest", "stamps", "model", "scores", "eval")
STATE_FILE = "experiment_state.json"


def _log(msg: str) -> None:
    print(f"experiment: {msg}", file=sys.stderr, flush=True)


def parse_sets(items: list[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a": {"b": 1}, "c": "x"}`` (values read as YAML)."""
    out: dict = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError("--set", item, "FIELD=VALUE, FIELD dotted (e.g. training.epochs=2)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}", text, "a YAML value") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError("--set", item, f"{part} is set both as a value and as a mapping")
        node[parts[-1]] = value
    return out


def check_inputs(cfg: ExperimentConfig) -> None:
    """Every input the run reads exists (ConfigError naming the field), before Spark starts."""
    d = cfg.data
    if not d.hosts and not d.phase3_parent_sample:
        raise ConfigError("data.phase3_parent_sample", None, "a parent sample (with data.coadd_cache) or data.hosts")
    if d.phase3_parent_sample and not d.hosts and not d.coadd_cache:
        raise ConfigError("data.coadd_cache", None, "the coadd cache root the parent sample's bricks are read from")
    needed = {"data.phase3_parent_sample": None if d.hosts else d.phase3_parent_sample,
              "data.coadd_cache": None if d.hosts else d.coadd_cache, "data.hosts": d.hosts,
              "data.cosmos_library_path": d.cosmos_library_path, "data.deep_library_path": d.deep_library_path,
              "hard_negatives.hard_neg_path": cfg.hard_negatives.hard_neg_path if cfg.hard_negatives.enabled else None,
              "evaluation.anchor_set": None if cfg.evaluation.anchor_set in (None, "auto") else cfg.evaluation.anchor_set}
    for name, uri in needed.items():
        if not uri:
            continue
        try:
            found = storage.exists(uri)
        except OSError as err:   # an unreachable or forbidden bucket: say so in one line
            raise ConfigError(name, uri, f"cannot be read ({err}): check the path, credentials and network") from None
        if not found:
            raise ConfigError(name, uri, "no such file or dataset: build it first or fix the path")


class RunState:
    """``<output_dir>/experiment_state.json``: the config hash and the steps done."""

    def __init__(self, cfg: ExperimentConfig, overwrite: bool):
        self.uri = storage.join(cfg.output_dir, STATE_FILE)
        old = storage.read_json(self.uri) if storage.exists(self.uri) else None
        key = cfg.config_hash()
        if old and old.get("config_hash") != key and not overwrite:
            raise ConfigError("output_dir", cfg.output_dir,
                              f"holds experiment {old.get('experiment_id')!r} with another config: choose another "
                              "output_dir, or pass --overwrite to replace its outputs")
        #: our own outputs may be replaced: a partial earlier run of this config, or --overwrite
        self.replace = overwrite or bool(old)
        self.data = {"experiment_id": cfg.experiment_id, "config_hash": key,
                     "steps": dict(old.get("steps", {})) if old and old.get("config_hash") == key else {}}
        self.save()

    def done(self, step: str, marker: str) -> bool:
        """Recorded as done and its output still there (a deleted output is redone)."""
        return bool(self.data["steps"].get(step)) and storage.exists(marker)

    def mark(self, step: str, seconds: float) -> None:
        """Record a finished step with the code it ran (a resumed run may run later steps from other code)."""
        git = git_provenance()
        self.data["steps"][step] = {"seconds": round(seconds, 1), "git_commit": git["commit"], "git_dirty": git["dirty"],
                                    "git_diff_sha256": git["diff_sha256"]}
        self.save()

    def save(self) -> None:
        storage.write_json(self.uri, self.data)


def run(cfg: ExperimentConfig, until: str = "eval", overwrite: bool = False, partitions: int = 4,
        master: str | None = None, spark=None) -> dict:
    """Run (or resume) one experiment; returns ``experiment_state.json``'s content."""
    from jobs.runtime.outputs import refuse_overlap
    from jobs.stages import inject, manifest
    from jobs.training import train

    cfg = cfg.with_git()
    inj = cfg.injection_config()
    check_inputs(cfg)
    out = cfg.output_dir
    d = cfg.data
    inputs = [u for u in (d.phase3_parent_sample, d.coadd_cache, d.hosts) if u]
    for stage in ("manifest", "stamps"):
        refuse_overlap(cfg.stage_uri(stage), inputs)
    state = RunState(cfg, overwrite)
    cfg.to_yaml(storage.join(out, "config.yaml"))
    header = cfg.get_reproducibility_info()
    storage.write_bytes(storage.join(out, "reproducibility.txt"), (header + "\n").encode())
    _log("\n" + header)
    last = STEPS.index(until)
    own_spark = spark is None
    if own_spark:
        from jobs.spark import get_spark

        spark = get_spark(f"dhs-experiment-{cfg.experiment_id}", master=master)
    try:
        manifest_uri, stamps_uri = cfg.stage_uri("manifest"), cfg.stage_uri("stamps")
        model_dir, ckpt = storage.join(out, "model"), storage.join(out, "model", "best.pt")
        markers = {"manifest": storage.join(manifest_uri, "_manifest.json"), "stamps": storage.join(stamps_uri, "_manifest.json"),
                   "model": ckpt, "scores": storage.join(out, "scores", "_manifest.json"),
                   "eval": storage.join(out, "eval", "metrics.json")}
        redo = False   # once a step runs, every later one runs too: it was built from the old output
        for step in STEPS[:last + 1]:
            if not redo and state.done(step, markers[step]):
                _log(f"{step}: done earlier, skipped")
                continue
            redo = True
            t0 = time.perf_counter()
            _log(f"{step} ...")
            if step == "manifest":
                manifest.run(None if d.hosts else d.phase3_parent_sample, inj, manifest_uri, partitions,
                             overwrite=state.replace, spark=spark, hosts_uri=d.hosts)
            elif step == "stamps":
                inject.run(manifest_uri, None if d.hosts else d.coadd_cache, stamps_uri, partitions,
                           overwrite=state.replace, spark=spark, hosts_uri=d.hosts)
            elif step == "model":
                set_all_seeds(cfg.seeds)
                hn = cfg.hard_negatives
                train.train(stamps_uri, model_dir, cfg.training, progress=True,
                            hard_negatives=hn.hard_neg_path if hn.enabled else None, hard_neg_weight=hn.hard_neg_weight)
            elif step == "scores":
                _score(cfg, ckpt, stamps_uri, spark)
            elif step == "eval":
                _evaluate(cfg, ckpt)
            state.mark(step, time.perf_counter() - t0)
            _log(f"{step}: {time.perf_counter() - t0:.0f} s")
    finally:
        if own_spark:
            spark.stop()
    return state.data


def _score(cfg: ExperimentConfig, ckpt: str, stamps_uri: str, spark) -> None:
    """The test split scored, and the real anchors when there are any (else no anchor scores are left)."""
    from jobs.evaluation import score
    from jobs.experiments.ablate import ensure_anchors, write_test_split

    out, ev = cfg.output_dir, cfg.evaluation
    test = storage.join(out, "test_stamps")
    write_test_split(stamps_uri, test)
    score.run(ckpt, test, storage.join(out, "scores"), batch_size=ev.score_batch_size, overwrite=True, spark=spark,
              device=ev.score_device)
    anchors = ensure_anchors(Path(out), shared_data_dir()) if ev.anchor_set == "auto" else ev.anchor_set
    anchor_scores = storage.join(out, "anchor_scores")
    if anchors:
        score.run(ckpt, anchors, anchor_scores, batch_size=ev.score_batch_size, overwrite=True,
                  spark=spark, device=ev.score_device)
    else:   # scores of an earlier model must not be evaluated with this one
        storage.delete_tree(anchor_scores)


def _evaluate(cfg: ExperimentConfig, ckpt: str) -> None:
    from jobs.evaluation import evaluate

    out = cfg.output_dir
    argv = ["--scores", storage.join(out, "scores"), "--out", storage.join(out, "eval"),
            "--stamps", storage.join(out, "test_stamps"), "--checkpoint", ckpt,
            "--n-boot", str(cfg.evaluation.n_boot), "--seed", str(cfg.seeds.resolved("evaluation"))]
    anchor_scores = storage.join(out, "anchor_scores")
    if storage.exists(storage.join(anchor_scores, "_manifest.json")):   # this model's: _score removes older ones
        argv += ["--anchor-scores", anchor_scores]
    if evaluate.main(argv) != 0:
        raise RuntimeError(f"dhs evaluate failed on {out}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs experiment", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="run one experiment config", description=__doc__.split("\n\n")[0])
    r.add_argument("config", help="experiment YAML path, or a name in configs/experiments/ (e.g. v4_sota_moffat)")
    r.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="replace a field, dotted (repeatable): --set training.epochs=2 --set output_dir=out/e1")
    r.add_argument("--until", choices=STEPS, default="eval", help="last step to run (default eval)")
    r.add_argument("--partitions", type=partition_count, default=4, help="Spark partitions of 4a/4c (default 4)")
    r.add_argument("--master", default=None, help="Spark master (default: local[*] or spark-submit's)")
    r.add_argument("--overwrite", action="store_true",
                   help="replace the outputs of another config in output_dir (each only once its successor commits)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = ExperimentConfig.from_yaml(args.config, parse_sets(args.set))
    state = run(cfg, until=args.until, overwrite=args.overwrite, partitions=args.partitions, master=args.master)
    print(f"experiment {state['experiment_id']}: {', '.join(state['steps'])} done in {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
