"""Real hard negatives in training: source weights x --hard-neg-weight, the loss by hand, one pass per epoch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from bench.training import make_synthetic_stamps
from jobs.anchors.anchor_set import build_default_anchor_set
from jobs.cutouts.host_images import Declared, read_npz
from jobs.stages import hosts
from jobs.training.hard_negatives import HardNegativeSet
from jobs.training.model import ModelConfig, build_model
from jobs.training.train import TrainConfig, _with_hard_negatives, train

SOURCES = ["model_fp", "ring", "merger", "ring", "merger", "model_fp"]


@pytest.fixture(scope="module")
def hardneg_hosts(shared_data, tmp_path_factory):
    """The 6 real DR10 cutouts as if `dhs hardneg collect` had chosen them (weight given for two rows only)."""
    base = tmp_path_factory.mktemp("hn")
    paths = sorted((shared_data / "dr10" / "cutouts").glob("*.npz"))
    lines = ["RA,DEC,hardneg_source,weight"]
    for i, p in enumerate(paths):
        h = read_npz(str(p))
        lines.append(f"{h.ra!r},{h.dec!r},{SOURCES[i]},{'7.0' if i == 0 else ('0.5' if i == 1 else '')}")
    (base / "hardneg.csv").write_text("\n".join(lines) + "\n")
    hosts.build_hosts(f"local:{shared_data}/dr10/cutouts", str(base / "hosts"), str(base / "hardneg.csv"), size=48,
                      declared=Declared(psf_fwhm_arcsec=(1.5, 1.3, 1.2)))
    return base / "hosts"


def test_row_weight_is_the_source_weight_times_the_flag(hardneg_hosts):
    hn = HardNegativeSet(str(hardneg_hosts), 5.0, (3, 32, 32))
    assert len(hn) == 6 and hn.images.shape == (6, 3, 32, 32)
    # hand computation: given weights 7.0 and 0.5 win; otherwise model_fp 3.0, ring 2.0, merger 1.5
    expected = sorted([7.0, 0.5, 1.5, 2.0, 1.5, 3.0])
    assert sorted(hn.weights.tolist()) == pytest.approx([5.0 * w for w in expected])
    assert hn.by_source == {"model_fp": 2, "ring": 2, "merger": 2}
    assert hn.summary() == {"path": str(hardneg_hosts), "n_rows": 6, "weight": 5.0,
                            "by_source": {"model_fp": 2, "ring": 2, "merger": 2}, "excluded": {}}


def test_every_hard_negative_once_per_epoch_in_a_seeded_order(hardneg_hosts):
    hn = HardNegativeSet(str(hardneg_hosts), 1.0, (3, 32, 32))
    for epoch in (0, 1):
        steps = hn.epoch_batches(epoch, 4, seed=3)
        assert len(steps) == 4 and sorted(np.concatenate(steps).tolist()) == list(range(6))
    assert [s.tolist() for s in hn.epoch_batches(0, 4, 3)] == [s.tolist() for s in hn.epoch_batches(0, 4, 3)]
    assert [s.tolist() for s in hn.epoch_batches(0, 4, 3)] != [s.tolist() for s in hn.epoch_batches(1, 4, 3)]


def test_loss_is_the_batch_mean_of_weight_times_bce_by_hand(hardneg_hosts):
    hn = HardNegativeSet(str(hardneg_hosts), 5.0, (3, 32, 32))
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet_small", width=4)).eval()
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    cfg = TrainConfig(augment=False, batch_size=4)
    bx, by, bw = _with_hard_negatives(x, y, hn, np.array([0, 3]), 0, 0, cfg, torch.device("cpu"))
    with torch.no_grad():
        logits = model(bx).double().numpy()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), by.double(),
                                                                    weight=bw.double()).item()
    p = 1 / (1 + np.exp(-logits))
    labels = np.array([1, 0, 1, 0, 0, 0])
    w = np.r_[np.ones(4), hn.weights[[0, 3]]]
    hand = np.mean(w * -(labels * np.log(p) + (1 - labels) * np.log(1 - p)))
    assert loss == pytest.approx(hand, rel=1e-9)
    np.testing.assert_array_equal(bx[4:].numpy(), hn.images[[0, 3]])   # no augmentation: the stored stamps


def test_training_records_the_hard_negatives(hardneg_hosts, tmp_path):
    stamps = tmp_path / "stamps"
    make_synthetic_stamps(str(stamps), n_hosts=40, n_files=1, size=32, split_probs=(0.7, 0.3, 0.0), seed=8)
    cfg = TrainConfig(epochs=1, max_steps_per_epoch=3, batch_size=16, lr=3e-3, shuffle_buffer=64, model={"width": 4})
    summary = train(str(stamps), str(tmp_path / "model"), cfg, progress=False, hard_negatives=str(hardneg_hosts),
                    hard_neg_weight=5.0)
    assert summary["epochs_run"] == 1
    recorded = json.loads((tmp_path / "model" / "train_config.json").read_text())["hard_negatives"]
    assert recorded["n_rows"] == 6 and recorded["weight"] == 5.0 and recorded["path"] == str(hardneg_hosts)


def test_lenses_of_an_anchor_set_are_never_hard_negatives(shared_data, tmp_path):
    build_default_anchor_set(str(shared_data), str(tmp_path / "anchors"))
    hn = HardNegativeSet(str(tmp_path / "anchors"), 1.0, (3, 32, 32))
    assert hn.excluded == {"label_1": 6} and len(hn) == 51
