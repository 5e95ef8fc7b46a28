"""Fault tests: a stage killed (SIGKILL) mid-write, or its S3 server gone mid-write, loses nothing.

Each test runs the real ``dhs`` CLI as a subprocess in its own process group (Spark's JVM and its
Python workers included), kills it once its tasks have started writing attempt files, and checks:
no partial dataset is ever visible (no ``_manifest.json``; readers refuse the output), a dataset
committed before is intact (same manifest, byte-identical part files), and a re-run completes with
``rows_written + rows_rejected`` equal to the input rows and no ``_attempts/`` left behind.

The sky has 2 bricks of 32 LRGs (256 stamps each) and 4c runs with one partition, so the single task
writes its first row group (256 rows) a few seconds before it finishes: the kill lands mid-write.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from support import shared_data_dir

from jobs.runtime import outputs, storage
from jobs.stages import sky
from jobs.stages.inject import OUTPUT_BATCH_ROWS

pytestmark = pytest.mark.slow

DHS = str(Path(sys.executable).parent / "dhs")
N_BRICKS, N_LRG = 2, 32
RUN_TIMEOUT_S = 180        # one whole stage run on 2 cores takes ~20-30 s
START_TIMEOUT_S = 120      # until the first attempt file appears
KILL_TIMEOUT_S = 20        # until every process of a killed group is gone


def _env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        env.pop(name, None)
    env.update(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               DHS_SHARED_DATA=str(shared_data_dir()))
    env.update(extra or {})
    return env


def _start(args: list[str], env: dict, log_dir: Path) -> tuple[subprocess.Popen, Path]:
    """``dhs args`` in a new session (process group), stdout+stderr to a log file."""
    log = log_dir / f"dhs-{uuid.uuid4().hex[:6]}.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([DHS, *args], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    return proc, log


def _run(args: list[str], env: dict, log_dir: Path, timeout: float = RUN_TIMEOUT_S) -> tuple[int, str]:
    proc, log = _start(args, env, log_dir)
    try:
        rc = proc.wait(timeout=timeout)
    finally:
        _kill_group(proc)
    return rc, log.read_text(errors="replace")


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group ``pgid``."""
    members = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()   # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(p.name))
    return members


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the whole process group of ``proc`` (driver, Spark JVM, Python workers); wait until all are gone."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=KILL_TIMEOUT_S)
    deadline = time.monotonic() + KILL_TIMEOUT_S
    while _group_members(proc.pid) and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.1)
    assert not _group_members(proc.pid), f"processes of group {proc.pid} survived SIGKILL"


