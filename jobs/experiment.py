"""One experiment in one YAML (seed 004, sections 3 and 11): seeds, data variant, model, training,
hard negatives, evaluation, output folder and the code's git state.

    from jobs.experiment import create_experiment_config, set_all_seeds

    config = create_experiment_config(experiment_name="Gen5 COSMOS", generation="gen5",
                                      data_variant=my_data_variant, output_base_dir="out/experiments")
    config.to_yaml(f"{config.output_dir}/config.yaml")
    set_all_seeds(config.seeds)
    print(config.get_reproducibility_info())

It is the configuration the stages and the trainer already run, not a second one beside it:

* ``data`` (:class:`DataVariantConfig`) resolves to the one :class:`jobs.runtime.config.InjectionConfig`
  that 4a plans and 4c renders (:meth:`ExperimentConfig.injection_config`): its ``preset`` (default: the
  experiment's generation, ``configs/<generation>.yaml``) supplies every injection field, the seed's
  fields (``psf_model``, ``moffat_beta``, ``source_mode``, ``cosmos_library_path``, ``theta_e_range``,
  ``control_type``) replace theirs, and ``overrides`` sets any other one;
* ``model`` is :class:`jobs.training.model.ModelConfig` and ``training`` is
  :class:`jobs.training.train.TrainConfig` (its ``model`` and ``seed`` come from ``model`` and ``seeds``);
* ``seeds.data_seed`` is the injection ``seed`` (every 4a/4c draw hashes it), ``seeds.model_seed`` the
  training seed, ``seeds.evaluation_seed`` the bootstrap seed; each defaults to ``seeds.global_seed``.

The seed's validation rules, each a :class:`dhs_gen.errors.ConfigError` (a ``ValueError``) naming the field:
(1) ``data.moffat_beta`` is set when ``data.psf_model`` is ``moffat``; (2) ``data.cosmos_library_path`` is
set when ``data.source_mode`` is ``cosmos``; (3) ``hard_negatives.hard_neg_path`` is set when
``hard_negatives.enabled``; (4) ``output_dir`` is always set. Every other field is checked as the stages
check it, so a bad experiment fails before Spark starts.

Experiment YAMLs may ``extends:`` another one (a bare name is looked up in ``configs/experiments/``):
that folder holds the data-variant lineage v3_color_relaxed -> v4_sota -> v4_sota_moffat ->
v5_cosmos_source -> v6_real_hardneg (its README says what each step changed). ``dhs experiment run``
(:mod:`jobs.experiments.run_experiment`) runs one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import random
import re
from dataclasses import dataclass, field

import numpy as np
import yaml

from dhs_gen import PIPELINE_VERSION
from dhs_gen.errors import ConfigError, check_config_choice, check_config_range
from jobs.runtime import storage
from jobs.runtime.config import (
    CONFIG_DIR,
    PSF_MODELS,
    InjectionConfig,
    build_dataclass,
    deep_merge,
    load_config,
    read_config_dict,
)
from jobs.runtime.outputs import git_provenance
from jobs.training.model import ModelConfig
from jobs.training.train import TrainConfig

EXPERIMENTS_DIR = CONFIG_DIR / "experiments"

#: The seed's source modes and the injection config's: "parametric" is a Sersic source.
SOURCE_MODE_ALIASES = {"parametric": "sersic"}
DATA_SOURCE_MODES = ("parametric", "sersic", "hybrid", "cosmos", "deep", "mix")
CONTROL_TYPES = ("paired", "unpaired")


def _seed(name: str, value) -> int | None:
    if isinstance(value, bool):   # YAML true/false is not a seed, though it passes as 1/0
        raise ConfigError(name, value, "an integer seed >= 0")
    return None if value is None else int(check_config_range(name, value, 0, 2**63 - 1, integer=True))


@dataclass(frozen=True)
class SeedConfig:
    """Every random draw of an experiment has an explicit seed (unset ones take ``global_seed``)."""

    global_seed: int = 42
    data_seed: int | None = None         # 4a/4c: every per-task draw is a hash of it
    model_seed: int | None = None        # weight init, shuffling, augmentation, core dropout
    evaluation_seed: int | None = None   # bootstrap resamples of the evaluation
    deterministic: bool = True           # torch deterministic algorithms (slower on GPU, identical reruns)

    def __post_init__(self):
        if self.global_seed is None:
            raise ConfigError("seeds.global_seed", None, "an integer seed")
        for name in ("global_seed", "data_seed", "model_seed", "evaluation_seed"):
            object.__setattr__(self, name, _seed(f"seeds.{name}", getattr(self, name)))
        if not isinstance(self.deterministic, bool):
            raise ConfigError("seeds.deterministic", self.deterministic, "true or false")

    def resolved(self, which: str) -> int:
        """``data``, ``model`` or ``evaluation`` seed, ``global_seed`` when unset."""
        value = getattr(self, f"{which}_seed")
        return int(self.global_seed if value is None else value)


@dataclass(frozen=True)
class DataVariantConfig:
    """A data variant: which stamps an experiment trains on, and where they are.

    ``None`` for an injection field means "as the preset says". Paths may be local or ``s3://``;
    unset stage outputs go under the experiment's ``output_dir``.
    """

    variant_name: str = "custom"
    description: str = ""
    phase3_parent_sample: str | None = None   # 4a input: the parent LRG sample (with coadd_cache)
    phase4a_manifest: str | None = None       # 4a output (default: <output_dir>/manifest)
    phase4c_stamps: str | None = None         # 4c output (default: <output_dir>/stamps)
    coadd_cache: str | None = None            # 4b brick cache root (DR10 layout)
    hosts: str | None = None                  # or a host dataset (`dhs hosts build`) instead of parent + coadds
    preset: str | None = None                 # generation preset of every other injection field (default: generation)
    psf_model: str | None = None              # gaussian | moffat
    moffat_beta: float | None = None
    source_mode: str | None = None            # parametric (Sersic) | hybrid | cosmos | deep | mix
    cosmos_library_path: str | None = None    # COSMOS bank (`dhs cosmos-bank`), needed by cosmos sources
    deep_library_path: str | None = None      # deep ground-based bank (`dhs deep-bank`), needed by deep sources
    theta_e_range: tuple | None = None        # Einstein-radius grid, arcsec (every value is planned)
    control_type: str | None = None           # paired (same host, no arc) | unpaired (other hosts)
    overrides: dict = field(default_factory=dict)   # any other InjectionConfig field, nested as in a preset

    def __post_init__(self):
        if not isinstance(self.variant_name, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.variant_name):
            raise ConfigError("data.variant_name", self.variant_name, "a name of letters, digits, '_', '-', '.'")
        if self.psf_model is not None:
            check_config_choice("data.psf_model", self.psf_model, PSF_MODELS)
        if self.psf_model == "moffat" and self.moffat_beta is None:   # seed rule 1
            raise ConfigError("data.moffat_beta", None, "required when data.psf_model is 'moffat' (DR10: ~3.5)")
        if self.source_mode is not None:
            check_config_choice("data.source_mode", self.source_mode, DATA_SOURCE_MODES)
        if self.source_mode == "cosmos" and not self.cosmos_library_path:   # seed rule 2
            raise ConfigError("data.cosmos_library_path", self.cosmos_library_path,
                              "required when data.source_mode is 'cosmos': a bank built by `dhs cosmos-bank`")
        if self.source_mode == "deep" and not self.deep_library_path:
            raise ConfigError("data.deep_library_path", self.deep_library_path,
                              "required when data.source_mode is 'deep': a bank built by `dhs deep-bank`")
        if self.control_type is not None:
            check_config_choice("data.control_type", self.control_type, CONTROL_TYPES)
        if self.theta_e_range is not None:
            if not isinstance(self.theta_e_range, list | tuple) or not self.theta_e_range:
                raise ConfigError("data.theta_e_range", self.theta_e_range, "a non-empty list of Einstein radii, arcsec")
            object.__setattr__(self, "theta_e_range", tuple(
                check_config_range(f"data.theta_e_range[{i}]", v, 0, 10, lo_open=True)
                for i, v in enumerate(self.theta_e_range)))
        if not isinstance(self.overrides, dict):
            raise ConfigError("data.overrides", self.overrides, "a mapping of injection-config fields")
        for key in ("name", "description", "seed"):   # set by the experiment itself: an override would be lost
            if key in self.overrides:
                raise ConfigError(f"data.overrides.{key}", self.overrides[key],
                                  "set by the experiment (experiment_id, description, seeds.data_seed), not here")
        try:   # plain YAML values only, so the config reads back equal from its YAML
            object.__setattr__(self, "overrides", json.loads(json.dumps(self.overrides, allow_nan=False)))
        except (TypeError, ValueError):
            raise ConfigError("data.overrides", self.overrides, "plain YAML values (numbers, text, lists, mappings)") from None

    def injection_fields(self, data_seed: int) -> dict:
        """The injection-config fields this variant sets (nested like a preset YAML)."""
        own: dict = {"seed": data_seed}
        if self.psf_model is not None:
            own["psf_model"] = self.psf_model
        if self.moffat_beta is not None:
            own["moffat_beta"] = self.moffat_beta
        if self.control_type is not None:
            own["paired_controls"] = self.control_type == "paired"
        if self.theta_e_range is not None:
            own["lens"] = {"theta_e_arcsec": list(self.theta_e_range)}
        source = {}
        if self.source_mode is not None:
            source["mode"] = SOURCE_MODE_ALIASES.get(self.source_mode, self.source_mode)
        if self.cosmos_library_path:
            source["cosmos_bank"] = self.cosmos_library_path
        if self.deep_library_path:
            source["deep_bank"] = self.deep_library_path
        if source:
            own["source"] = source
        return own


@dataclass(frozen=True)
class HardNegativeTrainingConfig:
    """Real hard negatives in training (``dhs train --hard-negatives``)."""

    enabled: bool = False
    hard_neg_path: str | None = None    # a host or anchor dataset, e.g. from `dhs hardneg collect` + `dhs hosts build`
    hard_neg_weight: float = 1.0        # multiplies each row's source weight in the loss

    def __post_init__(self):
        if self.enabled and not self.hard_neg_path:   # seed rule 3
            raise ConfigError("hard_negatives.hard_neg_path", self.hard_neg_path,
                              "required when hard_negatives.enabled is true")
        check_config_range("hard_negatives.hard_neg_weight", self.hard_neg_weight, 0, 1000, lo_open=True)


@dataclass(frozen=True)
class EvaluationConfig:
    """How the trained model is judged: synthetic test split and real anchors."""

    n_boot: int = 1000                  # bootstrap resamples for every CI
    anchor_set: str | None = "auto"     # auto: built from $DHS_SHARED_DATA; a dataset URI; null: none
    score_device: str = "cpu"           # where `dhs score` runs the model: cpu | cuda | auto
    score_batch_size: int = 256

    def __post_init__(self):
        check_config_range("evaluation.n_boot", self.n_boot, 10, 1_000_000, integer=True)
        check_config_choice("evaluation.score_device", self.score_device, ("cpu", "cuda", "auto"))
        check_config_range("evaluation.score_batch_size", self.score_batch_size, 1, 65_536, integer=True)


def _train_config(training: dict | TrainConfig, model: ModelConfig, seed: int) -> TrainConfig:
    """The trainer's config: ``training`` with the experiment's model and model seed put in."""
    if isinstance(training, TrainConfig):   # already resolved: its model and seed are replaced
        training = {k: v for k, v in dataclasses.asdict(training).items() if k not in ("model", "seed")}
    if not isinstance(training, dict):
        raise ConfigError("training", training, "a mapping of training options")
    for name, where in (("model", "model"), ("seed", "seeds.model_seed")):
        if name in training and training[name] != (dataclasses.asdict(model) if name == "model" else seed):
            raise ConfigError(f"training.{name}", training[name], f"set it in {where}, not under training")
    try:
        return TrainConfig.from_dict({**training, "model": dataclasses.asdict(model), "seed": seed})
    except ConfigError as err:
        raise ConfigError(f"training.{err.field}", err.value, err.allowed) from None


@dataclass(frozen=True)
class ExperimentConfig:
    """One experiment (see the module docstring). Equal configs give bit-identical outputs."""

    experiment_id: str
    experiment_name: str
    description: str = ""
    generation: str = "custom"          # gen5, gen5prime, gen6, gen7a..c, gen8a..c, uber, or custom
    seeds: SeedConfig = field(default_factory=SeedConfig)
    data: DataVariantConfig = field(default_factory=DataVariantConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    hard_negatives: HardNegativeTrainingConfig = field(default_factory=HardNegativeTrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output_dir: str | None = None
    git_commit: str | None = None
    git_branch: str | None = None
    git_dirty: bool | None = None

    def __post_init__(self):
        for name in ("experiment_id", "experiment_name"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ConfigError(name, getattr(self, name), "a non-empty string")
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", self.experiment_id):
            raise ConfigError("experiment_id", self.experiment_id, "letters, digits, '_', '-', '.' (it names folders)")
        if not self.output_dir:   # seed rule 4
            raise ConfigError("output_dir", self.output_dir, "required: the folder the experiment writes into")
        object.__setattr__(self, "training",
                           _train_config(self.training, self.model, self.seeds.resolved("model")))
        self.injection_config()   # the stages' own checks, now

    # ------------------------------------------------------------------ what the stages run

    @property
    def preset(self) -> str:
        """The generation preset the data variant builds on: ``data.preset``, else the generation's."""
        if self.data.preset:
            return self.data.preset
        if not (CONFIG_DIR / f"{self.generation}.yaml").is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
            raise ConfigError("data.preset", None, f"generation {self.generation!r} is not a preset: name one of {known}")
        return self.generation

    def injection_config(self) -> InjectionConfig:
        """The 4a/4c configuration of this experiment (what its manifests record)."""
        fields = self.data.injection_fields(self.seeds.resolved("data"))
        over = _flat(self.data.overrides)
        for key in sorted(over):   # the same field, or a part of one (lens: 5 against lens.theta_e_arcsec)
            if any(key == f or f.startswith(key + ".") or key.startswith(f + ".") for f in _flat(fields)):
                raise ConfigError(f"data.overrides.{key}", over[key], "set by a data-variant field (psf_model, "
                                  "moffat_beta, source_mode, theta_e_range, control_type, ...): set it there")
        try:
            return load_config(self.preset, deep_merge(self.data.overrides, fields)
                               | {"name": self.experiment_id, "description": self.description or self.data.description})
        except ConfigError as err:
            raise ConfigError(f"data ({self.preset}): {err.field}", err.value, err.allowed) from None

    def stage_uri(self, stage: str) -> str:
        """Where a stage writes: the data variant's path, else ``<output_dir>/<stage>``."""
        given = {"manifest": self.data.phase4a_manifest, "stamps": self.data.phase4c_stamps}.get(stage)
        return given or storage.join(self.output_dir, stage)

    # ------------------------------------------------------------------ YAML

    def to_dict(self) -> dict:
        """Plain dict: the YAML's content (``training`` without the model and seed it takes from above)."""
        d = json.loads(json.dumps(dataclasses.asdict(self)))
        for name in ("model", "seed"):
            d["training"].pop(name)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> ExperimentConfig:
        """Validated config from a mapping; unknown fields and wrong types name the field."""
        return build_dataclass(cls, dict(data), "", {"seeds": SeedConfig, "data": DataVariantConfig,
                                                     "model": ModelConfig, "hard_negatives": HardNegativeTrainingConfig,
                                                     "evaluation": EvaluationConfig})

    def to_yaml(self, path: str) -> None:
        """Write the config (local path or ``s3://``); :meth:`from_yaml` reads back an equal config."""
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None, width=110)
        storage.write_bytes(path, f"# dhs experiment {self.experiment_id}\n{text}".encode())

    @classmethod
    def from_yaml(cls, path: str, overrides: dict | None = None) -> ExperimentConfig:
        """Read an experiment YAML (a path, or a name in ``configs/experiments/``), following ``extends:``."""
        return cls.from_dict(deep_merge(read_config_dict(path, folder=EXPERIMENTS_DIR), overrides or {}))

    def config_hash(self) -> str:
        """Hash of what the experiment computes (not its git fields, which record where it ran)."""
        d = self.to_dict()
        for name in ("git_commit", "git_branch", "git_dirty"):
            d.pop(name)
        return storage.config_hash(d)

    def with_git(self) -> ExperimentConfig:
        """This config with the running code's git commit, branch and dirty flag."""
        git = git_provenance()
        return dataclasses.replace(self, git_commit=git["commit"], git_branch=git["branch"], git_dirty=git["dirty"])

    def get_reproducibility_info(self) -> str:
        """The reproducibility header (seed 004 section 11): what to log beside every result."""
        import torch

        git = git_provenance()
        inj = self.injection_config()
        lines = [
            f"experiment      {self.experiment_id} ({self.experiment_name})",
            f"generation      {self.generation}; data variant {self.data.variant_name} (preset {self.preset})",
            f"config hash     {self.config_hash()}; injection config hash {inj.config_hash()}",
            f"git (config)    commit {self.git_commit} branch {self.git_branch} dirty {self.git_dirty}",
            f"git (running)   commit {git['commit']} branch {git['branch']} dirty {git['dirty']}"
            + (f" diff sha256 {git['diff_sha256']}" if git.get("diff_sha256") else ""),
            f"seeds           global {self.seeds.global_seed}, data {self.seeds.resolved('data')}, "
            f"model {self.seeds.resolved('model')}, evaluation {self.seeds.resolved('evaluation')}, "
            f"deterministic {self.seeds.deterministic}",
            f"injection       psf {inj.psf_model} (beta {inj.moffat_beta}), source {inj.source.mode}, "
            f"theta_E {list(inj.lens.theta_e_arcsec)} arcsec, paired controls {inj.paired_controls}, "
            f"artifacts {inj.artifact_profile}",
            f"model           {self.model.arch}; {self.training.epochs} epochs, batch {self.training.batch_size}, "
            f"lr {self.training.lr}, device {self.training.device}",
            f"hard negatives  {self.hard_negatives.hard_neg_path if self.hard_negatives.enabled else 'off'}"
            + (f" (weight {self.hard_negatives.hard_neg_weight})" if self.hard_negatives.enabled else ""),
            f"output          {self.output_dir}",
            f"software        dhs pipeline {PIPELINE_VERSION}, python {platform.python_version()}, "
            f"numpy {np.__version__}, torch {torch.__version__}, {platform.platform()}",
        ]
        return "\n".join(lines)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "experiment"


