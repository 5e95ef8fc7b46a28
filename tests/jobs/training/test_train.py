"""jobs.training.train: config validation, learning on an easy synthetic set, resume, early stopping, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

from bench.training import make_synthetic_stamps
from dhs_gen.errors import ConfigError
from jobs.runtime.schema import decode_image
from jobs.training.model import load_checkpoint
from jobs.training.preprocess import normalize_stamps
from jobs.training.train import TrainConfig, load_train_config, main, train

# Small, fast settings: 32x32 stamps, a narrow resnet_small; the reader and model are size-agnostic.
FAST = dict(batch_size=32, lr=3e-3, warmup_steps=3, shuffle_buffer=128, model={"width": 8})


@pytest.fixture(scope="module")
def easy(tmp_path_factory):
    """240 hosts, injection + paired control each, arcs at matched-filter SNR 15-35 in r."""
    out = tmp_path_factory.mktemp("easy")
    make_synthetic_stamps(str(out), n_hosts=240, n_files=3, size=32, snr_range=(15.0, 35.0),
                          split_probs=(0.75, 0.25, 0.0), reject_frac=0.02, seed=3, theta_e_range=(0.8, 1.8))
    return str(out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    make_synthetic_stamps(str(out), n_hosts=60, n_files=2, size=32, split_probs=(0.7, 0.3, 0.0), seed=8)
    return str(out)


# ---------------------------------------------------------------------------------------------
# configuration


@pytest.mark.parametrize("field, value", [
    ("epochs", 0), ("epochs", 2.5), ("batch_size", 1), ("lr", 0.0), ("weight_decay", -1.0),
    ("schedule", "linear"), ("warmup_steps", -1), ("early_stopping_patience", -2),
    ("early_stopping_metric", "accuracy"), ("core_dropout_p", 1.5), ("core_radius_pix", float("nan")),
    ("paired", "yes"), ("augment", 1), ("num_workers", -1), ("device", "tpu"), ("amp", "false"),
    ("max_steps_per_epoch", 0), ("shuffle_buffer", -5),
])
def test_bad_config_values_name_the_field(field, value):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({field: value})
    assert err.value.field == field and err.value.value is value


def test_bad_model_and_unknown_fields():
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"model": {"arch": "vgg"}})
    assert err.value.field == "model.arch"
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict({"epoch": 3})  # typo of epochs
    assert err.value.field == "epoch"


def test_yaml_configs(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text("epochs: 3\nlr: 0.01\nmodel:\n  arch: resnet18ish\n  dropout: 0.2\n")
    cfg = load_train_config(str(path), {"epochs": 5, "device": None})
    assert (cfg.epochs, cfg.lr, cfg.model.arch, cfg.model.dropout, cfg.device) == (5, 0.01, "resnet18ish", 0.2, "auto")
    # An experiment preset contributes its train: section (Gen5-Prime: core dropout r=5 px, p=0.5, pairs).
    prime = load_train_config("gen5prime")
    assert (prime.core_dropout_p, prime.core_radius_pix, prime.paired) == (0.5, 5, True)
    assert json.loads(json.dumps(prime.to_dict()))["model"]["arch"] == "resnet_small"


# ---------------------------------------------------------------------------------------------
# training


def _val_scores_independently(stamps_dir: str, ckpt: str) -> tuple[np.ndarray, np.ndarray]:
    """Score the val split with pyarrow + the checkpoint, bypassing jobs.training.reader's streaming/batching."""
    model, _ = load_checkpoint(ckpt)
    imgs, labels = [], []
    for name in sorted(os.listdir(stamps_dir)):
        if not name.endswith(".parquet"):
            continue
        t = pq.read_table(os.path.join(stamps_dir, name), columns=["image", "image_shape", "label", "split",
                                                                    "cutout_ok"]).to_pylist()
        for r in t:
            if r["split"] == "val" and r["cutout_ok"] == 1:
                imgs.append(decode_image(r["image"], r["image_shape"]))
                labels.append(r["label"])
    with torch.no_grad():
        scores = model(torch.from_numpy(normalize_stamps(np.stack(imgs)))).numpy()
    return scores, np.asarray(labels)