def _wait_for(predicate, proc: subprocess.Popen, log: Path, what: str, timeout: float = START_TIMEOUT_S,
              every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"dhs exited (rc {proc.returncode}) before {what}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(every)
    _kill_group(proc)
    pytest.fail(f"timed out after {timeout} s waiting for {what}:\n{log.read_text(errors='replace')[-3000:]}")


def _local_attempt_files(out: Path) -> list[Path]:
    return [p for p in (out / outputs.ATTEMPTS_DIR).rglob("*.parquet")] if (out / outputs.ATTEMPTS_DIR).is_dir() else []


def _kill_mid_write(args: list[str], out: Path, env: dict, log_dir: Path) -> list[str]:
    """Start ``dhs args``, SIGKILL its process group as soon as a task has opened an attempt file;
    return the killed run's ids (folders under ``out/_attempts``)."""
    proc, log = _start(args, env, log_dir)
    try:
        _wait_for(lambda: bool(_local_attempt_files(out)), proc, log, "the first attempt file")
    finally:
        _kill_group(proc)
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-write (rc {proc.returncode})"
    return sorted(p.name for p in (out / outputs.ATTEMPTS_DIR).iterdir())


def _snapshot(uri: str) -> dict:
    """A committed dataset: its manifest, the sha256 of each part file, and its row count read back."""
    m = outputs.read_manifest(uri)
    hashes = {}
    for f in outputs.dataset_files(uri):
        fs, path = storage.resolve(f)
        with fs.open_input_stream(path) as fh:
            hashes[f] = hashlib.sha256(fh.read()).hexdigest()
    return {"manifest": m, "hashes": hashes, "rows": storage.read_parquet(outputs.dataset_files(uri)).num_rows}


def _assert_complete(uri: str, rows_in: int) -> dict:
    m = outputs.read_manifest(uri)
    assert m["rows_written"] + m["rows_rejected"] == rows_in == m["rows_in"]
    t = storage.read_parquet(outputs.dataset_files(uri))
    assert t.num_rows == rows_in
    assert len(set(t.column("task_id").to_pylist())) == rows_in   # no row lost, none duplicated
    return m


@pytest.fixture(scope="module")
def fault_inputs(tmp_path_factory):
    """A 2-brick sky and its committed 4a manifest (made by the CLI; no Spark in this process)."""
    root = tmp_path_factory.mktemp("faults")
    sky.main(["--out", str(root / "sky"), "--n-bricks", str(N_BRICKS), "--n-lrg", str(N_LRG), "--size-pix", "400"])
    rc, text = _run(["manifest", "--parent", str(root / "sky" / "parent_sample.parquet"), "--config", "base",
                     "--out", str(root / "manifest"), "--partitions", "2"], _env(), root)
    assert rc == 0, text[-3000:]
    rows_in = outputs.read_manifest(str(root / "manifest"))["rows_written"]
    assert rows_in >= 2 * OUTPUT_BATCH_ROWS      # the task writes a row group well before it ends
    return root / "sky", root / "manifest", rows_in


def _inject_args(manifest: Path, sky_dir: Path, out: str, *extra: str) -> list[str]:
    return ["inject", "--manifest", str(manifest), "--coadds", str(sky_dir), "--out", out, "--partitions", "1", *extra]


def test_sigkill_mid_write_leaves_no_partial_dataset_and_rerun_commits_everything(fault_inputs, tmp_path):
    sky_dir, manifest, rows_in = fault_inputs
    out = tmp_path / "stamps"
    args = _inject_args(manifest, sky_dir, str(out))

    killed_runs = _kill_mid_write(args, out, _env(), tmp_path)
    assert killed_runs, "the killed run left no attempt folder"
    assert not (out / outputs.MANIFEST_NAME).exists()
    assert not list(out.glob("part-*.parquet"))        # nothing moved into place
    with pytest.raises(outputs.MissingInputError):
        outputs.read_manifest(str(out))
    with pytest.raises(outputs.MissingInputError):
        outputs.require_input(str(out), stage="4c_inject")

    rc, text = _run(args, _env(), tmp_path)             # the same command, no --overwrite needed
    assert rc == 0, text[-3000:]
    m = _assert_complete(str(out), rows_in)
    assert m["run_id"] not in killed_runs
    assert not (out / outputs.ATTEMPTS_DIR).exists()    # the killed run's orphan attempts are gone


def test_sigkill_during_overwrite_keeps_the_committed_dataset(fault_inputs, tmp_path):
    sky_dir, manifest, rows_in = fault_inputs
    out = tmp_path / "stamps"
    rc, text = _run(_inject_args(manifest, sky_dir, str(out)), _env(), tmp_path)
    assert rc == 0, text[-3000:]
    before = _snapshot(str(out))
    assert before["rows"] == rows_in

    args = _inject_args(manifest, sky_dir, str(out), "--overwrite")
    _kill_mid_write(args, out, _env(), tmp_path)
    after = _snapshot(str(out))
    assert after == before                             # same manifest, byte-identical parts, same rows
    outputs.require_input(str(out), stage="4c_inject")

    rc, text = _run(args, _env(), tmp_path)
    assert rc == 0, text[-3000:]
    m = _assert_complete(str(out), rows_in)
    assert m["run_id"] != before["manifest"]["run_id"]
    assert not (out / outputs.ATTEMPTS_DIR).exists()


# --- the S3 server gone mid-write ---------------------------------------------------------------


def _weed_processes(root: Path) -> dict[str, tuple[int, list[str]]]:
    """``{"server"|"volume": (pid, argv)}`` of the SeaweedFS processes running in ``root``."""
    found = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            argv = [a.decode() for a in (p / "cmdline").read_bytes().split(b"\0") if a]
            cwd = os.readlink(p / "cwd")
        except OSError:
            continue
        if len(argv) >= 2 and Path(argv[0]).name == "weed" and Path(cwd) == root:
            found[argv[1]] = (int(p.name), argv)
    return found


@contextlib.contextmanager
def _private_s3(root: Path):
    """A private SeaweedFS (so stopping it cannot affect other tests) with a way to stop and restart
    its ``weed server`` (master + filer + S3 gateway) on the same ports, keys and data."""
    from s3server import run_seaweedfs

    restarted: list[subprocess.Popen] = []

    class Control:
        def stop(self):
            pid, argv = _weed_processes(root)["server"]
            self.argv = argv
            os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + KILL_TIMEOUT_S
            while _group_members(pid) and time.monotonic() < deadline:
                time.sleep(0.05)

        def restart(self, s3, timeout: float = 90.0):
            with open(root / "weed.log", "ab") as log:
                restarted.append(subprocess.Popen(self.argv, cwd=root, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, start_new_session=True))
            client, deadline, err = s3.client(), time.monotonic() + timeout, None
            while time.monotonic() < deadline:
                try:
                    client.put_object(Bucket=s3.bucket, Key="_probe", Body=b"ok")
                    client.delete_object(Bucket=s3.bucket, Key="_probe")
                    return
                except Exception as e:  # noqa: BLE001 - not up yet
                    err = e
                    time.sleep(0.2)
            raise TimeoutError(f"restarted SeaweedFS did not answer in {timeout} s: {err!r}")

    try:
        with run_seaweedfs(root) as s3:
            yield s3, Control()
    finally:
        for proc in restarted:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=KILL_TIMEOUT_S)


