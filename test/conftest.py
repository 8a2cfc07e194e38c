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


@pytest.fixture(scope="session")
def pip_prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package installed with `pip install` (non-editable) of a copy of the source tree into a fresh prefix."""
    from ros_install import copy_source, pip_install

    scratch = tmp_path_factory.mktemp("pip_prefix")
    prefix = scratch / "prefix"
    pip_install(copy_source(scratch / "src"), prefix)
    return prefix


@pytest.fixture(scope="session")
def launch_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """launch, launch_ros and ros2cli installed from ../shared/vendor/ros2-launch; skips where that is absent."""
    from ros_install import VENDOR, install_launch_tooling

    if not VENDOR.is_dir():
        pytest.skip("../shared/vendor/ros2-launch (ROS 2 launch and ros2cli sources) is not available on this machine")
    scratch = tmp_path_factory.mktemp("launch_site")
    site = scratch / "site"
    install_launch_tooling(site, scratch)
    return site