def create_experiment_config(experiment_name: str, generation: str, data_variant: DataVariantConfig | dict | str,
                             output_base_dir: str, **sections) -> ExperimentConfig:
    """A new experiment: ``experiment_id`` = ``<generation>_<name>_<hash>``, ``output_dir`` under
    ``output_base_dir``, the running code's git state recorded.

    ``data_variant``: a :class:`DataVariantConfig`, its mapping, or the name of an experiment in
    ``configs/experiments/`` whose data variant is taken. ``sections``: any other field
    (``seeds=SeedConfig(...)``, ``training={...}``, ``description=...``).
    """
    if isinstance(data_variant, str):
        data_variant = read_config_dict(data_variant, folder=EXPERIMENTS_DIR).get("data", {})
    if isinstance(data_variant, dict):
        data_variant = build_dataclass(DataVariantConfig, data_variant, "data.")
    if not isinstance(data_variant, DataVariantConfig):
        raise ConfigError("data_variant", data_variant, "a DataVariantConfig, a mapping or a variant name")
    body = {"experiment_name": experiment_name, "generation": generation,
            "data": dataclasses.asdict(data_variant)} | {
        k: (dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v) for k, v in sections.items()}
    digest = storage.config_hash(json.loads(json.dumps(body, default=str)))[:8]
    experiment_id = f"{_slug(generation)}_{_slug(experiment_name)}_{digest}"
    body |= {"experiment_id": experiment_id, "output_dir": storage.join(str(output_base_dir), experiment_id)}
    return ExperimentConfig.from_dict(body).with_git()


def set_all_seeds(seeds: SeedConfig) -> None:
    """Seed python, numpy and torch (CPU and CUDA) with the model seed and make torch deterministic.

    ``seeds.deterministic`` turns on torch's deterministic algorithms (an op without one warns) and
    cuDNN's deterministic mode (cuDNN autotuning stays off either way, torch's default);
    ``CUBLAS_WORKSPACE_CONFIG`` is set for deterministic CUDA matmuls when CUDA has not started yet.
    The 4a/4c draws need no global seed: each is a hash of ``seeds.data_seed`` and the task.
    """
    import torch

    seed = seeds.resolved("model")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # process-wide: it stays in force for whatever this process runs next (scoring, another experiment).
    # warn_only: an op without a deterministic kernel warns instead of stopping a run; on a GPU such an op
    # (named in the warning) is the one thing that can make two equal runs differ.
    torch.use_deterministic_algorithms(seeds.deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = seeds.deterministic
    torch.backends.cudnn.benchmark = False
