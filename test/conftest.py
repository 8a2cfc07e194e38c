"""Shared test set-up: DDS stays on loopback, per-run ROS domain and log dir, the ../shared data sets, and synthetic
data generated once per session (so that a clone without ../shared runs the whole suite)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

# Must be set before any rclpy import in this process or its children.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(10 + os.getpid() % 90))
os.environ.setdefault("ROS_LOG_DIR", tempfile.mkdtemp(prefix="dsformer_ros_test_logs_"))

REPO = Path(__file__).resolve().parents[1]
# DSFORMER_SHARED_DATA=/nonexistent runs the suite as a clone without ../shared does.
SHARED_DATA = Path(os.environ.get("DSFORMER_SHARED_DATA") or REPO.parent / "shared" / "data")


def _dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"{SHARED_DATA}/{name} is not available on this machine (real-imagery check)")
    return path


@pytest.fixture(scope="session")
def corridor() -> Path:
    """../shared/data/corridor (ref/, query/, ground_truth.csv) for checks about real imagery; skips where absent."""
    return _dataset("corridor")


@pytest.fixture(scope="session")
def gardens_point() -> Path:
    """../shared/data/gardens_point_mini (day queries, night refs) for checks about real imagery; skips where absent."""
    return _dataset("gardens_point_mini")


@pytest.fixture(scope="session")
def traversals(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic data set in the corridor's layout, rendered once per session (about 2 s): ref/ and query/ hold 111
    160x120 JPEGs each, one metre apart along one route of the synthetic town (ref: day; query: dusk, another
    drive's jitter and noise), ground_truth.csv: query i matches ref i +-2."""
    from training.synth.traversals import small_traversal_configs, write_traversal_pair

    ref, query = small_traversal_configs()
    return write_traversal_pair(tmp_path_factory.mktemp("synthetic") / "traversals", ref, query)


@pytest.fixture(scope="session")
def street_frames(traversals: Path) -> list[np.ndarray]:
    """The 111 reference frames of `traversals` as RGB arrays (consecutive frames of one drive, 1 m apart)."""
    from dsformer_ros.inference.preprocess import read_image

    return [read_image(p) for p in sorted((traversals / "ref").glob("*.jpg"))]


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
