"""``dhs ablate``: which component helped? Train one model per variant of a generation, compare them.

    dhs ablate --suite configs/ablations/gen7.yaml --out DIR [--scale demo|full] [--master local[2]]

A suite (``configs/ablations/<suite>.yaml``, see its README) names a baseline and variants, each a
generation preset plus overrides. Every variant runs 4a manifest -> 4c inject -> train -> score ->
evaluate on the SAME hosts (one sky or parent sample for the whole suite), the SAME seed (the
suite's ``seed`` replaces each preset's experiment and training seed), the SAME theta_E grid and
replicates (checked: a suite whose variants differ there is refused) and the same test bricks (the
split is a hash of the brick name), so a difference between two variants comes from the variant.
Then every model is scored on every variant's test split and on the real anchor set (the
cross-generation matrix: clean and artifact-laden test sets are simply different variants' test
sets), and :mod:`jobs.experiments.ablate_report` writes ``DIR/comparison.json`` and ``DIR/comparison.html``
with paired-bootstrap deltas against the baseline.

Layout: ``DIR/sky`` (demo scale), ``DIR/anchors``, ``DIR/banks``, and per variant
``DIR/<v>/{manifest,stamps,test_stamps,model,scores/<test set>,anchor_scores,eval}`` plus
``DIR/<v>/variant.json`` (resolved configs, the variant's hashes, the steps done). A re-run skips
every step whose output exists and whose recorded hash matches: a variant whose experiment config
changed is redone from 4a, one whose training config changed from training, and scores on a
changed test set are redone. One Spark session serves the whole suite.

Determinism: 4a/4c draw from per-task hashes; training is bit-identical on CPU for one config
(``jobs.training.train``); scoring reads fixed row groups; bootstrap seeds are hashes of (suite seed,
variant, test set, metric). The same suite and seed give the same numbers to the last digit on
the same machine.

Full scale (``--scale full``), EMR in client mode (the driver on a GPU primary node), real DR10::

    make emr-upload
    spark-submit --master yarn --deploy-mode client --py-files dhs_bundle.zip entry/ablate.py \
        --suite configs/ablations/gen7.yaml --scale full --out /mnt/ablate/gen7
    aws s3 sync /mnt/ablate/gen7 s3://darkhaloscope/ablate/gen7

``scales.full`` in the suite gives the parent sample and coadd cache URIs (no synthetic sky), the
epochs, the device (cuda) and the model; ``DIR`` is local to the driver. Expected cost: 4c of
~150k stamps per variant on 10 x m5.4xlarge ~20 min (~$10 on demand), training 30 epochs on a
g5.2xlarge ~1 h (~$1.2 per variant), scoring every model on every test set a few minutes: about
$40 for a three-variant suite, $70 for the five-variant Gen5-Prime suite (configs/ablations/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from dhs_gen import PIPELINE_VERSION
from dhs_gen.errors import ConfigError
from jobs.experiments.ablate_suite import (
    Suite,
    _mapping,
    check_comparable,
    load_suite,
    resolve_variant,
    scale_settings,
)
from jobs.runtime import storage


def _log(msg: str) -> None:
    print(f"ablate: {msg}", file=sys.stderr, flush=True)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- shared inputs


def ensure_sky(out: Path, scale: dict) -> tuple[str, str]:
    """(parent sample URI, coadd root) of the suite: the scale's URIs, or the synthetic sky (once)."""
    if scale["parent"]:
        return scale["parent"], scale["coadds"]
    from jobs.stages import sky

    spec = {k: scale[k] for k in ("n_bricks", "n_lrg", "size_pix", "sky_seed")}
    sky_dir, stamp = out / "sky", out / "sky.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == spec and (sky_dir / "parent_sample.parquet").is_file()):
        _log(f"synthetic sky {spec}")
        storage.delete_tree(str(sky_dir))
        sky.main(["--out", str(sky_dir), "--n-bricks", str(spec["n_bricks"]), "--n-lrg", str(spec["n_lrg"]),
                  "--size-pix", str(spec["size_pix"]), "--seed", str(spec["sky_seed"])])
        stamp.write_text(json.dumps(spec))
    return str(sky_dir / "parent_sample.parquet"), str(sky_dir)


