"""EMR launcher: requests validated by botocore's own EMR service model, no network.

Oracles: botocore's ParamValidator and Stubber (which validates parameters against the EMR
service model shipped with botocore), a committed snapshot of the example plan, and the Spark
sizing worked out by hand in the comments.
"""

from __future__ import annotations

import copy
import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import boto3
import botocore.session
import pytest
import yaml
from botocore.stub import Stubber
from botocore.validate import ParamValidator

from dhs_gen.errors import ConfigError
from emr import launcher
from emr.cli import emr_main
from emr.config import cluster_config_from_dict, load_cluster_config

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "configs" / "emr" / "example.yaml"
SNAPSHOT = Path(__file__).parent / "snapshots" / "example_plan.json"
SHA = "0123456789abcdef0123456789abcdef01234567"


def _example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def _request(data: dict | None = None) -> dict:
    cfg = cluster_config_from_dict(data or _example())
    return launcher.build_cluster_request(cfg, launcher.build_steps(cfg, SHA))


def _validate(request: dict):
    model = botocore.session.get_session().get_service_model("emr").operation_model("RunJobFlow")
    return ParamValidator().validate(request, model.input_shape)


def _client():
    # fake keys: the Stubber intercepts before any signing or sending
    return boto3.client("emr", region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")


def test_example_request_is_valid_for_the_emr_service_model():
    report = _validate(_request())
    assert not report.has_errors(), report.generate_report()
    broken = copy.deepcopy(_request())
    broken["Instances"]["InstanceFleets"][0]["InstanceFleetType"] = "WORKER"
    broken["Steps"][0]["HadoopJarStep"]["Args"] = "spark-submit"     # the validator can fail
    assert _validate(broken).has_errors()


def test_groups_mode_request_is_valid():
    data = _example()
    data["instances"].update(mode="groups", core={"types": ["r6i.2xlarge"], "count": 2},
                             task={"types": ["r6i.2xlarge"], "count": 4, "market": "spot"})
    req = _request(data)
    assert not _validate(req).has_errors(), _validate(req).generate_report()
    groups = req["Instances"]["InstanceGroups"]
    assert [(g["InstanceRole"], g["Market"], g["InstanceCount"]) for g in groups] == \
        [("MASTER", "ON_DEMAND", 1), ("CORE", "SPOT", 2), ("TASK", "SPOT", 4)]


def test_launch_is_one_run_job_flow_call_with_the_exact_request():
    request, client = _request(), _client()
    with Stubber(client) as stub:
        stub.add_response("run_job_flow", {"JobFlowId": "j-2AXXXXXXGAPLF"}, expected_params=request)
        assert launcher.launch(request, client) == "j-2AXXXXXXGAPLF"
        stub.assert_no_pending_responses()


def test_example_plan_snapshot_and_hand_checked_fields():
    request = _request()
    assert request == json.loads(SNAPSHOT.read_text()), "plan changed: review, then refresh tests/emr/snapshots"
    assert request["AutoTerminationPolicy"] == {"IdleTimeout": 30 * 60}
    props = next(c["Properties"] for c in request["Configurations"] if c["Classification"] == "spark-defaults")
    # smallest memory per vCPU among the workers: m6i.4xlarge, 16 vCPU / 64 GiB -> 4 executors of 4 cores;
    # YARN 0.75 * 65536 MB = 49152 MB -> 12288 MB per container; overhead 4 * 1536 + 512 = 6656 MB; heap 5632 MB
    assert (props["spark.executor.cores"], props["spark.executor.memory"], props["spark.executor.memoryOverhead"]) == \
        ("4", "5632m", "6656m")
    task = request["Instances"]["InstanceFleets"][2]
    assert task["TargetSpotCapacity"] == 8 and task["TargetOnDemandCapacity"] == 0
    assert [c["WeightedCapacity"] for c in task["InstanceTypeConfigs"]] == [1, 1, 1, 2]   # vCPU 8, 8, 8, 16
    assert task["LaunchSpecifications"]["SpotSpecification"]["AllocationStrategy"] == "price-capacity-optimized"
    names = [s["Name"] for s in request["Steps"]]
    assert names == ["gen7: 4a manifest", "4b coadd cache", "gen7: 4c inject", "gen7: score", "gen7: 4d completeness",
                     "gen8b: 4a manifest", "gen8b: 4c inject", "gen8b: score", "gen8b: 4d completeness"]
    args = request["Steps"][2]["HadoopJarStep"]["Args"]
    assert args[:5] == ["spark-submit", "--deploy-mode", "cluster", "--py-files",
                        "s3://my-dhs-bucket/emr/code/dhs_bundle.zip"]
    assert "s3://my-dhs-bucket/emr/code/entry/inject.py" in args
    assert request["BootstrapActions"][0]["ScriptBootstrapAction"]["Path"] == \
        "s3://my-dhs-bucket/emr/code/bootstrap/install_deps.sh"
    text = json.dumps(request).lower()
    assert "secret" not in text and "aws_access_key" not in text


@pytest.mark.parametrize("path, value, field", [
    ("region", "us-east-9x", "region"),
    ("region", "mars-north-1", "region"),
    ("release_label", "emr-6.15.0", "release_label"),
    ("log_uri", "s3://Bad_Bucket/logs", "log_uri"),
    ("code_uri", "/local/path", "code_uri"),
    ("instances.core.types", ["r6i.2xl"], "instances.core.types[0]"),
    ("instances.task.types", ["z9q.2xlarge"], "instances.task.types[0]"),
    ("instances.task.types", ["c6i.4xlarge"], "instances.task.types"),   # 2 GiB/vCPU: no room for a brick per worker
    ("instances.core.count", 0, "instances.core.count"),
    ("instances.master.market", "spot", "instances.master.market"),
    ("instances.spot.allocation_strategy", "cheapest", "instances.spot.allocation_strategy"),
    ("instances.spot.timeout_minutes", 2, "instances.spot.timeout_minutes"),
    ("idle_timeout_minutes", 0, "idle_timeout_minutes"),
    ("pipeline.out", "s3://x", "pipeline.out"),
    ("pipeline.generations", [], "pipeline.generations"),
    ("pipeline.threshold", None, "pipeline.threshold"),        # checkpoint set: threshold or fpr needed
    ("bootstrap.with_torch", False, "bootstrap.with_torch"),   # scoring needs torch on the nodes
    ("instances.colour", "blue", "instances.colour"),
])
def test_each_bad_field_is_named(path, value, field):
    data = _example()
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[leaf] = value
    with pytest.raises(ConfigError) as err:
        cluster_config_from_dict(data)
    assert err.value.field == field, str(err.value)
    assert str(err.value).startswith(f"config field '{field}'")


def test_cli_plan_prints_the_request_and_status_logs_use_the_api():
    out = io.StringIO()
    with redirect_stdout(out):
        assert emr_main(["plan", "--config", str(EXAMPLE), "--git-sha", SHA]) == 0
    assert json.loads(out.getvalue()) == _request()

    client, cid = _client(), "j-2AXXXXXXGAPLF"
    cluster = {"Id": cid, "Name": "dhs", "Status": {"State": "RUNNING", "StateChangeReason": {}},
               "LogUri": "s3n://my-dhs-bucket/emr/logs/"}
    step = {"Id": "s-1", "Name": "gen7: 4a manifest", "Status": {"State": "FAILED", "FailureDetails": {"Message": "boom"}}}
    with Stubber(client) as stub:
        stub.add_response("describe_cluster", {"Cluster": cluster}, {"ClusterId": cid})
        stub.add_response("list_steps", {"Steps": [step], "Marker": "m"}, {"ClusterId": cid})
        stub.add_response("list_steps", {"Steps": []}, {"ClusterId": cid, "Marker": "m"})
        stub.add_response("describe_cluster", {"Cluster": cluster}, {"ClusterId": cid})
        stub.add_response("list_steps", {"Steps": [step]}, {"ClusterId": cid})
        out = io.StringIO()
        with redirect_stdout(out):
            assert emr_main(["status", cid, "--region", "us-east-1"], emr_client=client) == 0
        status = json.loads(out.getvalue())
        assert status["state"] == "RUNNING" and status["steps"] == [
            {"id": "s-1", "name": "gen7: 4a manifest", "state": "FAILED", "failure": "boom"}]
        out = io.StringIO()
        with redirect_stdout(out):
            assert emr_main(["logs", cid, "--config", str(EXAMPLE), "--step", "s-1"], emr_client=client) == 0
        assert json.loads(out.getvalue())["stderr"] == f"s3n://my-dhs-bucket/emr/logs/{cid}/steps/s-1/stderr.gz"
        stub.assert_no_pending_responses()


def test_load_cluster_config_refuses_a_missing_file_and_a_bad_preset(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_cluster_config(tmp_path / "nope.yaml")
    data = _example()
    data["pipeline"]["generations"] = ["uber"]    # uber needs COSMOS/deep bank paths
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    assert emr_main(["plan", "--config", str(tmp_path / "c.yaml"), "--git-sha", SHA]) == 2