def test_s3_server_stopped_mid_write_fails_cleanly_and_keeps_the_committed_dataset(fault_inputs, tmp_path,
                                                                                  monkeypatch):
    sky_dir, manifest, rows_in = fault_inputs
    weed_root = tmp_path / "weed"
    weed_root.mkdir()
    with _private_s3(weed_root) as (s3, control):
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        for name, value in s3.env.items():
            monkeypatch.setenv(name, value)
        env = _env(s3.env)
        key = f"faults-{uuid.uuid4().hex[:8]}/stamps"
        out = f"s3://{s3.bucket}/{key}"
        client = s3.client()

        rc, text = _run(_inject_args(manifest, sky_dir, out), env, tmp_path)
        assert rc == 0, text[-3000:]
        before = _snapshot(out)
        assert before["rows"] == rows_in

        def attempts_started() -> bool:
            listed = client.list_objects_v2(Bucket=s3.bucket, Prefix=f"{key}/{outputs.ATTEMPTS_DIR}/")
            return listed.get("KeyCount", 0) > 0

        proc, log = _start(_inject_args(manifest, sky_dir, out, "--overwrite"), env, tmp_path)
        try:
            _wait_for(attempts_started, proc, log, "the first attempt object on S3", every=0.05)
            control.stop()
            rc = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            _kill_group(proc)
        text = log.read_text(errors="replace")
        assert rc != 0, f"the run succeeded although its S3 server was stopped mid-write:\n{text[-3000:]}"
        # it failed on the storage (a task's upload), not on something else
        assert "could not connect" in text.lower() or "NETWORK_CONNECTION" in text, text[-3000:]

        control.restart(s3)
        after = _snapshot(out)
        assert after == before                         # the failed run neither retired nor replaced it

        rc, text = _run(_inject_args(manifest, sky_dir, out, "--overwrite"), env, tmp_path)
        assert rc == 0, text[-3000:]
        m = _assert_complete(out, rows_in)
        assert m["run_id"] != before["manifest"]["run_id"]
        assert not storage.list_files(storage.join(out, outputs.ATTEMPTS_DIR), recursive=True)
