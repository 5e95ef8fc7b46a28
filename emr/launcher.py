"""The EMR launcher: a pure request builder plus one boto3 call.

:func:`build_steps` and :func:`build_cluster_request` turn a validated
:class:`emr.config.ClusterConfig` into the exact keyword arguments of EMR ``RunJobFlow`` (tested
against botocore's own service model, snapshot-tested for configs/emr/example.yaml); :func:`launch`
makes the one call. Steps are ``command-runner.jar`` ``spark-submit --deploy-mode cluster`` calls of
the packaged entry scripts (``emr.package``) with the code bundle on ``--py-files``.

S3 layout under ``code_uri`` (written by ``make package`` + ``make emr-upload``)::

    dhs_bundle.zip  entry/<stage>.py  configs/<preset>.yaml  requirements-emr*.txt  bootstrap/install_deps.sh
"""

from __future__ import annotations

from emr.config import NODE_PYTHON, ClusterConfig, FleetConfig

BUNDLE_NAME = "dhs_bundle.zip"
BOOTSTRAP_KEY = "bootstrap/install_deps.sh"
# A step's failure leaves later steps (which read its output) cancelled; the cluster then idles out.
ACTION_ON_FAILURE = "CANCEL_AND_WAIT"


def code_path(cfg: ClusterConfig, *parts: str) -> str:
    """URI of a packaged file under ``cfg.code_uri``."""
    return "/".join([cfg.code_uri.rstrip("/"), *parts])


def _spark_submit(cfg: ClusterConfig, name: str, stage: str, args: list[str], git_sha: str,
                  files: list[str] = ()) -> dict:
    """One ``command-runner.jar`` step running ``spark-submit`` on the packaged entry script of ``stage``."""
    cmd = ["spark-submit", "--deploy-mode", "cluster", "--py-files", code_path(cfg, BUNDLE_NAME),
           # the bundle has no .git: jobs.runtime.outputs.git_sha() reads DHS_GIT_SHA for every manifest
           "--conf", f"spark.yarn.appMasterEnv.DHS_GIT_SHA={git_sha}",
           "--conf", f"spark.executorEnv.DHS_GIT_SHA={git_sha}"]
    if files:
        cmd += ["--files", ",".join(files)]
    cmd += [code_path(cfg, "entry", f"{stage}.py"), *args]
    return {"Name": name, "ActionOnFailure": ACTION_ON_FAILURE,
            "HadoopJarStep": {"Jar": "command-runner.jar", "Args": cmd}}


def build_steps(cfg: ClusterConfig, git_sha: str) -> list[dict]:
    """The pipeline steps, in order, for every generation of ``cfg.pipeline``.

    Per generation ``g`` (outputs under ``<out>/<g>/``): 4a manifest, 4c inject, and when a
    checkpoint is configured, score and 4d completeness. The 4b coadd cache runs once, after the
    first manifest (every generation draws hosts from the same parent sample, so the same bricks).
    Generation presets travel as resolved YAML via ``--files`` (YARN puts them in the driver's
    working directory, hence the bare file name in ``--config``).

    Parameters
    ----------
    cfg : ClusterConfig
        Validated config.
    git_sha : str
        Commit of the uploaded bundle, recorded in every stage manifest.

    Returns
    -------
    list of dict
        EMR ``StepConfig`` objects.
    """
    p = cfg.pipeline
    steps = []
    for i, gen in enumerate(p.generations):
        base = f"{p.out.rstrip('/')}/{gen}"
        manifest, stamps = f"{base}/manifest", f"{base}/stamps"
        steps.append(_spark_submit(cfg, f"{gen}: 4a manifest", "manifest",
                                   ["--parent", p.parent, "--config", f"{gen}.yaml", "--out", manifest,
                                    "--partitions", str(p.partitions)], git_sha,
                                   files=[code_path(cfg, "configs", f"{gen}.yaml")]))
        if i == 0 and p.coadd_source:
            steps.append(_spark_submit(cfg, "4b coadd cache", "coadd_cache",
                                       ["--manifest", manifest, "--source", p.coadd_source, "--dest", p.coadds,
                                        "--workers", str(p.coadd_workers)], git_sha))
        steps.append(_spark_submit(cfg, f"{gen}: 4c inject", "inject",
                                   ["--manifest", manifest, "--coadds", p.coadds, "--out", stamps,
                                    "--partitions", str(p.partitions)], git_sha))
        if p.checkpoint:
            scores = f"{base}/scores"
            steps.append(_spark_submit(cfg, f"{gen}: score", "score",
                                       ["--checkpoint", p.checkpoint, "--input", stamps, "--out", scores], git_sha))
            op = ["--threshold", repr(float(p.threshold))] if p.threshold is not None else ["--fpr", repr(float(p.fpr))]
            steps.append(_spark_submit(cfg, f"{gen}: 4d completeness", "completeness",
                                       ["--scores", scores, "--out", f"{base}/completeness", *op], git_sha))
    return steps