def ensure_banks(out: Path, scale: dict, shared: Path) -> dict:
    """``{"cosmos": uri | None, "deep": uri | None}`` per the scale's ``cosmos_bank`` / ``deep_bank``: None,
    ``auto`` (built once from the shared real data, None when it is absent) or a bank URI."""
    from jobs.experiments.banks import REAL_BANK_SOURCES, build_real_bank

    banks = {}
    for kind in REAL_BANK_SOURCES:
        spec = scale[f"{kind}_bank"]
        if spec != "auto":
            banks[kind] = spec
            continue
        banks[kind] = build_real_bank(kind, shared, out / "banks")
        if banks[kind] is None:
            _log(f"no real data at {shared / REAL_BANK_SOURCES[kind]}: {kind} variants use the suite's no_bank_overrides")
    return banks


def ensure_anchors(out: Path, shared: Path) -> str | None:
    """The real anchor set (known lenses + real non-lenses) built once from the shared data, or None."""
    uri = out / "anchors"
    if (uri / "_manifest.json").is_file():
        return str(uri)
    if not shared.is_dir():
        _log(f"no real data folder at {shared} (DHS_SHARED_DATA): no anchor set, anchor metrics are absent")
        return None
    from jobs.anchors.anchor_set import build_default_anchor_set

    build_default_anchor_set(str(shared), str(uri), overwrite=True)
    return str(uri)


