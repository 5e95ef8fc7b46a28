"""Shared fixtures: the real-data folder and one session-scoped local Spark."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from support import shared_data_dir

os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real telescope data folder; tests that need it skip, saying why, when it is absent."""
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"real data folder not found at {path} (set DHS_SHARED_DATA to its location)")
    return path


@pytest.fixture(scope="session")
def spark():
    """One local[2] SparkSession for the whole test session."""
    from jobs.spark import get_spark

    session = get_spark("dhs-tests", master="local[2]")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One real S3-compatible server (SeaweedFS on 127.0.0.1) for the whole test session."""
    from s3server import run_seaweedfs

    with run_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Point this test's AWS environment at the local server (undone after the test).

    Spark tasks get the same settings from the driver (``jobs.runtime.stage.with_storage_env``).
    """
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    return s3_server