def spark_defaults(cfg: ClusterConfig) -> dict:
    """``spark-defaults`` properties sized to the worker instance types (see ``ClusterConfig.spark_sizing``)."""
    s = cfg.spark_sizing()
    memory, overhead = f"{s['executor_memory_mb']}m", f"{s['overhead_mb']}m"
    return {
        "spark.executor.cores": str(s["executor_cores"]),
        "spark.executor.memory": memory,
        "spark.executor.memoryOverhead": overhead,
        # cluster mode: the driver is a YARN container like an executor, so the same size fits
        "spark.driver.cores": str(s["executor_cores"]),
        "spark.driver.memory": memory,
        "spark.driver.memoryOverhead": overhead,
        "spark.driver.maxResultSize": "2g",          # drivers collect one small report row per task only
        "spark.sql.shuffle.partitions": str(max(8, 2 * s["total_cores"])),
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.python.worker.reuse": "true",         # banks and models are cached per Python worker
        "spark.pyspark.python": NODE_PYTHON,
        "spark.pyspark.driver.python": NODE_PYTHON,
        "spark.task.maxFailures": "4",               # spot reclaims: retried attempts never duplicate rows
        "spark.speculation": "false",
    }


def _fleet(f: FleetConfig, cfg: ClusterConfig) -> dict:
    spot = f.market == "spot"
    configs = []
    for t, w in zip(f.types, f.weights(), strict=True):
        c = {"InstanceType": t, "WeightedCapacity": w}
        if spot:
            c["BidPriceAsPercentageOfOnDemandPrice"] = float(cfg.spot.max_price_percent_on_demand)
        configs.append(c)
    out = {"Name": f"{f.role}", "InstanceFleetType": f.role.upper(),
           "TargetOnDemandCapacity": 0 if spot else f.count, "TargetSpotCapacity": f.count if spot else 0,
           "InstanceTypeConfigs": configs}
    if spot:
        out["LaunchSpecifications"] = {"SpotSpecification": {
            "TimeoutDurationMinutes": cfg.spot.timeout_minutes, "TimeoutAction": cfg.spot.timeout_action,
            "AllocationStrategy": cfg.spot.allocation_strategy}}
    elif f.role != "master":
        out["LaunchSpecifications"] = {"OnDemandSpecification": {"AllocationStrategy": "lowest-price"}}
    return out


def _group(f: FleetConfig) -> dict:
    return {"Name": f.role, "InstanceRole": f.role.upper(), "Market": "SPOT" if f.market == "spot" else "ON_DEMAND",
            "InstanceType": f.types[0], "InstanceCount": f.count}


def build_instances(cfg: ClusterConfig) -> dict:
    """The ``Instances`` argument: instance fleets (master on-demand, spot core/task) or instance groups."""
    roles = [f for f in (cfg.master, cfg.core, cfg.task) if f is not None and f.count > 0]
    out = {"KeepJobFlowAliveWhenNoSteps": cfg.keep_alive, "TerminationProtected": False}
    if cfg.mode == "fleets":
        out["InstanceFleets"] = [_fleet(f, cfg) for f in roles]
        if cfg.subnet_ids:
            out["Ec2SubnetIds"] = list(cfg.subnet_ids)
    else:
        out["InstanceGroups"] = [_group(f) for f in roles]
        if cfg.subnet_ids:
            out["Ec2SubnetId"] = cfg.subnet_ids[0]
    return out