def test_training_learns_an_easy_set_quickly(easy, tmp_path):
    out = tmp_path / "run"
    cfg = TrainConfig(epochs=3, seed=0, **FAST)
    summary = train(easy, str(out), cfg, progress=False)
    for name in ("last.pt", "best.pt", "history.json", "train_config.json"):
        assert (out / name).is_file(), name
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2] and summary["epochs_run"] == 3
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Independent oracle: sklearn's AUC of the best checkpoint on the val rows read with pyarrow.
    scores, labels = _val_scores_independently(easy, str(out / "best.pt"))
    auc = roc_auc_score(labels, scores)
    assert auc > 0.9
    assert auc == pytest.approx(summary["best_metric"], abs=1e-6)
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["train"]["model"]["width"] == 8
    assert saved["rows"]["val"]["n_ok"] == len(labels) == history[0]["n_val"]
    # Every usable train row is seen once per epoch (a final batch of one stamp is skipped for BatchNorm).
    assert saved["rows"]["train"]["n_ok"] - 1 <= history[0]["n_train"] <= saved["rows"]["train"]["n_ok"]
    assert saved["rows"]["train"]["n_rejected"] + saved["rows"]["val"]["n_rejected"] > 0  # 2% rejected, counted


def test_same_seed_is_bit_identical_on_cpu(tiny, tmp_path):
    cfg = TrainConfig(epochs=1, seed=1, max_steps_per_epoch=3, device="cpu", **FAST)
    a = train(tiny, str(tmp_path / "a"), cfg, progress=False)
    b = train(tiny, str(tmp_path / "b"), cfg, progress=False)
    assert a["history"][0]["train_loss"] == b["history"][0]["train_loss"]
    sa = load_checkpoint(str(tmp_path / "a" / "last.pt"))[0].state_dict()
    sb = load_checkpoint(str(tmp_path / "b" / "last.pt"))[0].state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_resume_continues_from_the_saved_epoch(tiny, tmp_path):
    cfg = TrainConfig(epochs=3, seed=2, max_steps_per_epoch=3, save_every_epoch=True, augment=True,
                      core_dropout_p=0.5, device="cpu", **{**FAST, "model": {"width": 8, "dropout": 0.3}})
    full = train(tiny, str(tmp_path / "full"), cfg, progress=False)
    # "Interrupted" after epoch 1: resume from that epoch's checkpoint into a fresh folder.
    resumed = train(tiny, str(tmp_path / "resumed"), cfg, resume_from=str(tmp_path / "full" / "epoch-001.pt"),
                    progress=False)
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2]
    assert resumed["history"][:2] == full["history"][:2]  # carried over, not re-run
    assert resumed["history"][2]["train_loss"] == full["history"][2]["train_loss"]
    a = load_checkpoint(str(tmp_path / "full" / "last.pt"))
    b = load_checkpoint(str(tmp_path / "resumed" / "last.pt"))
    assert b[1]["epoch"] == 2
    # Optimizer, scheduler, RNG and loader draws restored: the same weights as never stopping.
    assert all(torch.equal(a[0].state_dict()[k], b[0].state_dict()[k]) for k in a[0].state_dict())
    assert a[1]["optimizer"]["state"][0]["step"] == b[1]["optimizer"]["state"][0]["step"] == 9


