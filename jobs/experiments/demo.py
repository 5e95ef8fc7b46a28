"""The whole chain on real pixels and the embedded synthetic sky, offline, on one machine.

    dhs demo --out DIR

sky -> 4a -> 4c (uber mix) on the synthetic sky, and, from every real galaxy cutout of the shared
data folder (``$DHS_SHARED_DATA``, :mod:`jobs.experiments.real_hosts`): real hosts split by object
into injection hosts, hard negatives and never-seen test negatives -> 4a -> 4c into the real hosts
-> train (CPU) on both, with the hard negatives -> score -> evaluate -> report -> realism.

The headline is measured on real pixels the model never saw: at the operating threshold (FPR 1e-2
on the synthetic negatives), the fraction of real non-lenses called lenses, the fraction of the
real lens candidates found, and the AUC of real lenses against real non-lenses. Leaves
``DIR/{sky,manifest,stamps,real,model,scores,real_eval,real_eval_scores,report,realism}`` and
``DIR/headline.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dhs_gen.json_values import finite_or_none
from jobs.runtime import stage
from jobs.runtime.config import load_config, shared_data_dir


def _step(name: str):
    print(f"\n=== demo: {name} ===", file=sys.stderr, flush=True)
    return time.perf_counter()


DEMO_TRAIN = {"epochs": 8, "batch_size": 64, "lr": 3e-3, "num_workers": 0, "device": "cpu",
              "early_stopping_patience": 3, "seed": 0}
#: Object roles of the real galaxies (train host, val host, hard negative, test negative).
REAL_ROLE_PROBS = (0.4, 0.1, 0.2, 0.3)
#: Replicates per real injection host and Einstein radius: few real hosts, each used more often.
REAL_HOST_REPLICATES = 12
HARD_NEG_WEIGHT = 5.0   # seed 004, Stage 3


def build_real_set(out: Path, shared: Path, partitions: int, spark, overrides: dict | None) -> dict:
    """Real hosts -> object roles -> 4a / 4c into the injection hosts; the never-seen evaluation set.

    Returns {} (said plainly) when the real data folder is absent.
    """
    if not shared.is_dir():
        print(f"real set: no real data folder at {shared} (set DHS_SHARED_DATA): synthetic sky only",
              file=sys.stderr)
        return {}
    from jobs.experiments.real_hosts import build_real_eval_set, build_real_hosts, split_real_objects
    from jobs.stages import inject, manifest

    real = out / "real"
    t = _step("real hosts from every real galaxy cutout")
    table = build_real_hosts(shared, real / "hosts")
    roles = split_real_objects(table, REAL_ROLE_PROBS, real)
    print(f"real hosts: {table.num_rows} galaxies; objects per role {roles['objects_per_role']} "
          f"in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    uris = roles["uris"]
    build_real_eval_set(shared, uris["test_negatives"], str(out / "real_eval"))
    cfg = load_config("demo", {**(overrides or {}), "n_replicates": REAL_HOST_REPLICATES})
    _step("4a manifest + 4c inject into the real hosts")
    manifest.run(None, cfg, str(real / "manifest"), partitions, overwrite=True, spark=spark,
                 hosts_uri=uris["injection_hosts"])
    inject.run(str(real / "manifest"), None, str(real / "stamps"), partitions, overwrite=True, spark=spark,
               hosts_uri=uris["injection_hosts"])
    return {"real_stamps": real / "stamps", "hardneg": uris["hardneg"], "real_eval": out / "real_eval",
            "objects_per_role": roles["objects_per_role"]}


def real_headline(eval_scores_uri: str, threshold: float) -> dict:
    """Contamination of the never-seen real non-lenses and recall of the real lenses at ``threshold``
    (counted as the anchor gate counts them), and their AUC with a bootstrap 95 % interval."""
    import numpy as np

    from dhs_gen.metrics import bootstrap_ci, roc_auc
    from jobs.evaluation.gates import compute_anchor_metrics
    from jobs.runtime import outputs, storage

    t = storage.read_parquet(outputs.dataset_files(eval_scores_uri)).to_pylist()
    rows = [r for r in t if r["score"] is not None]
    s = np.array([r["score"] for r in rows], float)
    y = np.array([r["label"] for r in rows], int)
    m = compute_anchor_metrics(s, y, threshold)
    auc = bootstrap_ci(roc_auc, s, y, n_boot=1000, seed=0) if m.n_known_lenses and m.n_hard_negatives else None
    return {"threshold": threshold, "n_real_nonlenses": m.n_hard_negatives, "n_real_lenses": m.n_known_lenses,
            "contamination": finite_or_none(m.contamination_rate_0p5), "n_contaminated": m.n_contaminated_at_0p5,
            "recall": finite_or_none(m.recovery_rate_0p5), "n_recovered": m.n_recovered_at_0p5,
            "auc_real": None if auc is None else auc.estimate,
            "auc_real_ci95": None if auc is None else [auc.lo, auc.hi], "n_unscored": len(t) - len(rows)}


def train_and_evaluate(out: Path, paths: dict, epochs: int, spark, shared: Path) -> dict:
    """train (stamps + real-host stamps + hard negatives) -> score -> evaluate -> real headline -> realism."""
    from jobs.evaluation import evaluate, score
    from jobs.training import train

    t = _step("train (CPU)")
    cfg = train.load_train_config("demo", {**DEMO_TRAIN, "epochs": epochs})
    model_dir = out / "model"
    stamps = [str(paths["stamps"])] + ([str(paths["real_stamps"])] if "real_stamps" in paths else [])
    train.train(stamps, str(model_dir), cfg, hard_negatives=str(paths["hardneg"]) if "hardneg" in paths else None,
                hard_neg_weight=HARD_NEG_WEIGHT)
    print(f"trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    ckpt = str(model_dir / "best.pt")

    _step("score")
    scores = str(out / "scores")
    score.run(ckpt, str(paths["stamps"]), scores, overwrite=True, spark=spark)
    eval_scores = None
    if "real_eval" in paths:
        eval_scores = str(out / "real_eval_scores")
        score.run(ckpt, str(paths["real_eval"]), eval_scores, overwrite=True, spark=spark)

    _step("evaluate")
    report = out / "report"
    argv = ["--scores", scores, "--out", str(report), "--stamps", str(paths["stamps"]), "--checkpoint", ckpt,
            "--n-boot", "200"]
    if eval_scores:
        argv += ["--anchor-scores", eval_scores]
    evaluate.main(argv)
    metrics = json.loads((report / "metrics.json").read_text())
    headline = {"auc_test_synthetic": metrics.get("auc"), "report": str(report / "report.html"),
                "operating_point": metrics.get("operating_point")}
    if eval_scores:
        thr = metrics["operating_point"]["threshold"]
        headline["real"] = real_headline(eval_scores, thr)
        headline["real"]["objects_per_role"] = paths["objects_per_role"]
        r = headline["real"]
        print(f"\nreal pixels never seen in training (operating threshold {thr:.3f}: FPR "
              f"{metrics['operating_point']['fpr_target']:g} on the synthetic negatives):\n"
              f"  contamination of real non-lenses  {r['n_contaminated']}/{r['n_real_nonlenses']} = {r['contamination']:.2f}\n"
              f"  recall of real lens candidates     {r['n_recovered']}/{r['n_real_lenses']} = {r['recall']:.2f}\n"
              f"  AUC real lenses vs real non-lenses {r['auc_real']:.3f} [{r['auc_real_ci95'][0]:.3f}, "
              f"{r['auc_real_ci95'][1]:.3f}]", file=sys.stderr)
    print(f"synthetic test AUC = {metrics.get('auc'):.3f}; report: {report / 'report.html'}", file=sys.stderr)

    _step("realism gates")
    from jobs.evaluation.realism import headline as realism_headline
    from jobs.evaluation.realism import run_realism

    realism_stamps = str(paths.get("real_stamps", paths["stamps"]))
    realism = run_realism(realism_stamps, str(paths["real_eval"]) if "real_eval" in paths else None,
                          str(out / "realism"), checkpoint=ckpt, shared_data_dir=shared)
    print(realism_headline(realism), file=sys.stderr)
    headline["realism"] = {"stamps": realism_stamps, "domain_auc": realism.get("domain_auc"),
                           "all_pass": realism.get("all_pass")}
    (out / "headline.json").write_text(json.dumps(headline, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return headline


def build_banks(out: Path, shared: Path) -> dict:
    """Small Gen5 (COSMOS) and Gen6 (deep HSC) banks from the real data, as config overrides.

    Returns {} with a clear message when the real data folder is absent: the demo then mixes
    only the procedural sources (sersic, hybrid).
    """
    from jobs.experiments.banks import REAL_BANK_SOURCES, build_real_bank

    if not all((shared / folder).is_dir() for folder in REAL_BANK_SOURCES.values()):
        print(f"banks: no real data at {shared} (set DHS_SHARED_DATA); demo uses sersic + hybrid sources only",
              file=sys.stderr)
        return {}
    cosmos = build_real_bank("cosmos", shared, out / "banks")
    deep = build_real_bank("deep", shared, out / "banks")
    return {"source": {"mix_modes": ["sersic", "hybrid", "cosmos", "deep"], "mix_probs": [0.25, 0.25, 0.25, 0.25],
                       "cosmos_bank": str(cosmos), "deep_bank": str(deep)}}


def run_pipeline(out: Path, n_bricks: int, n_lrg: int, partitions: int, spark, config: str = "demo",
                 overrides: dict | None = None) -> dict:
    """sky -> 4a -> 4c; returns the paths written."""
    from jobs.stages import inject, manifest, sky

    paths = {k: out / k for k in ("sky", "manifest", "stamps")}
    t = _step("synthetic sky")
    sky.main(["--out", str(paths["sky"]), "--n-bricks", str(n_bricks), "--n-lrg", str(n_lrg)])
    print(f"sky written in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    cfg = load_config(config, overrides)
    _step("4a manifest")
    manifest.run(str(paths["sky"] / "parent_sample.parquet"), cfg, str(paths["manifest"]), partitions,
                 overwrite=True, spark=spark)
    _step("4c inject")
    inject.run(str(paths["manifest"]), str(paths["sky"]), str(paths["stamps"]), partitions, overwrite=True,
               spark=spark)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs demo", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/demo", help="output directory (default out/demo)")
    p.add_argument("--n-bricks", type=int, default=6, help="bricks in the synthetic sky (default 6)")
    p.add_argument("--n-lrg", type=int, default=60, help="LRG hosts per brick (default 60)")
    p.add_argument("--partitions", type=stage.partition_count, default=4, help="Spark partitions (default 4)")
    p.add_argument("--epochs", type=int, default=8, help="CPU training epochs (default 8)")
    p.add_argument("--skip-train", action="store_true", help="stop after 4c")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from jobs.spark import get_spark

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spark = get_spark("dhs-demo", master="local[2]")
    try:
        _step("source banks from the real data")
        overrides = build_banks(out, shared_data_dir())
        paths = run_pipeline(out, args.n_bricks, args.n_lrg, args.partitions, spark, overrides=overrides)
        paths.update(build_real_set(out, shared_data_dir(), args.partitions, spark, overrides))
        if not args.skip_train:
            train_and_evaluate(out, paths, args.epochs, spark, shared_data_dir())
    finally:
        spark.stop()
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