def build_cluster_request(cfg: ClusterConfig, steps: list[dict]) -> dict:
    """The exact keyword arguments of ``emr.run_job_flow`` for ``cfg`` and ``steps`` (pure).

    Parameters
    ----------
    cfg : ClusterConfig
        Validated config.
    steps : list of dict
        EMR ``StepConfig`` objects, e.g. from :func:`build_steps`.

    Returns
    -------
    dict
        JSON-serialisable request: Name, LogUri, ReleaseLabel, Applications, Instances, Steps,
        BootstrapActions, Configurations, AutoTerminationPolicy (seconds), Tags, roles,
        VisibleToAllUsers. Holds no credentials.
    """
    boot_args = [cfg.code_uri.rstrip("/")] + (["--with-torch"] if cfg.with_torch else [])
    return {
        "Name": cfg.name,
        "LogUri": cfg.log_uri,
        "ReleaseLabel": cfg.release_label,
        "Applications": [{"Name": "Spark"}],
        "Instances": build_instances(cfg),
        "Steps": list(steps),
        "BootstrapActions": [{"Name": "dhs: install pinned Python deps",
                              "ScriptBootstrapAction": {"Path": code_path(cfg, BOOTSTRAP_KEY), "Args": boot_args}}],
        "Configurations": [
            {"Classification": "spark", "Properties": {"maximizeResourceAllocation": "false"}},
            {"Classification": "spark-defaults", "Properties": spark_defaults(cfg)},
            {"Classification": "spark-env", "Properties": {}, "Configurations": [
                {"Classification": "export", "Properties": {"PYSPARK_PYTHON": NODE_PYTHON,
                                                            "PYSPARK_DRIVER_PYTHON": NODE_PYTHON}}]},
        ],
        "AutoTerminationPolicy": {"IdleTimeout": cfg.idle_timeout_minutes * 60},
        "Tags": [{"Key": k, "Value": v} for k, v in cfg.tags],
        "JobFlowRole": cfg.job_flow_role,
        "ServiceRole": cfg.service_role,
        "VisibleToAllUsers": True,
        "StepConcurrencyLevel": 1,
    }


def launch(request: dict, emr) -> str:
    """Send ``request`` with an EMR client (``boto3.client("emr", region_name=...)``); returns the cluster id."""
    return emr.run_job_flow(**request)["JobFlowId"]


def list_all_steps(cluster_id: str, emr) -> list[dict]:
    """Every step of a cluster (``list_steps`` pages followed), newest first as EMR returns them."""
    steps, kwargs = [], {"ClusterId": cluster_id}
    while True:
        page = emr.list_steps(**kwargs)
        steps += page.get("Steps", [])
        if not page.get("Marker"):
            return steps
        kwargs["Marker"] = page["Marker"]


def cluster_status(cluster_id: str, emr) -> dict:
    """State of a cluster and its steps (``describe_cluster`` + ``list_steps``), as a plain dict."""
    c = emr.describe_cluster(ClusterId=cluster_id)["Cluster"]
    status = c.get("Status", {})
    return {
        "id": c.get("Id", cluster_id), "name": c.get("Name"), "state": status.get("State"),
        "reason": status.get("StateChangeReason", {}).get("Message"), "log_uri": c.get("LogUri"),
        "master_dns": c.get("MasterPublicDnsName"),
        "steps": [{"id": s.get("Id"), "name": s.get("Name"), "state": s.get("Status", {}).get("State"),
                   "failure": s.get("Status", {}).get("FailureDetails", {}).get("Message")}
                  for s in list_all_steps(cluster_id, emr)],
    }


def step_log_uris(log_uri: str, cluster_id: str, step_id: str | None = None) -> dict:
    """Where EMR writes a cluster's (or one step's) logs under ``LogUri`` (gzipped, ~5 min after the fact).

    Step logs (``controller``, ``stderr``, ``stdout``, ``syslog``) hold spark-submit's output; in cluster
    mode the driver's own output is in the YARN container logs (``containers/application_*``).
    """
    root = f"{log_uri.rstrip('/')}/{cluster_id}"
    out = {"cluster": f"{root}/", "containers": f"{root}/containers/", "bootstrap": f"{root}/node/"}
    if step_id:
        out.update({name: f"{root}/steps/{step_id}/{name}.gz" for name in ("controller", "stderr", "stdout", "syslog")})
    return out
