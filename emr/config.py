"""EMR cluster configuration: YAML (``safe_load``) -> frozen :class:`ClusterConfig`, validated before any call.

Every field is checked on construction: the AWS region name, ``s3://bucket/prefix`` URIs, the EMR
release (``emr-7.x.y``), instance types (``family.size`` looked up in :data:`INSTANCE_TYPES`, which
also sizes the Spark executors), counts and spot options. A bad field raises
:class:`dhs_gen.errors.ConfigError` naming the dotted field path, the value and what is allowed, so
nothing is sent to AWS from a config that could not run. Credentials never appear here: the AWS
SDK's standard chain (environment, profile, instance role) signs the one call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from dhs_gen.errors import ConfigError, check_config_range

REGION_RE = re.compile(r"^(us|eu|ap|ca|sa|me|af|il|mx)-(gov-)?"
                       r"(north|south|east|west|central|northeast|southeast|northwest|southwest)-[1-9]$")
# Bucket naming rules (3-63 chars, lowercase, digits, dots, hyphens) + an optional key prefix.
S3_URI_RE = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[^\s]*)?$")
RELEASE_RE = re.compile(r"^emr-7\.\d+\.\d+$")
INSTANCE_RE = re.compile(r"^([a-z][a-z0-9-]*)\.([0-9]*x?large)$")
ROLE_NAME_RE = re.compile(r"^[\w+=,.@-]{1,128}$")
ALLOCATION_STRATEGIES = ("capacity-optimized", "price-capacity-optimized", "lowest-price", "diversified")
TIMEOUT_ACTIONS = ("SWITCH_TO_ON_DEMAND", "TERMINATE_CLUSTER")
MARKETS = ("on_demand", "spot")
MODES = ("fleets", "groups")
#: Where bootstrap/install_deps.sh puts the pinned interpreter on every node (Spark's PYSPARK_PYTHON).
NODE_PYTHON = "/opt/dhs-venv/bin/python"

_SIZE_VCPU = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "9xlarge": 36, "12xlarge": 48,
              "16xlarge": 64, "18xlarge": 72, "24xlarge": 96, "32xlarge": 128, "48xlarge": 192}
# x86_64 families only (the pinned wheels are built for it), with GiB of memory per vCPU and their sizes
# (from the AWS instance-type pages: c = 2, m = 4, r = 8 GiB per vCPU).
_FAMILIES = {
    "m5": (4, ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge")),
    "r5": (8, ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge")),
    "c5": (2, ("large", "xlarge", "2xlarge", "4xlarge", "9xlarge", "12xlarge", "18xlarge", "24xlarge")),
    **{f: (gib, ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "32xlarge"))
       for f, gib in (("m6i", 4), ("r6i", 8), ("c6i", 2), ("m6a", 4), ("r6a", 8), ("c6a", 2))},
    **{f: (gib, ("large", "xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge", "48xlarge"))
       for f, gib in (("m7i", 4), ("r7i", 8), ("c7i", 2))},
}


@dataclass(frozen=True)
class InstanceSpec:
    """What Spark sizing needs of an EC2 instance type: vCPUs and memory (GiB)."""

    vcpu: int
    memory_gib: int


#: Known instance types -> :class:`InstanceSpec` (``family.size``).
INSTANCE_TYPES: dict[str, InstanceSpec] = {
    f"{fam}.{size}": InstanceSpec(_SIZE_VCPU[size], _SIZE_VCPU[size] * gib)
    for fam, (gib, sizes) in _FAMILIES.items() for size in sizes
}


def _fail(path: str, value, allowed: str):
    raise ConfigError(path, value, allowed)


def _str(path: str, value, pattern: re.Pattern | None = None, allowed: str = "") -> str:
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.match(value)):
        _fail(path, value, allowed or "a non-empty string")
    return value


def _choice(path: str, value, choices) -> str:
    if value not in choices:
        _fail(path, value, f"one of {list(choices)}")
    return value


def s3_uri(path: str, value) -> str:
    """``value`` if it is ``s3://bucket[/prefix]`` (AWS bucket naming), else ConfigError naming ``path``."""
    return _str(path, value, S3_URI_RE, "an s3://bucket/prefix URI (bucket: 3-63 lowercase letters, digits, '.', '-')")


