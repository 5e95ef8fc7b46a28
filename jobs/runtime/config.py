"""Injection configuration (stages 4a and 4c): YAML (safe_load) -> frozen, validated dataclasses, before Spark starts.

It is the ``data`` part of an experiment (:mod:`jobs.experiment`): a data variant names a
generation preset and the seed's injection fields, and resolves to one :class:`InjectionConfig`.
A generation (gen5, gen5prime, gen6, gen7a/b/c, gen8a/b/c, uber) is a configuration of the one
4a/4c code path: ``configs/<name>.yaml``. ``load_config`` resolves a preset name or a YAML path,
applies overrides, validates every field (the seed 004 experiment rules that concern injection: a Moffat PSF needs
``moffat_beta``, cosmos mode needs a COSMOS bank path, ranges sane) and returns an
:class:`InjectionConfig`. Errors are :class:`dhs_gen.errors.ConfigError` naming the field, the
value and what is allowed, so a bad config fails on the driver before any executor starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dhs_gen.augmentation.artifacts import ArtifactConfig, artifact_config
from dhs_gen.augmentation.mixer import ARTIFACT_PROFILE_NAMES
from dhs_gen.augmentation.mixer import SOURCE_MODES as _MIXER_SOURCE_MODES
from dhs_gen.conventions import PIXSCALE_DR10_ARCSEC
from dhs_gen.errors import ConfigError, check_config_choice, check_config_range
from jobs.runtime import storage

#: The repository checkout this code runs from (configs/ and git live here); run from the EMR bundle
#: (``dist/dhs_bundle.zip``), the folder holding the zip, whose ``configs/`` ``emr.package`` wrote beside it.
REPO_ROOT = Path(__file__).resolve().parents[2]
if REPO_ROOT.is_file():
    REPO_ROOT = REPO_ROOT.parent
CONFIG_DIR = REPO_ROOT / "configs"


def shared_data_dir() -> Path:
    """The real telescope data folder: ``$DHS_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DHS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


SOURCE_MODES = tuple(_MIXER_SOURCE_MODES)
ARTIFACT_PROFILES = tuple(ARTIFACT_PROFILE_NAMES)
ENGINES = ("numpy", "lenstronomy")
PSF_MODELS = ("moffat", "gaussian")
SPLITS = ("train", "val", "test")


def _interval(name: str, value, lo, hi) -> tuple[float, float]:
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise ConfigError(name, value, "must be a [low, high] pair")
    a, b = check_config_range(f"{name}[0]", value[0], lo, hi), check_config_range(f"{name}[1]", value[1], lo, hi)
    if a > b:
        raise ConfigError(name, value, "low must be <= high")
    return (a, b)


