"""The whole chain on the embedded synthetic sky, offline, on one machine.

    dhs demo --out DIR

sky -> 4a manifest -> 4c inject (uber mix) -> train (CPU) -> score -> evaluate -> report.
Leaves ``DIR/sky``, ``DIR/manifest``, ``DIR/stamps``, ``DIR/model``, ``DIR/scores`` and
``DIR/report`` (open ``DIR/report/report.html``). Real DR10 lens-candidate cutouts from the
shared data folder (``$DHS_SHARED_DATA``) are scored as the anchor set when present.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jobs.runtime.config import load_config, shared_data_dir


def _step(name: str):
    print(f"\n=== demo: {name} ===", file=sys.stderr, flush=True)
    return time.perf_counter()


DEMO_TRAIN = {"epochs": 8, "batch_size": 64, "lr": 3e-3, "num_workers": 0, "device": "cpu",
              "early_stopping_patience": 3, "seed": 0}


def build_anchors(out: Path, shared: Path) -> str | None:
    """The real anchor set from the shared data folder, or None (said plainly) when it is absent."""
    if not shared.is_dir():
        print(f"anchor set: no real data folder at {shared} (set DHS_SHARED_DATA): the anchor gate will not run",
              file=sys.stderr)
        return None
    from jobs.anchors.anchor_set import build_default_anchor_set

    uri = str(out / "anchors")
    build_default_anchor_set(str(shared), uri, overwrite=True)
    return uri


def train_and_evaluate(out: Path, paths: dict, epochs: int, spark, shared: Path) -> dict:
    """train -> score (stamps, anchors) -> evaluate -> realism; returns the headline numbers."""
    from jobs.evaluation import evaluate, score
    from jobs.training import train

    t = _step("train (CPU)")
    cfg = train.load_train_config("demo", {**DEMO_TRAIN, "epochs": epochs})
    model_dir = out / "model"
    train.train(str(paths["stamps"]), str(model_dir), cfg)
    print(f"trained in {time.perf_counter() - t:.0f} s", file=sys.stderr)
    ckpt = str(model_dir / "best.pt")

    _step("score")
    scores = str(out / "scores")
    score.run(ckpt, str(paths["stamps"]), scores, overwrite=True, spark=spark)
    anchors = build_anchors(out, shared)
    anchor_scores = None
    if anchors:
        anchor_scores = str(out / "anchor_scores")
        score.run(ckpt, anchors, anchor_scores, overwrite=True, spark=spark)

    _step("evaluate")
    report = out / "report"
    argv = ["--scores", scores, "--out", str(report), "--stamps", str(paths["stamps"]), "--checkpoint", ckpt,
            "--n-boot", "200"]
    if anchor_scores:
        argv += ["--anchor-scores", anchor_scores]
    evaluate.main(argv)
    metrics = json.loads((report / "metrics.json").read_text())
    headline = {"auc_test": metrics.get("auc"), "report": str(report / "report.html")}
    print(f"\nsynthetic test AUC = {metrics.get('auc'):.3f}; report: {report / 'report.html'}", file=sys.stderr)
    gate = metrics.get("anchor_gate", {})
    if gate.get("available") is False:
        print(f"anchor gate: not run ({gate.get('reason')})", file=sys.stderr)

    _step("realism gates")
    from jobs.evaluation.realism import headline as realism_headline
    from jobs.evaluation.realism import run_realism

    realism = run_realism(str(paths["stamps"]), anchors, str(out / "realism"), checkpoint=ckpt, shared_data_dir=shared)
    print(realism_headline(realism), file=sys.stderr)
    headline["realism"] = {"domain_auc": realism.get("domain_auc"), "all_pass": realism.get("all_pass")}
    return headline


def build_banks(out: Path, shared: Path) -> dict:
    """Small Gen5 (COSMOS) and Gen6 (deep HSC) banks from the real data, as config overrides.

    Returns {} with a clear message when the real data folder is absent: the demo then mixes
    only the procedural sources (sersic, hybrid).
    """
    cosmos_dir, hsc_dir = shared / "cosmos_hst", shared / "hsc"
    if not (cosmos_dir.is_dir() and hsc_dir.is_dir()):
        print(f"banks: no real data at {shared} (set DHS_SHARED_DATA); demo uses sersic + hybrid sources only",
              file=sys.stderr)
        return {}
    from jobs.experiments.banks import cosmos_bank_main, deep_bank_main

    cosmos, deep = out / "banks" / "cosmos_bank.h5", out / "banks" / "deep_bank.npz"
    # COSMOS templates keep 4x finer sampling than the survey pixel: lensing magnifies source detail
    cosmos_bank_main(["--galsim-path", str(cosmos_dir), "--output", str(cosmos), "--n-sources", "100",
                      "--stamp-size", "96", "--target-pixscale", "0.0655", "--seed", "0"])
    deep_bank_main(["--fits-dir", str(hsc_dir), "--output", str(deep), "--n-sources", "100"])
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
    p.add_argument("--partitions", type=int, default=4, help="Spark partitions (default 4)")
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
        if not args.skip_train:
            train_and_evaluate(out, paths, args.epochs, spark, shared_data_dir())
    finally:
        spark.stop()
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