def instance_spec(path: str, instance_type) -> InstanceSpec:
    """The :class:`InstanceSpec` of a known ``family.size`` type, else ConfigError naming ``path``."""
    _str(path, instance_type, INSTANCE_RE, "an EC2 instance type 'family.size', e.g. 'r6i.2xlarge'")
    if instance_type not in INSTANCE_TYPES:
        fams = sorted(_FAMILIES)
        _fail(path, instance_type, f"not a known x86_64 type of families {fams} (see emr.config.INSTANCE_TYPES)")
    return INSTANCE_TYPES[instance_type]


def _mapping(path: str, value, known: tuple) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(path or "<root>", value, "a mapping of fields")
    unknown = sorted(set(value) - set(known))
    if unknown:
        _fail(f"{path}.{unknown[0]}" if path else unknown[0], value[unknown[0]], f"unknown field; known: {list(known)}")
    return value


@dataclass(frozen=True)
class FleetConfig:
    """One node role (master, core or task): instance types, count (instances of the first type), market."""

    role: str
    types: tuple[str, ...]
    count: int
    market: str

    def __post_init__(self):
        p = f"instances.{self.role}"
        if not isinstance(self.types, tuple) or not self.types:
            _fail(f"{p}.types", self.types, "a non-empty list of instance types")
        for i, t in enumerate(self.types):
            instance_spec(f"{p}.types[{i}]", t)
        if len(set(self.types)) != len(self.types):
            _fail(f"{p}.types", list(self.types), "no duplicates")
        _choice(f"{p}.market", self.market, MARKETS)
        if self.role == "master":
            check_config_range(f"{p}.count", self.count, 1, 1, integer=True)
            if self.market != "on_demand":
                _fail(f"{p}.market", self.market, "the master must be on_demand (losing it loses the cluster)")
        else:
            check_config_range(f"{p}.count", self.count, 1 if self.role == "core" else 0, 500, integer=True)

    @property
    def specs(self) -> list[InstanceSpec]:
        return [INSTANCE_TYPES[t] for t in self.types]

    def weights(self) -> list[int]:
        """Fleet WeightedCapacity per type: vCPUs over the smallest type's (count is in smallest-type units)."""
        base = min(s.vcpu for s in self.specs)
        return [s.vcpu // base for s in self.specs]


@dataclass(frozen=True)
class SpotConfig:
    """Spot options of fleets (``allocation_strategy``, provisioning timeout) and the max price."""

    allocation_strategy: str = "price-capacity-optimized"
    timeout_minutes: int = 20
    timeout_action: str = "SWITCH_TO_ON_DEMAND"
    max_price_percent_on_demand: int = 100

    def __post_init__(self):
        _choice("instances.spot.allocation_strategy", self.allocation_strategy, ALLOCATION_STRATEGIES)
        check_config_range("instances.spot.timeout_minutes", self.timeout_minutes, 5, 1440, integer=True)    # EMR's allowed range
        _choice("instances.spot.timeout_action", self.timeout_action, TIMEOUT_ACTIONS)
        check_config_range("instances.spot.max_price_percent_on_demand", self.max_price_percent_on_demand, 1, 100, integer=True)


@dataclass(frozen=True)
class PipelineConfig:
    """What the steps run: inputs, outputs, generations, optional scoring + 4d completeness."""

    parent: str
    coadds: str
    out: str
    generations: tuple[str, ...]
    partitions: int = 200
    coadd_source: str | None = None     # URL template or s3:// DR10 coadd root: adds the 4b step when set
    coadd_workers: int = 16
    checkpoint: str | None = None       # s3:// model checkpoint: adds score + 4d steps when set
    threshold: float | None = None
    fpr: float | None = None

    def __post_init__(self):
        for name in ("parent", "coadds", "out"):
            s3_uri(f"pipeline.{name}", getattr(self, name))
        if not isinstance(self.generations, tuple) or not self.generations:
            _fail("pipeline.generations", self.generations, "a non-empty list of generation presets (e.g. [gen7, uber])")
        for i, g in enumerate(self.generations):
            _str(f"pipeline.generations[{i}]", g, re.compile(r"^[a-z0-9_]+$"), "a preset name like 'gen7' or 'uber'")
        check_config_range("pipeline.partitions", self.partitions, 1, 100000, integer=True)
        check_config_range("pipeline.coadd_workers", self.coadd_workers, 1, 256, integer=True)
        if self.coadd_source is not None:
            src = self.coadd_source
            if not (isinstance(src, str) and (src.startswith(("http://", "https://")) and "{filename}" in src
                                              or S3_URI_RE.match(src))):
                _fail("pipeline.coadd_source", src, "an http(s) URL template with {bri}, {brick}, {filename} "
                      "or an s3:// DR10 coadd root")
        if self.checkpoint is not None:
            s3_uri("pipeline.checkpoint", self.checkpoint)
            if (self.threshold is None) == (self.fpr is None):
                _fail("pipeline.threshold", self.threshold, "give exactly one of threshold or fpr for 4d completeness")
        if self.threshold is not None and not (isinstance(self.threshold, int | float) and 0 <= self.threshold <= 1):
            _fail("pipeline.threshold", self.threshold, "a score in [0, 1]")
        if self.fpr is not None and not (isinstance(self.fpr, int | float) and 0 < self.fpr <= 1):
            _fail("pipeline.fpr", self.fpr, "a false-positive rate in (0, 1]")


@dataclass(frozen=True)
class ClusterConfig:
    """A validated EMR cluster + pipeline description (see configs/emr/example.yaml for every field)."""

    name: str
    region: str
    release_label: str
    log_uri: str
    code_uri: str
    master: FleetConfig
    core: FleetConfig
    task: FleetConfig | None
    pipeline: PipelineConfig
    mode: str = "fleets"
    spot: SpotConfig = field(default_factory=SpotConfig)
    job_flow_role: str = "EMR_EC2_DefaultRole"
    service_role: str = "EMR_DefaultRole"
    idle_timeout_minutes: int = 60
    keep_alive: bool = False
    subnet_ids: tuple[str, ...] = ()
    tags: tuple[tuple[str, str], ...] = ()
    with_torch: bool = False
    python_mb_per_core: int = 1536     # one brick (6 x 3600^2 float32 = 311 MB) + kernels + a batch, per worker

    def __post_init__(self):
        _str("name", self.name, re.compile(r"^[\w .:/=+@-]{1,256}$"), "1-256 letters, digits, spaces, _.:/=+@-")
        _str("region", self.region, REGION_RE, "an AWS region name like 'us-east-1' or 'eu-west-2'")
        _str("release_label", self.release_label, RELEASE_RE, "an EMR 7 release label 'emr-7.x.y' (Spark 3.5)")
        s3_uri("log_uri", self.log_uri)
        s3_uri("code_uri", self.code_uri)
        _choice("instances.mode", self.mode, MODES)
        _str("roles.job_flow", self.job_flow_role, ROLE_NAME_RE, "an IAM role / instance profile name")
        _str("roles.service", self.service_role, ROLE_NAME_RE, "an IAM role name")
        check_config_range("idle_timeout_minutes", self.idle_timeout_minutes, 1, 7 * 24 * 60, integer=True)   # EMR: 60 s .. 7 days
        for i, s in enumerate(self.subnet_ids):
            _str(f"subnet_ids[{i}]", s, re.compile(r"^subnet-[0-9a-f]{8,17}$"), "a subnet id 'subnet-0123abcd...'")
        if self.mode == "groups":
            for fleet in (self.master, self.core, self.task):
                if fleet is not None and len(fleet.types) != 1:
                    _fail(f"instances.{fleet.role}.types", list(fleet.types), "exactly one type with mode 'groups'")
            if len(self.subnet_ids) > 1:
                _fail("subnet_ids", list(self.subnet_ids), "at most one subnet with mode 'groups'")
        check_config_range("python_mb_per_core", self.python_mb_per_core, 256, 65536, integer=True)
        self.spark_sizing()   # raises if the worker types cannot hold a brick per Python worker

    @property
    def worker_fleets(self) -> list[FleetConfig]:
        return [f for f in (self.core, self.task) if f is not None and f.count > 0]

    def spark_sizing(self) -> dict:
        """Executor cores/memory sized to the smallest worker type, so an executor fits on every node.

        YARN gets ~75 % of a node's memory (EMR's defaults lie between 75 % and 94 %, so this
        always fits). Executors take 4 cores (fewer on small nodes). Python workers live outside
        the JVM heap, in ``memoryOverhead``: ``cores * python_mb_per_core + 512`` MB.

        Returns
        -------
        dict
            ``executor_cores``, ``executors_per_node``, ``executor_memory_mb``, ``overhead_mb`` (MB),
            ``total_cores`` (worker vCPUs at the configured counts, smallest types).
        """
        specs = [(f, t, INSTANCE_TYPES[t]) for f in self.worker_fleets for t in f.types]
        fleet, itype, spec = min(specs, key=lambda x: (x[2].memory_gib / x[2].vcpu, x[2].vcpu))
        cores = min(4, spec.vcpu)
        per_node = spec.vcpu // cores
        container_mb = int(spec.memory_gib * 1024 * 0.75) // per_node
        overhead_mb = cores * self.python_mb_per_core + 512
        heap_mb = container_mb - overhead_mb
        if heap_mb < 1024:
            _fail(f"instances.{fleet.role}.types", itype,
                  f"{spec.memory_gib} GiB for {spec.vcpu} vCPU leaves {heap_mb} MB of JVM heap per executor after "
                  f"{self.python_mb_per_core} MB per Python worker; choose an m- or r-family type")
        total = sum(f.count * min(s.vcpu for s in f.specs) for f in self.worker_fleets)
        return {"executor_cores": cores, "executors_per_node": per_node, "executor_memory_mb": heap_mb,
                "overhead_mb": overhead_mb, "total_cores": total}


def _fleet(role: str, data, default_market: str) -> FleetConfig | None:
    if data is None:
        return None
    d = _mapping(f"instances.{role}", data, ("types", "count", "market"))
    types = d.get("types")
    types = tuple(types) if isinstance(types, list) else types
    return FleetConfig(role, types, d.get("count", 1), d.get("market", default_market))


def cluster_config_from_dict(data: dict) -> ClusterConfig:
    """Validated :class:`ClusterConfig` from the YAML mapping (see configs/emr/example.yaml)."""
    d = _mapping("", data, ("name", "region", "release_label", "log_uri", "code_uri", "roles", "instances",
                            "idle_timeout_minutes", "keep_alive", "subnet_ids", "tags", "bootstrap", "pipeline",
                            "python_mb_per_core"))
    for key in ("name", "region", "release_label", "log_uri", "code_uri", "instances", "pipeline"):
        if key not in d:
            _fail(key, None, "required")
    inst = _mapping("instances", d["instances"], ("mode", "master", "core", "task", "spot"))
    for key in ("master", "core"):
        if key not in inst:
            _fail(f"instances.{key}", None, "required")
    roles = _mapping("roles", d.get("roles"), ("job_flow", "service"))
    boot = _mapping("bootstrap", d.get("bootstrap"), ("with_torch",))
    pipe = _mapping("pipeline", d["pipeline"], tuple(PipelineConfig.__dataclass_fields__))
    for key in ("parent", "coadds", "out", "generations"):
        if key not in pipe:
            _fail(f"pipeline.{key}", None, "required")
    gens = pipe.get("generations")
    pipeline = PipelineConfig(**{**pipe, "generations": tuple(gens) if isinstance(gens, list) else gens})
    tags = d.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str | int) for k, v in tags.items()):
        _fail("tags", tags, "a mapping of tag name -> string value")
    subnets = d.get("subnet_ids") or []
    if not isinstance(subnets, list):
        _fail("subnet_ids", subnets, "a list of subnet ids")
    keep_alive, with_torch = d.get("keep_alive", False), boot.get("with_torch", False)
    for name, flag in (("keep_alive", keep_alive), ("bootstrap.with_torch", with_torch)):
        if not isinstance(flag, bool):
            _fail(name, flag, "true or false")
    if pipeline.checkpoint is not None and not with_torch:
        _fail("bootstrap.with_torch", with_torch, "must be true when pipeline.checkpoint is set (scoring needs torch)")
    return ClusterConfig(
        name=d["name"], region=d["region"], release_label=d["release_label"], log_uri=d["log_uri"],
        code_uri=d["code_uri"], mode=inst.get("mode", "fleets"),
        master=_fleet("master", inst["master"], "on_demand"), core=_fleet("core", inst["core"], "spot"),
        task=_fleet("task", inst.get("task"), "spot"),
        spot=SpotConfig(**_mapping("instances.spot", inst.get("spot"), tuple(SpotConfig.__dataclass_fields__))),
        job_flow_role=roles.get("job_flow", "EMR_EC2_DefaultRole"), service_role=roles.get("service", "EMR_DefaultRole"),
        idle_timeout_minutes=d.get("idle_timeout_minutes", 60), keep_alive=keep_alive, subnet_ids=tuple(subnets),
        tags=tuple(sorted((k, str(v)) for k, v in tags.items())), with_torch=with_torch, pipeline=pipeline,
        python_mb_per_core=d.get("python_mb_per_core", 1536),
    )


def load_cluster_config(path) -> ClusterConfig:
    """Read a YAML file (``yaml.safe_load``) and validate it into a :class:`ClusterConfig`."""
    p = Path(path)
    if not p.is_file():
        _fail("config", str(path), "no such file")
    with open(p) as fh:
        return cluster_config_from_dict(yaml.safe_load(fh) or {})