@dataclass(frozen=True)
class SourceConfig:
    """Which sources are lensed and how they are drawn (magnitudes AB, sizes arcsec)."""

    mode: str = "sersic"                      # sersic | hybrid | cosmos | deep | mix (uber)
    mix_modes: tuple = ("cosmos", "deep", "hybrid")
    mix_probs: tuple = (0.34, 0.33, 0.33)
    mag_r: tuple = (21.5, 24.0)               # unlensed source r magnitude range
    color_gr: tuple = (0.0, 0.8)              # g - r of the source
    color_rz: tuple = (-0.1, 0.6)             # r - z of the source
    r_eff_arcsec: tuple = (0.1, 0.5)
    n_sersic: tuple = (0.7, 2.0)
    q: tuple = (0.5, 1.0)
    beta_frac: tuple = (0.1, 1.0)             # source offset |beta| / theta_E (area-uniform)
    hybrid_clumps: bool = True                # Gen7b/7c
    hybrid_gradient: float = 0.15             # Gen7c colour-gradient strength (0 = none)
    hybrid_n_clumps: tuple = (2, 6)
    hybrid_clump_flux_frac: tuple = (0.05, 0.25)  # each clump's share of the source flux
    hybrid_clump_sigma_tpix: tuple = (0.8, 2.0)  # clump Gaussian sigma, template pixels (a quarter survey pixel)
    cosmos_bank: str | None = None
    deep_bank: str | None = None

    def __post_init__(self):
        modes = SOURCE_MODES + ("mix",)
        check_config_choice("source.mode", self.mode, modes)
        if not isinstance(self.mix_modes, list | tuple):
            raise ConfigError("source.mix_modes", self.mix_modes, f"a list of source modes among {list(SOURCE_MODES)}")
        object.__setattr__(self, "mix_modes", tuple(self.mix_modes))
        if not isinstance(self.mix_probs, list | tuple):
            raise ConfigError("source.mix_probs", self.mix_probs, "a list of weights, one per mix mode")
        object.__setattr__(self, "mix_probs", tuple(check_config_range(f"source.mix_probs[{i}]", p, 0, 1e9)
                                                    for i, p in enumerate(self.mix_probs)))
        for m in self.mix_modes:
            check_config_choice("source.mix_modes[]", m, SOURCE_MODES)
        if len(self.mix_modes) != len(self.mix_probs) or sum(self.mix_probs) <= 0 or min(self.mix_probs) < 0:
            raise ConfigError("source.mix_probs", self.mix_probs, "one weight >= 0 per mix mode, positive sum")
        for name, lo, hi in [("mag_r", 15, 30), ("color_gr", -1, 3), ("color_rz", -1, 3), ("r_eff_arcsec", 0.01, 5),
                             ("n_sersic", 0.3, 8), ("q", 0.05, 1), ("beta_frac", 0, 3)]:
            object.__setattr__(self, name, _interval(f"source.{name}", getattr(self, name), lo, hi))
        check_config_range("source.hybrid_gradient", self.hybrid_gradient, 0, 1)
        n = self.hybrid_n_clumps
        object.__setattr__(self, "hybrid_n_clumps", tuple(int(v) for v in _interval("source.hybrid_n_clumps", n, 0, 50)))
        object.__setattr__(self, "hybrid_clump_flux_frac",
                           _interval("source.hybrid_clump_flux_frac", self.hybrid_clump_flux_frac, 0, 1))
        object.__setattr__(self, "hybrid_clump_sigma_tpix",
                           _interval("source.hybrid_clump_sigma_tpix", self.hybrid_clump_sigma_tpix, 0.1, 50))
        used = set(self.mix_modes) if self.mode == "mix" else {self.mode}
        if "cosmos" in used and not self.cosmos_bank:
            raise ConfigError("source.cosmos_bank", self.cosmos_bank, "a COSMOS bank path is required when cosmos sources are used")
        if "deep" in used and not self.deep_bank:
            raise ConfigError("source.deep_bank", self.deep_bank, "a deep-source bank path is required when deep sources are used")


@dataclass(frozen=True)
class LensConfig:
    """Lens (SIE + external shear) draws; theta_E is a grid, the rest are drawn per task."""

    theta_e_arcsec: tuple = (0.8, 1.2, 1.6, 2.0)
    q: tuple = (0.5, 1.0)
    shear_sigma: float = 0.03                  # per component, Gaussian

    def __post_init__(self):
        if not isinstance(self.theta_e_arcsec, list | tuple) or not self.theta_e_arcsec:
            raise ConfigError("lens.theta_e_arcsec", self.theta_e_arcsec, "a non-empty list of Einstein radii in arcsec")
        object.__setattr__(self, "theta_e_arcsec",
                           tuple(check_config_range("lens.theta_e_arcsec[]", v, 0, 10, lo_open=True) for v in self.theta_e_arcsec))
        object.__setattr__(self, "q", _interval("lens.q", self.q, 0.05, 1))
        check_config_range("lens.shear_sigma", self.shear_sigma, 0, 0.3)


