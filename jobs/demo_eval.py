"""The second half of ``dhs demo``: train on CPU, score, build the real anchor set, evaluate, realism.

Kept apart from :mod:`jobs.demo` so the pipeline half imports no torch.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from jobs.demo import _step

DEMO_TRAIN = {"epochs": 8, "batch_size": 64, "lr": 3e-3, "num_workers": 0, "device": "cpu",
              "early_stopping_patience": 3, "seed": 0}


def build_anchors(out: Path, shared: Path) -> str | None:
    """The real anchor set from the shared data folder, or None (said plainly) when it is absent."""
    if not shared.is_dir():
        print(f"anchor set: no real data folder at {shared} (set DHS_SHARED_DATA): the anchor gate will not run",
              file=sys.stderr)
        return None
    from jobs.anchors import build_default_anchor_set

    uri = str(out / "anchors")
    build_default_anchor_set(str(shared), uri, overwrite=True)
    return uri


def train_and_evaluate(out: Path, paths: dict, epochs: int, spark, shared: Path) -> dict:
    """train -> score (stamps, anchors) -> evaluate -> realism; returns the headline numbers."""
    from jobs import evaluate, score, train

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
    from jobs.realism import headline as realism_headline
    from jobs.realism import run_realism

    realism = run_realism(str(paths["stamps"]), anchors, str(out / "realism"), checkpoint=ckpt, shared_data_dir=shared)
    print(realism_headline(realism), file=sys.stderr)
    headline["realism"] = {"domain_auc": realism.get("domain_auc"), "all_pass": realism.get("all_pass")}
    return headline