def write_test_split(stamps_uri: str, out_uri: str) -> dict:
    """The ``split == test`` rows of a stamps dataset as a committed dataset (one part per input file)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from jobs.runtime import outputs

    outputs.prepare_output(out_uri, overwrite=True, inputs=[stamps_uri])
    run_id, reports, n = "testsplit", [], 0
    for i, uri in enumerate(outputs.dataset_files(stamps_uri)):
        fs, path = storage.resolve(uri)
        table = pq.read_table(path, filesystem=fs, filters=pc.field("split") == "test")
        reports.append(outputs.write_attempt(table, out_uri, run_id, i, "0"))
        n += table.num_rows
    if n == 0:
        raise ConfigError("test split", stamps_uri, "holds no test rows: use more bricks (the split is by brick)")
    manifest = outputs.build_manifest("ablate_test_split", {"split": "test"}, {"stamps": stamps_uri}, n, n, 0, {},
                                      {})
    return outputs.commit(out_uri, run_id, reports, manifest, replace=True)


# --------------------------------------------------------------------------- one variant


class VariantState:
    """``DIR/<v>/variant.json``: the variant's hashes, resolved configs, steps done, scores' test-set hashes.

    ``data_hash`` covers what makes the stamps (experiment config, hosts, coadds, code version): when
    it changes the variant is redone from 4a. ``model_hash`` adds the training config: when only it
    changes, the stamps are kept and the model and everything scored with it are redone.
    """

    MODEL_STEPS = ("model", "anchor_scores", "eval")

    def __init__(self, root: Path, name: str, data_hash: str, model_hash: str, record: dict):
        self.root, self.path = root / name, root / name / "variant.json"
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if old and old.get("data_hash") != data_hash:
            _log(f"{name}: experiment config changed ({old.get('data_hash')} -> {data_hash}); redoing it from 4a")
            storage.delete_tree(str(self.root))
            old = {}
        steps, scores = old.get("steps", {}), old.get("scores", {})
        if old and old.get("model_hash") != model_hash:
            _log(f"{name}: training config changed; keeping the stamps, redoing the model and its scores")
            steps = {k: v for k, v in steps.items() if k not in self.MODEL_STEPS}
            scores = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self.data = {**record, "data_hash": data_hash, "model_hash": model_hash, "steps": steps, "scores": scores}
        self.save()

    def done(self, step: str, uri: str, key: str | None = None) -> bool:
        return self.data["steps"].get(step) == (key or True) and Path(uri).exists()

    def mark(self, step: str, key: str | None = None) -> None:
        self.data["steps"][step] = key or True
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data, indent=2, sort_keys=True, default=str))


def run_variant(state: VariantState, cfg, tcfg, parent: str, coadds: str, scale: dict, spark) -> None:
    """4a -> 4c -> test split -> train for one variant, skipping the steps already done."""
    from jobs.stages import inject, manifest
    from jobs.training import train

    d = state.root
    if not state.done("manifest", d / "manifest" / "_manifest.json"):
        manifest.run(parent, cfg, str(d / "manifest"), scale["partitions"], overwrite=True, spark=spark)
        state.mark("manifest")
    if not state.done("stamps", d / "stamps" / "_manifest.json"):
        inject.run(str(d / "manifest"), coadds, str(d / "stamps"), scale["partitions"], overwrite=True, spark=spark)
        state.mark("stamps")
    if not state.done("test_stamps", d / "test_stamps" / "_manifest.json"):
        write_test_split(str(d / "stamps"), str(d / "test_stamps"))
        state.mark("test_stamps")
    if not state.done("model", d / "model" / "best.pt"):
        t0 = time.perf_counter()
        train.train(str(d / "stamps"), str(d / "model"), tcfg, progress=False)
        _log(f"{d.name}: trained in {time.perf_counter() - t0:.0f} s")
        state.mark("model")


def score_variant(state: VariantState, test_sets: dict[str, tuple[str, str]], anchors: str | None, spark,
                  n_boot: int, seed: int, re_evaluate: bool) -> None:
    """Score this model on every test set (``{name: (uri, hash)}``) and the anchors; evaluate its own."""
    from jobs.evaluation import evaluate, score

    d, ckpt = state.root, str(state.root / "model" / "best.pt")
    for t, (uri, thash) in test_sets.items():
        out = d / "scores" / t
        if state.data["scores"].get(t) != thash or not (out / "_manifest.json").is_file():
            score.run(ckpt, uri, str(out), overwrite=True, spark=spark)
            state.data["scores"][t] = thash
            state.save()
    akey = _hash([storage.read_json(str(Path(anchors) / "_manifest.json")).get(k) for k in ("run_id", "committed_utc")]) if anchors else None
    if anchors and not state.done("anchor_scores", d / "anchor_scores" / "_manifest.json", akey):
        score.run(ckpt, anchors, str(d / "anchor_scores"), overwrite=True, spark=spark)
        state.mark("anchor_scores", akey)
    ekey = _hash([n_boot, seed, akey])
    if re_evaluate or not state.done("eval", d / "eval" / "metrics.json", ekey):
        argv = ["--scores", str(d / "scores" / d.name), "--out", str(d / "eval"), "--stamps",
                str(d / "test_stamps"), "--checkpoint", ckpt, "--n-boot", str(n_boot), "--seed", str(seed)]
        evaluate.main(argv + (["--anchor-scores", str(d / "anchor_scores")] if anchors else []))
        state.mark("eval", ekey)


# --------------------------------------------------------------------------- the suite


def run_suite(suite: Suite, scale_name: str, out: str, spark=None, shared: Path | None = None,
              re_evaluate: bool = False) -> dict:
    """Run (or resume) a suite into ``out`` (local folder); returns the comparison dict.

    Parameters
    ----------
    suite : Suite
    scale_name : str
        A key of ``suite.scales`` (``demo``, ``full`` or a custom one).
    out : str
        Output folder.
    spark : SparkSession, optional
        The one session for the suite (made from the scale's ``master`` when None, and stopped).
    shared : Path, optional
        The real data folder (anchors, COSMOS); default ``$DHS_SHARED_DATA``.
    re_evaluate : bool
        Re-run ``dhs evaluate`` even where its output is recorded.
    """
    from jobs.experiments import ablate_report, uber_weights
    from jobs.runtime.config import shared_data_dir

    t0 = time.perf_counter()
    scale = scale_settings(suite, scale_name)
    shared = Path(shared) if shared else shared_data_dir()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    # Resolve and check every config before any work starts (a bad suite fails here).
    banks = ensure_banks(root, scale, shared)
    mix, mix_note = {}, ""
    if any(v.mix_weights for v in suite.variants):
        before = uber_weights.uber_from_ablations(suite.weights_from, root, require=True)
        mix, mix_note = uber_weights.mix_overrides(before, banks), uber_weights.summary(before)
    resolved = {v.name: resolve_variant(suite, v, scale, banks, mix) for v in suite.variants}
    check_comparable({n: r[0] for n, r in resolved.items()})
    parent, coadds = ensure_sky(root, scale)
    anchors = ensure_anchors(root, shared)
    own_spark = spark is None
    if own_spark:
        from jobs.spark import get_spark

        spark = get_spark(f"dhs-ablate-{suite.name}", master=scale["master"])
    try:
        states, hashes = {}, {}
        for v in suite.variants:
            cfg, tcfg, note = resolved[v.name]
            record = {"variant": v.name, "preset": v.preset, "config_hash": cfg.config_hash(), "config": cfg.to_dict(),
                      "train": tcfg.to_dict(), "source_note": note, "parent": parent, "coadds": coadds,
                      "pipeline_version": PIPELINE_VERSION}
            hashes[v.name] = _hash({k: record[k] for k in ("config_hash", "parent", "coadds", "pipeline_version")}
                                   | {"sky": scale_sky(scale)})
            model_hash = _hash([hashes[v.name], record["train"]])
            states[v.name] = VariantState(root, v.name, hashes[v.name], model_hash, record)
            _log(f"variant {v.name} ({v.preset}, data {hashes[v.name]}, model {model_hash})")
            run_variant(states[v.name], cfg, tcfg, parent, coadds, scale, spark)
        test_sets = {n: (str(root / n / "test_stamps"), hashes[n]) for n in states}
        for st in states.values():
            score_variant(st, test_sets, anchors, spark, scale["n_boot"], suite.seed, re_evaluate)
    finally:
        if own_spark:
            spark.stop()
    notes = {v: resolved[v][2] for v in resolved if resolved[v][2]}
    if mix_note:
        notes["uber_weights"] = mix_note
    for kind, bank in banks.items():
        if bank and scale[f"{kind}_bank"] == "auto":
            n = storage.read_json(bank + ".manifest.json").get("extra", {}).get("n_written")
            notes[f"{kind}_bank"] = f"{n} real galaxies, bank built by dhs {kind}-bank from the shared data"
    comparison = ablate_report.build_comparison(suite, root, anchors is not None, scale["n_boot"], notes,
                                                {"scale": scale_name, "parent": parent, "coadds": coadds,
                                                 "anchors": anchors, "banks": banks,
                                                 "seconds": round(time.perf_counter() - t0, 1)})
    ablate_report.write_outputs(comparison, root)
    if suite.weights_from:   # after the comparison: a suite may weigh by its own arms ("self")
        result = uber_weights.uber_from_ablations(suite.weights_from, root)
        _log(f"uber weights: {uber_weights.summary(result)} -> "
             f"{uber_weights.write_uber_preset(result, root, suite.name, banks)}")
    _log(f"done in {time.perf_counter() - t0:.0f} s: {root / 'comparison.html'}")
    return comparison


def scale_sky(scale: dict) -> dict:
    return {k: scale[k] for k in ("n_bricks", "n_lrg", "size_pix", "sky_seed")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs ablate", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 2)[2])
    p.add_argument("--suite", required=True, help="suite YAML path, or a name in configs/ablations/ (gen7, gen8, ...)")
    p.add_argument("--out", required=True, help="output folder (comparison.json, comparison.html, one folder per variant)")
    p.add_argument("--scale", default="demo", help="a scale of the suite: demo (default), full, or a custom one")
    p.add_argument("--master", default=None, help="Spark master (default: the scale's, local[2] at demo scale)")
    p.add_argument("--re-evaluate", action="store_true", help="re-run the evaluation even where it is recorded")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        suite = load_suite(args.suite)
        if args.master:
            scales = dict(suite.scales)
            scales[args.scale] = {**_mapping("scale", scales.get(args.scale)), "master": args.master}
            suite = dataclasses.replace(suite, scales=scales)
        scale_settings(suite, args.scale)
    except ConfigError as err:
        print(f"dhs ablate: {err}", file=sys.stderr)
        return 2
    comparison = run_suite(suite, args.scale, args.out, re_evaluate=args.re_evaluate)
    print(json.dumps({"out": args.out, "variants": comparison["variants"], "baseline": comparison["baseline"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