@dataclass(frozen=True)
class InjectionConfig:
    """What 4a plans and 4c renders: a generation preset plus its overrides. Units are in the field names."""

    name: str = "experiment"
    generation: str = "custom"
    description: str = ""
    seed: int = 0
    n_replicates: int = 1
    stamp_size_pix: int = 64
    pixscale_arcsec: float = PIXSCALE_DR10_ARCSEC
    bands: str = "grz"
    supersample: int = 4
    engine: str = "numpy"
    psf_model: str = "moffat"
    moffat_beta: float | None = 3.5
    psf_max_size_pix: int = 25
    arc_gain_e_per_nmgy: tuple = (2000.0, 2000.0, 1000.0)   # g, r, z: photons per nanomaggy in a DR10 coadd
    artifact_profile: str = "none"                           # none | mild | strong | mix
    artifact_mix: tuple = (0.15, 0.70, 0.15)                 # weights of none/mild/strong when "mix"
    # per profile, fields of its ArtifactConfig replaced ("tune rates for DR10"), e.g.
    # {"mild": {"cosmic_rate": 0.05, "jitter_sigma_pix": 0.1}}
    artifact_overrides: dict = field(default_factory=dict)
    mixer_salt: str = "uber_v1"
    paired_controls: bool = True
    hardneg_shuffle: bool = False
    split_fractions: tuple = (0.7, 0.15, 0.15)               # train, val, test, by brick
    max_hosts: int | None = None
    train: dict = field(default_factory=dict)                # training options, validated by jobs.training.train.TrainConfig
    # a record kept in every manifest and read by no stage: e.g. where uber_from_ablations.yaml's weights came from
    notes: dict = field(default_factory=dict)
    source: SourceConfig = field(default_factory=SourceConfig)
    lens: LensConfig = field(default_factory=LensConfig)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("name", self.name, "a non-empty string")
        check_config_range("n_replicates", self.n_replicates, 1, 1000)
        if int(self.stamp_size_pix) != self.stamp_size_pix or not 8 <= self.stamp_size_pix <= 512:
            raise ConfigError("stamp_size_pix", self.stamp_size_pix, "an integer in [8, 512]")
        check_config_range("pixscale_arcsec", self.pixscale_arcsec, 0, 10, lo_open=True)
        if self.bands != "grz":
            raise ConfigError("bands", self.bands, "only 'grz' (DR10) is supported")
        if int(self.supersample) != self.supersample or not 1 <= self.supersample <= 16:
            raise ConfigError("supersample", self.supersample, "an integer in [1, 16]")
        check_config_choice("engine", self.engine, ENGINES)
        check_config_choice("psf_model", self.psf_model, PSF_MODELS)
        if self.psf_model == "moffat":
            if self.moffat_beta is None:
                raise ConfigError("moffat_beta", None, "required when psf_model is 'moffat' (DR10: ~3.5)")
            check_config_range("moffat_beta", self.moffat_beta, 1, 100, lo_open=True)
        if int(self.psf_max_size_pix) != self.psf_max_size_pix or self.psf_max_size_pix % 2 == 0 or self.psf_max_size_pix < 3:
            raise ConfigError("psf_max_size_pix", self.psf_max_size_pix, "an odd integer >= 3")
        if not isinstance(self.arc_gain_e_per_nmgy, list | tuple):
            raise ConfigError("arc_gain_e_per_nmgy", self.arc_gain_e_per_nmgy, "three values, for g, r, z")
        gains = tuple(check_config_range("arc_gain_e_per_nmgy[]", g, 0, 1e9, lo_open=True) for g in self.arc_gain_e_per_nmgy)
        if len(gains) != 3:
            raise ConfigError("arc_gain_e_per_nmgy", self.arc_gain_e_per_nmgy, "three values, for g, r, z")
        object.__setattr__(self, "arc_gain_e_per_nmgy", gains)
        check_config_choice("artifact_profile", self.artifact_profile, ARTIFACT_PROFILES + ("mix",))
        if not isinstance(self.artifact_mix, list | tuple):
            raise ConfigError("artifact_mix", self.artifact_mix, "three weights (none, mild, strong)")
        mix = tuple(check_config_range(f"artifact_mix[{i}]", v, 0, 1e9) for i, v in enumerate(self.artifact_mix))
        if len(mix) != 3 or min(mix) < 0 or sum(mix) <= 0:
            raise ConfigError("artifact_mix", self.artifact_mix, "three weights >= 0 (none, mild, strong), positive sum")
        object.__setattr__(self, "artifact_mix", mix)
        for profile, changes in self.artifact_overrides.items():
            check_config_choice("artifact_overrides", profile, tuple(p for p in ARTIFACT_PROFILES if p != "none"))
            if not isinstance(changes, dict):
                raise ConfigError(f"artifact_overrides.{profile}", changes, "a mapping of ArtifactConfig fields")
            known = {f.name for f in dataclasses.fields(ArtifactConfig)}
            for key in changes:
                if key not in known:
                    raise ConfigError(f"artifact_overrides.{profile}.{key}", changes[key],
                                      f"unknown artifact field; allowed: {sorted(known)}")
            try:
                artifact_config(profile, **changes)   # the profile's own range checks
            except ConfigError as err:
                raise ConfigError(f"artifact_overrides.{profile}.{err.field}", err.value, err.allowed) from None
        if not isinstance(self.split_fractions, list | tuple):
            raise ConfigError("split_fractions", self.split_fractions, "three fractions (train, val, test)")
        fr = tuple(check_config_range(f"split_fractions[{i}]", v, 0, 1) for i, v in enumerate(self.split_fractions))
        if len(fr) != 3 or min(fr) < 0 or abs(sum(fr) - 1) > 1e-6:
            raise ConfigError("split_fractions", self.split_fractions, "three fractions >= 0 (train, val, test) summing to 1")
        object.__setattr__(self, "split_fractions", fr)
        if not isinstance(self.train, dict):
            raise ConfigError("train", self.train, "a mapping of training options")
        if not isinstance(self.notes, dict):
            raise ConfigError("notes", self.notes, "a mapping (a record; no stage reads it)")
        if self.max_hosts is not None:
            check_config_range("max_hosts", self.max_hosts, 1, 1e12)

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def config_hash(self) -> str:
        """:func:`jobs.runtime.storage.config_hash` of :meth:`to_dict` (the hash every manifest records)."""
        return storage.config_hash(self.to_dict())


