"""``dhs train``: stamps Parquet -> lens-finder CNN checkpoints (``last.pt``, ``best.pt``).

A pure-ish :func:`train` (config in, files + summary dict out) and a thin :func:`main`. The
training set is streamed by :mod:`jobs.training.reader` (split ``train``; validation on split ``val``,
both ``cutout_ok == 1`` only; rejected rows are counted and logged). AdamW, linear warm-up then
cosine decay per step, BCE-with-logits loss, early stopping on validation AUC (or loss).

Reproducibility: ``torch.manual_seed(seed)`` before the model is built, loader draws from
``(seed, epoch, worker)``, so a CPU run with the same config and worker count is bit-identical;
a run resumed from ``last.pt`` restores model, optimizer, scheduler, AMP scaler, torch RNG,
history and early-stopping state, and continues exactly where the interrupted run would have.

Outputs in ``out_dir`` (local or ``s3://``; written locally then uploaded): ``last.pt``,
``best.pt``, ``train_config.json`` (resolved config + row counts + git SHA) and
``history.json`` (per-epoch loss, val loss, val AUC, lr, time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm import tqdm

from dhs_gen.errors import ConfigError, InvalidValueError, check_config_choice, check_config_range
from dhs_gen.json_values import json_safe
from dhs_gen.metrics import roc_auc
from jobs.runtime.outputs import git_provenance
from jobs.runtime.storage import is_s3, resolve
from jobs.training.calibration import fit_temperature, mean_bce
from jobs.training.hard_negatives import HardNegativeSet
from jobs.training.model import (
    DEVICES,
    ModelConfig,
    build_model,
    load_checkpoint,
    resolve_device,
    save_checkpoint,
)
from jobs.training.preprocess import dihedral_torch
from jobs.training.reader import count_rows, make_loader, stamp_shape

SCHEDULES = ("cosine", "constant")
STOP_METRICS = ("val_auc", "val_loss")


def _num(field_name: str, value, lo=-math.inf, hi=math.inf, lo_open=False, integer=False):
    # YAML true/false is never a rate or a count, though float(True) would pass the range test.
    if isinstance(value, bool):
        raise ConfigError(field_name, value, "must be a number")
    return check_config_range(field_name, value, lo, hi, lo_open, integer=integer)


@dataclass(frozen=True)
class TrainConfig:
    """Training options (validated on construction; errors name the field).

    Units: ``lr`` per step (AdamW), ``weight_decay`` decoupled (AdamW), ``warmup_steps`` and
    ``max_steps_per_epoch`` in optimizer steps, ``core_radius_pix`` in pixels, ``shuffle_buffer``
    in stamps.
    """

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"                  # cosine | constant (after warm-up)
    warmup_steps: int = 0
    seed: int = 0
    early_stopping_patience: int = 5          # epochs without improvement; 0 = off
    early_stopping_metric: str = "val_auc"    # val_auc (higher is better) | val_loss (lower)
    core_dropout_p: float = 0.0               # Gen5-Prime core dropout probability per stamp
    core_radius_pix: float = 5.0
    paired: bool = False                      # keep pair_id groups in one batch
    augment: bool = True                      # flips + 90-degree rotations
    shuffle_buffer: int = 2048
    num_workers: int = 0
    device: str = "auto"                      # auto | cpu | cuda
    amp: bool = False                         # float16 autocast + grad scaling, on cuda only
    max_steps_per_epoch: int | None = None
    save_every_epoch: bool = False            # also keep epoch-NNN.pt (resumable) per epoch
    model: ModelConfig = field(default_factory=ModelConfig)

    def __post_init__(self):
        # the checked numbers are stored: a YAML "1e-3" (text to PyYAML) becomes the number it spells
        numbers = {"epochs": (1, 10_000, False, True), "batch_size": (2, 65_536, False, True),  # BatchNorm: >= 2
                   "lr": (0.0, 10.0, True, False), "weight_decay": (0.0, 10.0, False, False),
                   "warmup_steps": (0, 10_000_000, False, True), "seed": (0, 2**63 - 1, False, True),
                   "early_stopping_patience": (0, 10_000, False, True), "core_dropout_p": (0.0, 1.0, False, False),
                   "core_radius_pix": (0.0, 1000.0, False, False), "shuffle_buffer": (0, 1 << 24, False, True),
                   "num_workers": (0, 256, False, True)}
        if self.max_steps_per_epoch is not None:
            numbers["max_steps_per_epoch"] = (1, 10_000_000, False, True)
        for name, (lo, hi, lo_open, integer) in numbers.items():
            value = _num(name, getattr(self, name), lo, hi, lo_open=lo_open, integer=integer)
            object.__setattr__(self, name, int(value) if integer else float(value))
        check_config_choice("schedule", self.schedule, SCHEDULES)
        check_config_choice("early_stopping_metric", self.early_stopping_metric, STOP_METRICS)
        for name in ("paired", "augment", "amp", "save_every_epoch"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, getattr(self, name), "must be true or false")
        check_config_choice("device", self.device, DEVICES)
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", ModelConfig.from_dict(self.model))
        if not isinstance(self.model, ModelConfig):
            raise ConfigError("model", self.model, "must be a mapping of model fields")

    @classmethod
    def from_dict(cls, d: dict | None) -> TrainConfig:
        """From a plain mapping (YAML); unknown fields raise :class:`ConfigError` naming them."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        for key in d:
            if key not in known:
                raise ConfigError(key, d[key], f"unknown training field; allowed: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain, JSON-safe dict of every resolved field (model included)."""
        d = dataclasses.asdict(self)
        d["model"] = self.model.to_dict()
        return d

    def replace(self, **changes) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


def load_train_config(path_or_preset: str | None, overrides: dict | None = None) -> TrainConfig:
    """TrainConfig from YAML: a plain training YAML, or an experiment preset/YAML's ``train:`` section.

    Parameters
    ----------
    path_or_preset : str or None
        A YAML path or a preset name of ``configs/`` (``extends:`` chains followed). None: defaults.
    overrides : dict, optional
        Fields set on top (e.g. from the command line); None values are ignored.
    """
    data: dict = {}
    if path_or_preset:
        from jobs.runtime.config import read_config_dict  # yaml.safe_load, follows extends

        raw = read_config_dict(path_or_preset)
        # An experiment config (it names a generation, or has a train: section) carries the
        # training options under train:; a plain training YAML is the options themselves.
        data = dict(raw.get("train") or {}) if ("train" in raw or "generation" in raw) else dict(raw)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return TrainConfig.from_dict(data)


class WarmupCosine:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine to 0 at ``total`` (or constant)."""

    def __init__(self, warmup: int, total: int, schedule: str):
        self.warmup, self.total, self.schedule = int(warmup), max(int(total), 1), schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        frac = min((step - self.warmup) / max(self.total - self.warmup, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * frac))


@torch.no_grad()
def val_logits(model: torch.nn.Module, loader, device: torch.device, amp: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) of ``model`` over every batch of ``loader``, float64 arrays."""
    model.eval()
    scores, labels = [], []
    with torch.no_grad():
        for batch in loader:
            x, y = batch["image"].to(device, non_blocking=True), batch["label"]
            with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                scores.append(model(x).float().cpu().numpy())
            labels.append(y.numpy())
    if not labels:
        return np.zeros(0), np.zeros(0)
    return np.concatenate(scores).astype(float), np.concatenate(labels).astype(float)


def evaluate(model: torch.nn.Module, loader, device: torch.device, amp: bool = False) -> dict:
    """Validation loss (mean BCE) and AUC of ``model`` over ``loader``; NaN when undefined."""
    s, y = val_logits(model, loader, device, amp)
    if not len(y):
        return {"val_loss": float("nan"), "val_auc": float("nan"), "n_val": 0}
    loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(s), torch.from_numpy(y)).item()
    auc = roc_auc(s, y) if 0 < y.sum() < len(y) else float("nan")
    return {"val_loss": loss, "val_auc": float(auc), "n_val": int(len(y))}


