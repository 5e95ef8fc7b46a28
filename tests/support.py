"""Plain helpers for tests (importable as ``support``; fixtures live in conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$DHS_SHARED_DATA`` or ``../shared/data`` beside the repository."""
    return Path(os.environ.get("DHS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
