"""Lens-finder CNNs (small ResNets) and their checkpoints.

Two architectures, chosen by name in :class:`ModelConfig`:

``resnet_small``
    A CPU-sized ResNet (3 stages of basic blocks, default width 12, a few 10k parameters),
    used in tests, the demo and the benchmark.
``resnet18ish``
    ResNet-18 layout (4 stages x 2 basic blocks, width 64 -> 512) with a 3x3 stride-1 stem and
    no max-pool, because a 64x64 stamp at 0.262"/pix has no pixels to spare (an Einstein
    radius of 1" is only ~4 pixels). For GPU training.

Both take normalised stamps ``(N, in_channels, H, W)`` (see :func:`jobs.training.reader.normalize_stamps`)
and return one logit per stamp ``(N,)``; ``model.features(x)`` returns the penultimate
(globally pooled) features ``(N, F)``, used by the realism domain classifier.

Checkpoints are a plain dict written with ``torch.save`` and read with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts only, never a
pickled object, so loading a checkpoint cannot execute code.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tempfile
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dhs_gen.errors import ConfigError, InvalidValueError, check_config_choice, check_config_range
from jobs.runtime.outputs import git_provenance, git_sha
from jobs.runtime.storage import is_s3, resolve

ARCHS = ("resnet_small", "resnet18ish")
CHECKPOINT_FORMAT = "dhs-checkpoint/1"

# arch -> (default width, default blocks per stage, channel multipliers of the stages)
_ARCH_LAYOUT: dict[str, tuple[int, int, tuple[int, ...]]] = {
    "resnet_small": (12, 1, (1, 2, 4)),
    "resnet18ish": (64, 2, (1, 2, 4, 8)),
}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the lens finder (validated on construction).

    Parameters
    ----------
    arch : str
        ``"resnet_small"`` (CPU) or ``"resnet18ish"`` (GPU).
    in_channels : int
        Number of bands of the input stamps (3 for grz).
    width : int or None
        Channels of the first stage; later stages double it. None = the arch default
        (12 for resnet_small, 64 for resnet18ish).
    depth : int or None
        Residual blocks per stage. None = the arch default (1 for resnet_small, 2 for resnet18ish).
    dropout : float
        Dropout probability before the final linear layer, in [0, 1).
    """

    arch: str = "resnet_small"
    in_channels: int = 3
    width: int | None = None
    depth: int | None = None
    dropout: float = 0.0

    def __post_init__(self):
        check_config_choice("model.arch", self.arch, ARCHS)
        default_width, default_depth, _ = _ARCH_LAYOUT[self.arch]
        # Resolve the arch defaults so the saved config says exactly what was built.
        if self.width is None:
            object.__setattr__(self, "width", default_width)
        if self.depth is None:
            object.__setattr__(self, "depth", default_depth)
        check_config_range("model.in_channels", self.in_channels, 1, 64, integer=True)
        check_config_range("model.width", self.width, 1, 1024, integer=True)
        check_config_range("model.depth", self.depth, 1, 16, integer=True)
        object.__setattr__(self, "dropout", check_config_range("model.dropout", self.dropout, 0, 1, hi_open=True))

    @classmethod
    def from_dict(cls, d: dict | None) -> ModelConfig:
        """Build from a (YAML) mapping; unknown keys raise :class:`ConfigError` naming them."""
        d = dict(d or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model.{unknown[0]}", d[unknown[0]], f"unknown field; allowed: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        """Plain dict of the resolved fields (JSON- and checkpoint-safe)."""
        return dataclasses.asdict(self)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or 1x1-projected) shortcut, as in ResNet-18."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class LensResNet(nn.Module):
    """ResNet lens finder: stem -> stages of :class:`BasicBlock` -> global average pool -> logit."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        _, _, multipliers = _ARCH_LAYOUT[cfg.arch]
        widths = [cfg.width * m for m in multipliers]
        # The CPU model halves the resolution in its stem (4x fewer operations): a 1-2" arc still
        # spans 2-4 of its 0.52" pixels. The GPU model keeps full resolution.
        stem_stride = 2 if cfg.arch == "resnet_small" else 1
        self.stem = nn.Sequential(
            nn.Conv2d(cfg.in_channels, widths[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            for j in range(cfg.depth):
                # Downsample by 2 at the first block of every stage but the first.
                blocks.append(BasicBlock(c_in, c_out, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(c_in, 1)
        self.num_features = c_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features.

        Parameters
        ----------
        x : torch.Tensor
            ``(N, in_channels, H, W)`` normalised stamps (dimensionless, see ``normalize_stamps``).

        Returns
        -------
        torch.Tensor
            ``(N, F)`` pooled features (dimensionless), ``F = model.num_features``.
        """
        return torch.flatten(self.pool(self.blocks(self.stem(x))), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N,)`` (log-odds of "lens"; ``torch.sigmoid`` gives the score in [0, 1])."""
        return self.head(self.dropout(self.features(x))).squeeze(-1)


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is a ConfigError."""
    check_config_choice("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "cuda requested but torch.cuda.is_available() is False")
    return torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")


def build_model(cfg: ModelConfig) -> LensResNet:
    """A freshly initialised model for ``cfg`` (initialisation follows ``torch``'s current RNG)."""
    if not isinstance(cfg, ModelConfig):
        raise InvalidValueError("cfg", cfg, "must be a jobs.training.model.ModelConfig")
    return LensResNet(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _plain(value, where: str):
    """Return ``value`` as checkpoint-safe plain data (numpy scalars -> Python), else raise."""
    if value is None or type(value) in (bool, int, float, str) or isinstance(value, torch.Tensor):
        return value
    if isinstance(value, str):  # str subclasses (e.g. torch's TorchVersion) would need a global to unpickle
        return str(value)
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str | int):
                raise InvalidValueError(f"{where} key", k, "checkpoint dict keys must be str or int")
            out[k] = _plain(v, f"{where}.{k}")
        return out
    if isinstance(value, list | tuple):
        return type(value)(_plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    raise InvalidValueError(where, type(value).__name__,
                            "checkpoints hold only tensors, numbers, strings, lists and dicts (weights_only=True)")


def save_checkpoint(path_or_uri: str, model: nn.Module, cfg: ModelConfig, train_config: dict | None = None,
                    extra: dict | None = None) -> None:
    """Write a checkpoint loadable with ``torch.load(weights_only=True)``.

    Parameters
    ----------
    path_or_uri : str
        Local path or ``s3://`` URI of the ``.pt`` file (written locally, then uploaded).
    model : torch.nn.Module
        The model; its ``state_dict`` is saved.
    cfg : ModelConfig
        Its architecture, saved as a plain dict.
    train_config : dict, optional
        Resolved training configuration (plain values).
    extra : dict, optional
        More plain data: ``epoch``, ``metrics``, ``optimizer``/``scheduler`` state dicts, ...
        Keys must not clash with the reserved ones (format, model_config, train_config,
        state_dict, git_sha, torch_version). ``temperature`` (a float > 0, dimensionless, from
        :func:`jobs.training.calibration.fit_temperature` on the validation split) makes
        ``dhs score`` report ``sigmoid(logit / temperature)``.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_config": cfg.to_dict(),
        "train_config": _plain(dict(train_config or {}), "train_config"),
        "state_dict": model.state_dict(),
        "git_sha": git_sha(),
        "git": git_provenance(),
        "torch_version": str(torch.__version__),
    }
    for key, value in (extra or {}).items():
        if key in payload:
            raise InvalidValueError("extra", key, f"key is reserved; reserved keys: {sorted(payload)}")
        payload[key] = _plain(value, f"extra.{key}")
    if is_s3(path_or_uri):
        buf = io.BytesIO()
        torch.save(payload, buf)
        fs, path = resolve(path_or_uri)
        with fs.open_output_stream(path) as f:
            f.write(buf.getvalue())
        return
    path = os.path.abspath(path_or_uri)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Write then rename, so a crash mid-write never leaves a truncated last.pt to resume from.
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path_or_uri: str, map_location="cpu") -> tuple[LensResNet, dict]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path_or_uri : str
        Local path or ``s3://`` URI.
    map_location : str or torch.device
        Where to put the tensors (default ``"cpu"``).

    Returns
    -------
    model : LensResNet
        Rebuilt from the saved :class:`ModelConfig`, weights loaded, in eval mode.
    meta : dict
        Everything else in the checkpoint (``model_config``, ``train_config``, ``git_sha``,
        ``epoch``, ``metrics``, optimizer state, ...), without ``state_dict``; every ``extra`` key
        of :func:`save_checkpoint` sits at the top level, so a fitted temperature is
        ``meta["temperature"]`` (read it with :func:`jobs.training.calibration.checkpoint_temperature`).
    """
    if is_s3(path_or_uri):
        fs, path = resolve(path_or_uri)
        with fs.open_input_file(path) as f:
            src = io.BytesIO(f.read())
    else:
        src = os.path.abspath(path_or_uri)
    try:
        payload = torch.load(src, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests loading it unsafely, i.e. running the file's code: never here
        raise InvalidValueError("checkpoint", str(path_or_uri), "is not a trusted checkpoint of this project (it "
                                "holds Python objects beyond tensors, numbers, strings, lists and dicts); "
                                "it was not loaded") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise InvalidValueError("checkpoint format", found, f"expected {CHECKPOINT_FORMAT!r}")
    model = build_model(ModelConfig.from_dict(payload["model_config"]))
    model.load_state_dict(payload["state_dict"])
    if isinstance(map_location, str | torch.device):
        model.to(map_location)
    model.eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta
