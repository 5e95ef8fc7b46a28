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
