"""jobs.training.model: shapes, config validation, weights_only checkpoints (bit-exact round trip)."""

from __future__ import annotations

import pickle

import pytest
import torch

from dhs_gen.errors import ConfigError, InvalidValueError
from jobs.training.model import ModelConfig, build_model, count_parameters, load_checkpoint, save_checkpoint


@pytest.mark.parametrize("arch, n_features", [("resnet_small", 48), ("resnet18ish", 512)])
def test_forward_and_feature_shapes(arch, n_features):
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch)).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        logits, feats = model(x), model.features(x)
    assert logits.shape == (3,)
    # width x 4 (resnet_small, 3 stages) and 64 x 8 (resnet18ish, 4 stages): the ResNet layouts.
    assert feats.shape == (3, n_features) == (3, model.num_features)
    assert torch.isfinite(logits).all()


def test_model_is_size_agnostic_and_sizes_are_as_advertised():
    small = build_model(ModelConfig())
    big = build_model(ModelConfig(arch="resnet18ish"))
    # "a few 10k" parameters for CPU; ResNet-18 itself has 11.2M (11.7M minus its 1000-class head).
    assert 10_000 < count_parameters(small) < 100_000
    assert 10_000_000 < count_parameters(big) < 12_000_000
    with torch.no_grad():
        assert small.eval()(torch.zeros(2, 3, 32, 32)).shape == (2,)


def test_in_channels_and_dropout():
    model = build_model(ModelConfig(in_channels=1, width=4, depth=2, dropout=0.5)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 64, 64)).shape == (2,)
    assert model.num_features == 16


@pytest.mark.parametrize("kwargs, field", [
    ({"arch": "vgg16"}, "model.arch"),
    ({"width": 0}, "model.width"),
    ({"depth": 2.5}, "model.depth"),
    ({"in_channels": True}, "model.in_channels"),
    ({"dropout": 1.0}, "model.dropout"),
    ({"dropout": "x"}, "model.dropout"),
])
def test_bad_model_config_names_the_field(kwargs, field):
    with pytest.raises(ConfigError) as err:
        ModelConfig(**kwargs)
    assert err.value.field == field
    assert pickle.loads(pickle.dumps(err.value)).field == field  # survives Spark/DataLoader pickling


def test_from_dict_rejects_unknown_fields():
    with pytest.raises(ConfigError) as err:
        ModelConfig.from_dict({"arch": "resnet_small", "widht": 8})
    assert err.value.field == "model.widht"


def test_arch_defaults_are_resolved_in_the_config():
    assert ModelConfig().to_dict() == {"arch": "resnet_small", "in_channels": 3, "width": 12, "depth": 1,
                                       "dropout": 0.0}
    assert ModelConfig(arch="resnet18ish").width == 64


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(1)
    cfg = ModelConfig(width=8, dropout=0.1)
    model = build_model(cfg)
    # Move BatchNorm running stats off their defaults so buffers are checked too.
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64) * 3 + 1)
    path = tmp_path / "ckpt" / "m.pt"
    save_checkpoint(str(path), model, cfg, {"lr": 1e-3, "epochs": 2}, {"epoch": 7, "metrics": {"val_auc": 0.93}})

    # The oracle: torch itself loads it with weights_only=True (no pickled objects inside).
    raw = torch.load(path, weights_only=True)
    assert raw["model_config"] == cfg.to_dict()
    loaded, meta = load_checkpoint(str(path))
    assert not loaded.training
    assert meta["epoch"] == 7 and meta["metrics"] == {"val_auc": 0.93}
    assert meta["train_config"] == {"lr": 1e-3, "epochs": 2}
    assert "state_dict" not in meta
    ref = model.state_dict()
    got = loaded.state_dict()
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    model.eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
        assert torch.equal(model.features(x), loaded.features(x))


def test_checkpoint_refuses_pickled_objects(tmp_path):
    model = build_model(ModelConfig(width=4))
    with pytest.raises(InvalidValueError):
        save_checkpoint(str(tmp_path / "a.pt"), model, ModelConfig(width=4), {}, {"bad": object()})
    with pytest.raises(InvalidValueError):
        save_checkpoint(str(tmp_path / "b.pt"), model, ModelConfig(width=4), {}, {"model_config": {}})


class _Evil:
    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_loading_a_malicious_checkpoint_fails(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "dhs-checkpoint/1", "payload": _Evil()}, path)
    with pytest.raises(InvalidValueError, match="not a trusted checkpoint") as err:
        load_checkpoint(str(path))
    assert "weights_only=False" not in str(err.value)       # never advise running the file's code
    assert "code ran" not in capsys.readouterr().out


def test_numpy_scalars_in_metadata_become_plain(tmp_path):
    import numpy as np

    cfg = ModelConfig(width=4)
    save_checkpoint(str(tmp_path / "c.pt"), build_model(cfg), cfg, {"seed": np.int64(3)}, {"auc": np.float32(0.5)})
    _, meta = load_checkpoint(str(tmp_path / "c.pt"))
    assert meta["train_config"]["seed"] == 3 and type(meta["train_config"]["seed"]) is int
    assert type(meta["auc"]) is float


def test_temperature_travels_in_the_checkpoint_meta(tmp_path):
    import numpy as np

    from jobs.training.calibration import checkpoint_temperature

    cfg = ModelConfig(width=4)
    save_checkpoint(str(tmp_path / "t.pt"), build_model(cfg), cfg, {}, {"temperature": np.float64(2.75)})
    _, meta = load_checkpoint(str(tmp_path / "t.pt"))
    assert checkpoint_temperature(meta) == meta["temperature"] == 2.75 and type(meta["temperature"]) is float
    save_checkpoint(str(tmp_path / "u.pt"), build_model(cfg), cfg)
    assert checkpoint_temperature(load_checkpoint(str(tmp_path / "u.pt"))[1]) is None