#: What a YAML value of each declared field type may be (bool is not a number here: YAML's
#: ``yes``/``true`` must not become 1).
_TYPE_RULES = {
    "bool": (lambda v: isinstance(v, bool), "a boolean (true / false)"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "dict": (lambda v: isinstance(v, dict), "a mapping"),
    "tuple": (lambda v: isinstance(v, list | tuple), "a list"),
    "SourceConfig": (lambda v: isinstance(v, dict), "a mapping of source fields"),
    "LensConfig": (lambda v: isinstance(v, dict), "a mapping of lens fields"),
}


def _check_type(name: str, declared: str, value) -> None:
    """ConfigError unless ``value`` is of the field's declared type (``T | None`` also takes null)."""
    kinds = [k.strip() for k in str(declared).split("|")]
    if value is None and "None" in kinds:
        return
    rules = [_TYPE_RULES[k] for k in kinds if k in _TYPE_RULES]
    if rules and not any(ok(value) for ok, _ in rules):
        allowed = " or ".join(what for _, what in rules) + (" or null" if "None" in kinds else "")
        raise ConfigError(name, value, f"must be {allowed}, not {type(value).__name__}")


def build_dataclass(cls, data: dict, prefix: str = "", nested: dict | None = None):
    """``cls(**data)`` after checking every key is a field and every value has the field's declared type.

    ``nested`` maps a field name to the dataclass its mapping is built into (recursively, with the
    field name added to ``prefix`` so errors name ``source.mag_r``, ``seeds.global_seed``...).
    """
    if not isinstance(data, dict):
        raise ConfigError(prefix.rstrip(".") or "config", data, "must be a mapping of fields")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}", data[unknown[0]], f"unknown field; allowed: {sorted(known)}")
    kwargs = {}
    for key, value in data.items():
        if key in (nested or {}):
            value = build_dataclass(nested[key], value, f"{prefix}{key}.")
        else:
            _check_type(f"{prefix}{key}", known[key].type, value)
        kwargs[key] = value
    return cls(**kwargs)


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` laid on top, mapping into mapping (other values replaced)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def find_yaml(name_or_path: str, folder: Path, field: str = "config") -> Path:
    """A YAML path as given, or ``<folder>/<name>.yaml`` for a bare name; ConfigError listing the names."""
    path = Path(name_or_path)
    if not path.suffix:
        path = folder / f"{name_or_path}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise ConfigError(field, str(name_or_path), f"no such file; give a YAML path or one of {known}")
    return path


def read_config_dict(name_or_path: str, _chain: tuple = (), folder: Path = CONFIG_DIR) -> dict:
    """YAML of a preset name (``configs/<name>.yaml``) or a path, following ``extends:`` chains.

    An empty file, a YAML syntax error (with its line) and an ``extends`` cycle are ConfigErrors.
    """
    if storage.is_s3(name_or_path):   # e.g. an experiment's config.yaml written beside its s3:// outputs
        if not storage.exists(name_or_path):
            raise ConfigError("config", str(name_or_path), "no such file")
        path, text = str(name_or_path), storage.read_bytes(name_or_path).decode()
    else:
        path = find_yaml(name_or_path, folder).resolve()
        text = path.read_text()
    if path in _chain:
        cycle = " -> ".join(str(p).rsplit("/", 1)[-1] for p in (*_chain, path))
        raise ConfigError("extends", str(name_or_path), f"a cycle: {cycle}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError("config", str(path), f"not valid YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        raise ConfigError("config", str(path), "the file is empty; it must be a mapping of fields")
    if not isinstance(data, dict):
        raise ConfigError("config", str(path), "the YAML must be a mapping of fields")
    parent = data.pop("extends", None)
    return deep_merge(read_config_dict(parent, (*_chain, path), folder), data) if parent else data


def config_from_dict(data: dict) -> InjectionConfig:
    """Validated :class:`InjectionConfig` from a plain dict (e.g. a ``_manifest.json`` ``config``)."""
    return build_dataclass(InjectionConfig, dict(data), "", {"source": SourceConfig, "lens": LensConfig})


def load_config(name_or_path: str, overrides: dict | None = None) -> InjectionConfig:
    """Preset name or YAML path (+ nested overrides) -> validated :class:`InjectionConfig`."""
    return config_from_dict(deep_merge(read_config_dict(name_or_path), overrides or {}))
