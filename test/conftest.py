"""Shared test set-up: DDS stays on loopback, per-run ROS domain and log dir, and the ../shared data sets."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Must be set before any rclpy import in this process or its children.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="dsformer_ros_test_logs_"))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def _dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"../shared/data/{name} is not available on this machine")
    return path


@pytest.fixture(scope="session")
def corridor() -> Path:
    """../shared/data/corridor (ref/, query/, ground_truth.csv); skips where absent."""
    return _dataset("corridor")


@pytest.fixture(scope="session")
def gardens_point() -> Path:
    """../shared/data/gardens_point_mini (day queries, night refs); skips where absent."""
    return _dataset("gardens_point_mini")


@pytest.fixture(scope="session")
def repo_root() -> Path:
    """The repository root (config/, launch/ live here)."""
    return REPO