def calibrate(model: torch.nn.Module, loader, device: torch.device, amp: bool = False) -> dict:
    """Temperature scaling on the validation split: ``{temperature, n_val, val_bce_before, val_bce_after}``
    (``temperature`` None, with the reason, when it cannot be fitted: no validation rows or one class)."""
    logits, labels = val_logits(model, loader, device, amp)
    try:
        t = fit_temperature(logits, labels)
    except InvalidValueError as err:
        return {"temperature": None, "n_val": int(len(labels)), "reason": str(err)}
    return {"temperature": t, "n_val": int(len(labels)), "val_bce_before": mean_bce(logits, labels, 1.0),
            "val_bce_after": mean_bce(logits, labels, t)}


def _improved(metric: str, value: float, best: float | None) -> bool:
    if not math.isfinite(value):
        return False
    return best is None or (value > best if metric == "val_auc" else value < best)


def _with_hard_negatives(x, y, hard: HardNegativeSet, idx, epoch: int, step: int, cfg: TrainConfig, device):
    """The batch with this step's hard negatives appended (label 0), and the per-row loss weights."""
    hx = torch.from_numpy(hard.images[idx]).to(device)
    if cfg.augment:
        hx = dihedral_torch(hx, torch.from_numpy(hard.dihedral_ops(epoch, step, len(idx), cfg.seed)).to(device))
    w = torch.cat([torch.ones(len(y), device=device), torch.from_numpy(hard.weights[idx]).to(device)])
    return torch.cat([x, hx]), torch.cat([y, torch.zeros(len(idx), device=device, dtype=y.dtype)]), w


