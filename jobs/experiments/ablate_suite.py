"""Ablation suites: load and validate a suite YAML, resolve each variant's configs, check comparability.

A suite (``configs/ablations/<suite>.yaml``) names a baseline and variants, each a generation
preset plus overrides, and per-scale settings. :func:`load_suite` validates the YAML,
:func:`scale_settings` fills one scale's defaults, :func:`resolve_variant` merges preset <- common
<- scale <- variant into an (InjectionConfig, TrainConfig), and :func:`check_comparable` refuses
variants that differ in what a comparison must share. Used by :mod:`jobs.experiments.ablate`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import yaml

from dhs_gen.errors import ConfigError
from jobs.experiments.uber_weights import check_weights_from
from jobs.runtime.config import (
    CONFIG_DIR,
    InjectionConfig,
    config_from_dict,
    deep_merge,
    find_yaml,
    read_config_dict,
)

SUITE_DIR = CONFIG_DIR / "ablations"
#: Training options of every variant (CPU, deterministic) before the scale's and the variant's overrides.
DEMO_TRAIN = {"batch_size": 64, "lr": 3e-3, "num_workers": 0, "device": "cpu", "early_stopping_patience": 0}
#: Fields that must be equal in every variant, or the comparison would not isolate the variant.
SHARED_FIELDS = ("seed", "n_replicates", "stamp_size_pix", "pixscale_arcsec", "split_fractions", "max_hosts")


@dataclass(frozen=True)
class Variant:
    """One arm of a suite: a preset (``configs/<preset>.yaml``) plus experiment and training overrides.

    ``mix_weights`` (uber only): the source and artifact mixture weights come from earlier
    suites' results (:mod:`jobs.experiments.uber_weights`: weighted, or the seed's defaults as a stated fallback).
    """

    name: str
    preset: str
    overrides: dict = field(default_factory=dict)
    train_overrides: dict = field(default_factory=dict)
    mix_weights: bool = False


@dataclass(frozen=True)
class Suite:
    """A validated suite YAML. ``scales`` maps a scale name to its settings (see :func:`scale_settings`)."""

    name: str
    baseline: str
    variants: tuple
    scales: dict
    seed: int = 0
    description: str = ""
    common_overrides: dict = field(default_factory=dict)
    no_bank_overrides: dict = field(default_factory=dict)   # applied when a cosmos variant has no bank
    weights_from: dict | None = None


def _mapping(name: str, value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(name, value, "must be a mapping")
    return dict(value)


def load_suite(path_or_name: str) -> Suite:
    """Suite YAML (a path, or a name under ``configs/ablations/``) -> validated :class:`Suite`."""
    path = find_yaml(path_or_name, SUITE_DIR, "suite")
    data = _mapping("suite", yaml.safe_load(path.read_text()))
    allowed = {"name", "description", "baseline", "seed", "variants", "scales", "common_overrides",
               "no_bank_overrides", "weights_from"}
    for key in data:
        if key not in allowed:
            raise ConfigError(f"suite.{key}", data[key], f"unknown field; allowed: {sorted(allowed)}")
    variants = []
    for name, spec in _mapping("suite.variants", data.get("variants")).items():
        spec = _mapping(f"suite.variants.{name}", spec)
        extra = set(spec) - {"preset", "overrides", "train_overrides", "mix_weights"}
        if extra or "preset" not in spec:
            raise ConfigError(f"suite.variants.{name}", spec,
                              "needs preset; may have overrides, train_overrides, mix_weights")
        variants.append(Variant(str(name), str(spec["preset"]), _mapping("overrides", spec.get("overrides")),
                                _mapping("train_overrides", spec.get("train_overrides")),
                                bool(spec.get("mix_weights", False))))
    if len(variants) < 2:
        raise ConfigError("suite.variants", [v.name for v in variants], "at least two variants")
    baseline = data.get("baseline")
    if baseline not in [v.name for v in variants]:
        raise ConfigError("suite.baseline", baseline, f"one of the variants {[v.name for v in variants]}")
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or seed < 0:
        raise ConfigError("suite.seed", seed, "an integer >= 0")
    if any(v.mix_weights for v in variants) and not data.get("weights_from"):
        raise ConfigError("suite.weights_from", None, "required when a variant has mix_weights: true")
    if data.get("weights_from") is not None:   # checked now, not after the arms have run
        check_weights_from(data["weights_from"])
    return Suite(str(data.get("name") or path.stem), baseline, tuple(variants), _mapping("suite.scales",
                 data.get("scales")), seed, str(data.get("description", "")),
                 _mapping("common_overrides", data.get("common_overrides")),
                 _mapping("no_bank_overrides", data.get("no_bank_overrides")), data.get("weights_from"))


SCALE_DEFAULTS = {"n_bricks": 4, "n_lrg": 30, "size_pix": 1200, "sky_seed": 0, "parent": None, "coadds": None,
                  "epochs": 3, "partitions": 4, "n_boot": 200, "master": "local[2]", "cosmos_bank": None, "deep_bank": None,
                  "overrides": {}, "train": {}, "docs": None}


def scale_settings(suite: Suite, scale: str) -> dict:
    """Settings of one scale: sky size (or ``parent``/``coadds`` URIs), epochs, partitions, n_boot, ...

    ``cosmos_bank`` / ``deep_bank``: None (use ``no_bank_overrides``), ``auto`` (build one with ``dhs
    cosmos-bank`` / ``dhs deep-bank`` from the shared real data when present) or a bank path/URI.
    """
    if scale not in suite.scales:
        raise ConfigError("--scale", scale, f"one of the suite's scales {sorted(suite.scales)}")
    given = _mapping(f"scales.{scale}", suite.scales[scale])
    unknown = set(given) - set(SCALE_DEFAULTS)
    if unknown:
        raise ConfigError(f"scales.{scale}.{sorted(unknown)[0]}", given[sorted(unknown)[0]],
                          f"unknown field; allowed: {sorted(SCALE_DEFAULTS)}")
    s = {**copy.deepcopy(SCALE_DEFAULTS), **given}
    if bool(s["parent"]) != bool(s["coadds"]):
        raise ConfigError(f"scales.{scale}.parent", s["parent"], "parent and coadds are given together")
    for key in ("n_bricks", "n_lrg", "epochs", "partitions", "n_boot"):
        if not isinstance(s[key], int) or s[key] < 1:
            raise ConfigError(f"scales.{scale}.{key}", s[key], "an integer >= 1")
    return s


def uses_mode(cfg_dict: dict, mode: str) -> bool:
    """Whether the (merged, unvalidated) config draws sources of ``mode``."""
    src = cfg_dict.get("source") or {}
    own = src.get("mode", "sersic")
    return own == mode or (own == "mix" and mode in (src.get("mix_modes") or ()))


def resolve_variant(suite: Suite, variant: Variant, scale: dict, banks: dict | None,
                    mix_overrides: dict | None = None):
    """(InjectionConfig, TrainConfig, source note) of one variant: preset <- common <- scale <- variant.

    The suite seed replaces the preset's experiment and training seeds; a variant drawing cosmos or
    deep sources gets that bank (``banks``: ``{"cosmos": uri, "deep": uri}``), or, without one, the
    suite's ``no_bank_overrides`` (said in the note).
    """
    from jobs.training.train import load_train_config

    merged = deep_merge(read_config_dict(variant.preset), suite.common_overrides)
    merged = deep_merge(merged, scale["overrides"])
    merged = deep_merge(merged, variant.overrides)
    if variant.mix_weights:
        merged = deep_merge(merged, mix_overrides or {})
    notes = []
    for kind in ("cosmos", "deep"):
        if not uses_mode(merged, kind):
            continue
        bank = (banks or {}).get(kind) or (merged.get("source") or {}).get(f"{kind}_bank")
        if bank:
            merged = deep_merge(merged, {"source": {f"{kind}_bank": bank}})
            notes.append(f"{kind} sources from bank {bank}")
        else:
            merged = deep_merge(merged, suite.no_bank_overrides)
            notes.append(f"no {kind} bank: replaced by overrides {suite.no_bank_overrides}")
    merged["seed"] = suite.seed
    merged.pop("extends", None)
    train_over = {**DEMO_TRAIN, "epochs": scale["epochs"], **scale["train"], **variant.train_overrides,
                  "seed": suite.seed}
    cfg = config_from_dict(merged)
    return cfg, load_train_config(variant.preset, train_over), "; ".join(notes)


def check_comparable(cfgs: dict[str, InjectionConfig]) -> None:
    """Refuse variants that differ in what must be shared (seed, grid, replicates, splits, stamps)."""
    ref_name, ref = next(iter(cfgs.items()))
    for name, cfg in cfgs.items():
        for f in SHARED_FIELDS:
            if getattr(cfg, f) != getattr(ref, f):
                raise ConfigError(f"variants.{name}.{f}", getattr(cfg, f), f"must equal {ref_name}'s {getattr(ref, f)!r}")
        if cfg.lens.theta_e_arcsec != ref.lens.theta_e_arcsec:
            raise ConfigError(f"variants.{name}.lens.theta_e_arcsec", cfg.lens.theta_e_arcsec,
                              f"must equal {ref_name}'s {ref.lens.theta_e_arcsec}")

