"""``dhs emr plan|launch|status|logs``: plan offline, launch with one call, watch a cluster.

    dhs emr plan   --config configs/emr/example.yaml [--git-sha SHA]     # prints the RunJobFlow JSON, offline
    dhs emr launch --config configs/emr/example.yaml [--git-sha SHA]     # sends it, prints the cluster id
    dhs emr status CLUSTER_ID --region us-east-1                          # cluster + step states
    dhs emr logs   CLUSTER_ID --region us-east-1 [--step STEP_ID]         # S3 URIs of the logs

AWS credentials come from the standard chain only (environment, profile, instance role).
"""

from __future__ import annotations

import argparse
import json
import sys

from dhs_gen.errors import ConfigError
from emr.config import load_cluster_config
from emr.launcher import build_cluster_request, build_steps, cluster_status, launch, step_log_uris


def _emr_client(region: str):
    import boto3

    return boto3.client("emr", region_name=region)


def check_generations(cfg) -> None:
    """Validate every generation preset the steps name, so a bad one fails here and not on the cluster."""
    from jobs.runtime.config import load_config

    for i, gen in enumerate(cfg.pipeline.generations):
        try:
            load_config(gen)
        except ConfigError as err:
            raise ConfigError(f"pipeline.generations[{i}]", gen, f"preset does not validate: {err}") from None


def plan(config_path: str, git_sha: str | None = None) -> dict:
    """The RunJobFlow request for a config file (cluster config and generation presets validated; no network)."""
    from jobs.runtime.outputs import git_sha as current_sha

    cfg = load_cluster_config(config_path)
    check_generations(cfg)
    return build_cluster_request(cfg, build_steps(cfg, git_sha or current_sha()))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dhs emr", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    sub = p.add_subparsers(dest="action", required=True)
    for name, help_ in (("plan", "print the RunJobFlow request (offline)"), ("launch", "create the cluster")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--config", required=True, help="cluster YAML (see configs/emr/example.yaml)")
        s.add_argument("--git-sha", default=None, help="commit of the uploaded bundle (default: git HEAD)")
    for name, help_ in (("status", "cluster and step states"), ("logs", "S3 URIs of cluster / step logs")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("cluster_id", help="j-XXXXXXXXXXXXX")
        g = s.add_mutually_exclusive_group(required=True)
        g.add_argument("--region", help="AWS region of the cluster")
        g.add_argument("--config", help="take the region from this cluster YAML")
        if name == "logs":
            s.add_argument("--step", default=None, help="step id (s-XXXX): its controller/stderr/stdout/syslog")
    return p


def emr_main(argv: list[str] | None = None, emr_client=None) -> int:
    """Entry point of ``dhs emr``; ``emr_client`` replaces the boto3 client (tests)."""
    args = build_parser().parse_args(argv)
    try:
        if args.action in ("plan", "launch"):
            request = plan(args.config, args.git_sha)
            if args.action == "plan":
                print(json.dumps(request, indent=2, sort_keys=True))
                return 0
            cluster_id = launch(request, emr_client or _emr_client(load_cluster_config(args.config).region))
            print(cluster_id)
            return 0
        region = args.region or load_cluster_config(args.config).region
    except ConfigError as err:
        print(f"dhs emr: {err}", file=sys.stderr)
        return 2
    client = emr_client or _emr_client(region)
    status = cluster_status(args.cluster_id, client)
    if args.action == "status":
        print(json.dumps(status, indent=2))
        return 0
    if not status["log_uri"]:
        print(f"dhs emr: cluster {args.cluster_id} was created without a LogUri: no logs on S3", file=sys.stderr)
        return 1
    print(json.dumps(step_log_uris(status["log_uri"], args.cluster_id, args.step), indent=2))
    return 0


main = emr_main


if __name__ == "__main__":
    sys.exit(emr_main())