class _Outputs:
    """Files of the run, written in a local folder and uploaded when ``out_dir`` is s3://."""

    def __init__(self, out_dir: str):
        self.out_dir = out_dir.rstrip("/")
        self.s3 = is_s3(out_dir)
        self.local = tempfile.mkdtemp(prefix="dhs-train-") if self.s3 else os.path.abspath(out_dir)
        os.makedirs(self.local, exist_ok=True)

    def path(self, name: str) -> str:
        return os.path.join(self.local, name)

    def uri(self, name: str) -> str:
        return f"{self.out_dir}/{name}" if self.s3 else self.path(name)

    def write_json(self, name: str, obj) -> None:
        with open(self.path(name) + ".tmp", "w") as f:
            json.dump(json_safe(obj), f, indent=2, allow_nan=False)
        os.replace(self.path(name) + ".tmp", self.path(name))
        self.publish(name)

    def publish(self, name: str) -> None:
        if self.s3:
            fs, key = resolve(self.uri(name))
            with open(self.path(name), "rb") as src, fs.open_output_stream(key) as dst:
                dst.write(src.read())


def train(stamps_uri, out_dir: str, cfg: TrainConfig, resume_from: str | None = None, progress: bool = True,
          hard_negatives: str | None = None, hard_neg_weight: float = 1.0) -> dict:
    """Train a lens finder on stamps Parquet.

    Parameters
    ----------
    stamps_uri : str or list of str
        Stage 4c output(s) (directory with ``_manifest.json``), local or s3://.
    out_dir : str
        Output folder (local or s3://) for checkpoints, config and history.
    cfg : TrainConfig
        The training options.
    resume_from : str, optional
        A ``last.pt`` to continue from (its epochs count towards ``cfg.epochs``).
    progress : bool
        Show tqdm bars (the per-epoch line is always printed).
    hard_negatives : str, optional
        A host or anchor dataset of real cutouts mixed into every epoch as label-0 rows
        (:mod:`jobs.training.hard_negatives`); each row's loss weight is its source weight times
        ``hard_neg_weight``, the stamps' weight is 1 (loss: batch mean of weight x BCE).

    Returns
    -------
    dict
        ``best_metric``, ``best_epoch``, ``epochs_run``, ``stopped_early``, ``history`` (list of
        per-epoch dicts), ``best_checkpoint``, ``last_checkpoint`` (URIs), ``rows`` (counts of
        train/val rows kept and rejected).
    """
    device = resolve_device(cfg.device)
    amp = cfg.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input size: let cuDNN pick the fastest kernels
    rows = {"train": count_rows(stamps_uri, "train"), "val": count_rows(stamps_uri, "val")}
    if rows["train"]["n_ok"] == 0:
        raise ConfigError("stamps", str(stamps_uri), f"has no usable train rows (counts {rows['train']})")
    if rows["train"]["n_label_1"] == 0 or (rows["train"]["n_label_0"] == 0 and not hard_negatives):
        raise ConfigError("stamps", str(stamps_uri), f"train rows of one class only ({rows['train']['n_label_1']} "
                          f"lenses, {rows['train']['n_label_0']} non-lenses): a finder needs both; check the "
                          "manifest's paired_controls, or give --hard-negatives")
    steps_per_epoch = max(1, math.ceil(rows["train"]["n_ok"] / cfg.batch_size))
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(cfg.warmup_steps, cfg.epochs * steps_per_epoch,
                                                                cfg.schedule))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: list[dict] = []
    best_extra = None   # what best.pt was saved with, to re-save it with its temperature at the end
    start_epoch, best, best_epoch, bad_epochs = 0, None, None, 0
    if resume_from:
        saved, meta = load_checkpoint(resume_from, map_location="cpu")
        model.load_state_dict(saved.state_dict())
        opt.load_state_dict(meta["optimizer"])
        sched.load_state_dict(meta["scheduler"])
        # load_state_dict restored the saved schedule's length; use this run's (more epochs stretch it).
        sched.lr_lambdas[0] = WarmupCosine(cfg.warmup_steps, cfg.epochs * steps_per_epoch, cfg.schedule)
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        torch.set_rng_state(meta["torch_rng_state"])
        history = list(meta["history"])
        start_epoch = int(meta["epoch"]) + 1
        best, best_epoch, bad_epochs = meta["best_metric"], meta["best_epoch"], int(meta["bad_epochs"])

    hard = None
    if hard_negatives:
        shape = stamp_shape(stamps_uri)
        hard = HardNegativeSet(hard_negatives, hard_neg_weight, shape)
    out = _Outputs(out_dir)
    out.write_json("train_config.json", {"train": cfg.to_dict(), "stamps": stamps_uri, "rows": rows,
                                         "hard_negatives": hard.summary() if hard else None,
                                         "git": git_provenance(),
                                         "device": str(device), "resumed_from": resume_from,
                                         "torch_version": str(torch.__version__)})
    print(f"train: {rows['train']['n_ok']} train rows ({rows['train']['n_rejected']} rejected, skipped), "
          f"{rows['val']['n_ok']} val rows ({rows['val']['n_rejected']} rejected), {steps_per_epoch} steps/epoch, "
          f"device {device}", flush=True)
    loader = make_loader(stamps_uri, "train", cfg.batch_size, cfg.shuffle_buffer, cfg.seed, cfg.num_workers,
                         cfg.augment, cfg.core_dropout_p, cfg.core_radius_pix, cfg.paired,
                         pin_memory=device.type == "cuda", defer_dihedral=True)
    val_loader = make_loader(stamps_uri, "val", 2 * cfg.batch_size, 0, cfg.seed, cfg.num_workers,
                             pin_memory=device.type == "cuda")
    stopped_early = False
    for epoch in range(start_epoch, cfg.epochs):
        if cfg.early_stopping_patience and bad_epochs >= cfg.early_stopping_patience:
            stopped_early = True
            break
        t0 = time.perf_counter()
        model.train()
        loader.dataset.set_epoch(epoch)
        loss_sum, n_seen, steps = 0.0, 0, 0
        hard_steps = hard.epoch_batches(epoch, steps_per_epoch, cfg.seed) if hard else None
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch}", disable=not progress, leave=False)
        for batch in bar:
            if steps >= steps_per_epoch:
                break
            if len(batch["label"]) < 2:
                continue  # BatchNorm cannot train on one stamp (only a tiny last batch)
            x, y = batch["image"].to(device, non_blocking=True), batch["label"].to(device, non_blocking=True)
            if "dihedral_op" in batch:  # the reader's drawn flips/rotations, applied on the device
                x = dihedral_torch(x, batch["dihedral_op"])
            w = None
            if hard is not None and len(hard_steps[steps]):
                x, y, w = _with_hard_negatives(x, y, hard, hard_steps[steps], epoch, steps, cfg, device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=amp):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y, weight=w)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            steps += 1
            loss_sum += loss.item() * len(y)
            n_seen += len(y)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        metrics = evaluate(model, val_loader, device, amp)
        entry = {"epoch": epoch, "train_loss": loss_sum / max(n_seen, 1), "n_train": n_seen, "steps": steps,
                 # rows with NaN / inf pixels are left out, as scoring rejects them (counted in this process)
                 "n_nonfinite_skipped": loader.dataset.n_nonfinite if not cfg.num_workers else None,
                 **metrics, "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(entry)
        value = metrics[cfg.early_stopping_metric]
        is_best = _improved(cfg.early_stopping_metric, value, best)
        if is_best:
            best, best_epoch, bad_epochs = value, epoch, 0
        else:
            bad_epochs += 1
        extra = {"epoch": epoch, "metrics": entry, "history": history, "best_metric": best, "best_epoch": best_epoch,
                 "bad_epochs": bad_epochs, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "scaler": scaler.state_dict() if amp else {}, "torch_rng_state": torch.get_rng_state(),
                 "rows": rows}
        save_checkpoint(out.path("last.pt"), model, cfg.model, cfg.to_dict(), extra)
        out.publish("last.pt")
        if cfg.save_every_epoch:
            save_checkpoint(out.path(f"epoch-{epoch:03d}.pt"), model, cfg.model, cfg.to_dict(), extra)
            out.publish(f"epoch-{epoch:03d}.pt")
        if is_best or best is None:
            save_checkpoint(out.path("best.pt"), model, cfg.model, cfg.to_dict(), extra)
            out.publish("best.pt")
            best_extra = extra
        out.write_json("history.json", history)
        print(f"train: epoch {epoch + 1}/{cfg.epochs} loss {entry['train_loss']:.4f} val_loss "
              f"{metrics['val_loss']:.4f} val_auc {metrics['val_auc']:.4f} lr {entry['lr']:.2e} "
              f"{entry['seconds']:.1f}s{' *best*' if is_best else ''}", flush=True)
    calibration = None
    if best_extra is not None:
        # scores of the best model mean even odds at 0.5: its temperature, fitted on the validation split
        best_model, _ = load_checkpoint(out.path("best.pt"), map_location=device)
        calibration = calibrate(best_model, val_loader, device, amp)
        save_checkpoint(out.path("best.pt"), best_model, cfg.model, cfg.to_dict(),
                        {**best_extra, "temperature": calibration["temperature"], "calibration": calibration})
        out.publish("best.pt")
        out.write_json("calibration.json", calibration)
        print(f"train: temperature {calibration['temperature']} fitted on {calibration['n_val']} val rows", flush=True)
    return {"best_metric": best, "best_epoch": best_epoch, "epochs_run": len(history), "stopped_early": stopped_early,
            "history": history, "best_checkpoint": out.uri("best.pt"), "last_checkpoint": out.uri("last.pt"),
            "rows": rows, "calibration": calibration}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs train", description="Train a lens-finder CNN on stamps Parquet "
                                "(split train; validation on split val; cutout_ok=0 rows skipped and counted).")
    p.add_argument("--stamps", required=True, help="stage 4c output directory (local path or s3://)")
    p.add_argument("--out", required=True, help="output directory for last.pt, best.pt, history.json (local or s3://)")
    p.add_argument("--config", help="training YAML, or an experiment preset/YAML whose train: section is used")
    p.add_argument("--epochs", type=int, help="override epochs")
    p.add_argument("--batch-size", type=int, help="override batch_size")
    p.add_argument("--max-steps-per-epoch", type=int, help="override max_steps_per_epoch")
    p.add_argument("--num-workers", type=int, help="override num_workers (reader processes)")
    p.add_argument("--early-stopping-patience", type=int,
                   help="override early_stopping_patience (epochs without improvement before stopping; 0: never)")
    p.add_argument("--resume", help="checkpoint (last.pt) to resume from")
    p.add_argument("--hard-negatives", help="host/anchor dataset of real hard negatives, mixed in as label 0")
    p.add_argument("--hard-neg-weight", type=float, default=1.0,
                   help="multiplies each hard negative's source weight (model_fp 3, ring 2, merger 1.5); seed: 5")
    p.add_argument("--device", choices=DEVICES, help="override device (auto: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_train_config(args.config, {"epochs": args.epochs, "batch_size": args.batch_size,
                                              "max_steps_per_epoch": args.max_steps_per_epoch,
                                              "num_workers": args.num_workers, "device": args.device,
                                              "early_stopping_patience": args.early_stopping_patience})
    except ConfigError as e:
        print(f"dhs train: {e}", file=sys.stderr)
        return 2
    summary = train(args.stamps, args.out, cfg, resume_from=args.resume, progress=not args.no_progress,
                    hard_negatives=args.hard_negatives, hard_neg_weight=args.hard_neg_weight)
    print(f"train: best {cfg.early_stopping_metric} {summary['best_metric']} at epoch {summary['best_epoch']}; "
          f"checkpoints in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