def test_early_stopping_without_a_usable_val_metric(tmp_path):
    data = tmp_path / "noval"
    make_synthetic_stamps(str(data), n_hosts=20, n_files=1, size=32, split_probs=(1.0, 0.0, 0.0), seed=1)
    cfg = TrainConfig(epochs=5, early_stopping_patience=1, max_steps_per_epoch=1, **FAST)
    summary = train(str(data), str(tmp_path / "run"), cfg, progress=False)
    # No val rows: AUC is NaN every epoch, never improves; patience 1 stops after the first epoch.
    assert summary["stopped_early"] and summary["epochs_run"] == 1
    assert summary["history"][0]["n_val"] == 0
    assert (tmp_path / "run" / "best.pt").is_file()


def test_paired_core_dropout_training_runs(tiny, tmp_path):
    cfg = load_train_config("gen5prime", {"epochs": 1, "max_steps_per_epoch": 2, **FAST})
    summary = train(tiny, str(tmp_path / "p"), cfg, progress=False)
    assert summary["history"][0]["steps"] == 2


def test_cli(tiny, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("batch_size: 16\nmodel:\n  width: 4\n")
    rc = main(["--stamps", tiny, "--out", str(tmp_path / "cli"), "--config", str(cfg), "--epochs", "1",
               "--max-steps-per-epoch", "2", "--device", "cpu", "--no-progress", "--early-stopping-patience", "7"])
    assert rc == 0
    assert "epoch 1/1" in capsys.readouterr().out
    _, meta = load_checkpoint(str(tmp_path / "cli" / "last.pt"))
    assert meta["train_config"]["batch_size"] == 16 and meta["model_config"]["width"] == 4
    assert meta["train_config"]["early_stopping_patience"] == 7
    cfg.write_text("batch_size: 1\n")
    assert main(["--stamps", tiny, "--out", str(tmp_path / "x"), "--config", str(cfg)]) == 2
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0


def test_best_checkpoint_carries_the_validation_temperature(tiny, tmp_path):
    from jobs.training.calibration import checkpoint_temperature, fit_temperature
    from jobs.training.reader import make_loader
    from jobs.training.train import val_logits

    cfg = TrainConfig(epochs=2, seed=1, max_steps_per_epoch=3, device="cpu", **FAST)
    summary = train(tiny, str(tmp_path / "m"), cfg, progress=False)
    model, meta = load_checkpoint(str(tmp_path / "m" / "best.pt"))
    t = checkpoint_temperature(meta)
    assert t is not None and t == summary["calibration"]["temperature"]
    # the oracle: the same fit on the best model's own validation logits
    logits, labels = val_logits(model, make_loader(tiny, "val", 64, 0, cfg.seed, 0), torch.device("cpu"))
    assert t == pytest.approx(fit_temperature(logits, labels), rel=1e-9)
    calib = json.loads((tmp_path / "m" / "calibration.json").read_text())
    assert calib["val_bce_after"] <= calib["val_bce_before"] + 1e-12
    # provenance: commit, branch and whether the tree was edited, in the checkpoint and train_config.json
    recorded = json.loads((tmp_path / "m" / "train_config.json").read_text())["git"]
    assert meta["git"] == recorded and set(recorded) == {"commit", "branch", "dirty", "diff_sha256"}
    assert recorded["commit"] == meta["git_sha"]


def test_training_on_one_class_is_refused_before_any_step(tmp_path):
    import pyarrow.compute as pc

    src = tmp_path / "src"
    make_synthetic_stamps(str(src), n_hosts=20, n_files=1, size=32, split_probs=(0.7, 0.3, 0.0), seed=4)
    part = next(src.glob("part-*.parquet"))
    table = pq.read_table(part)
    pq.write_table(table.filter(pc.equal(table["label"], 1)), part)      # only the injections left
    manifest = json.loads((src / "_manifest.json").read_text())
    manifest["file_rows"] = {part.name: pq.read_metadata(part).num_rows}
    (src / "_manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ConfigError, match="one class only"):
        train(str(src), str(tmp_path / "m"), TrainConfig(epochs=1, **FAST), progress=False)
    assert not (tmp_path / "m" / "best.pt").exists()
