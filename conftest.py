"""Fixtures shared by every test directory of the workspace."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
SHARED = ROOT.parent / "shared"

# Tests measure values, not speed: one intra-op thread per test process keeps xdist workers from
# fighting over the two cores of the CI machine.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def _shared(sub: str) -> Path:
    path = SHARED / sub
    if not path.exists():
        # Fail loudly: CI always has ../shared beside the clone; a missing folder is a broken setup.
        pytest.fail(f"{path} is missing: clone the repository with ../shared beside it", pytrace=False)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` (real CT scans from TotalSegmentator's test files)."""
    return _shared("data")


@pytest.fixture(scope="session")
def shared_reference() -> Path:
    """``../shared/reference`` (parity fixtures and checkpoint layouts)."""
    return _shared("reference")
