"""The package installed the way ROS users get it, for the packaging and launch tests.

`pip install` of a copy of the source tree into a prefix, `colcon build` of one, and the ROS 2 launch system and
command line (not on PyPI) from ../shared/vendor/ros2-launch, installed into a separate folder. The environment
that `ros2 launch` needs is built from these folders alone: the virtual environment's bin/ is not on PATH, so an
executable that does not name its interpreter fails here as it would on a robot.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENDOR = REPO.parent / "shared" / "vendor" / "ros2-launch"
LAUNCH_PACKAGES = (
    "launch", "launch_xml", "launch_yaml", "launch_ros", "rosidl_runtime_py", "ros2cli", "ros2launch", "ros2pkg",
    "ros2run", "ros2node", "ros2param", "ros2lifecycle", "ros2service", "ros2topic",
)
# launch_ros imports composition_interfaces.srv at load (for composable nodes, unused here); it is not on PyPI.
COMPOSITION_INTERFACES = '''"""Stand-in for the composition_interfaces services that launch_ros names in annotations."""


class _Service:
    class Request:
        pass

    class Response:
        pass


class LoadNode(_Service):
    pass


class UnloadNode(_Service):
    pass


class ListNodes(_Service):
    pass
'''
SOURCE_IGNORE = shutil.ignore_patterns(".git", ".venv", "build", "install", "log", "runs", "__pycache__", "*.egg-info",
                                       ".pytest_cache")
SITE_PACKAGES = f"lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"


def copy_source(dest: Path) -> Path:
    """A copy of the source tree (pip and colcon write build files next to setup.py)."""
    shutil.copytree(REPO, dest, ignore=SOURCE_IGNORE)
    return dest


def pip_install(source: Path, prefix: Path) -> None:
    """`pip install` (non-editable, no dependencies) of `source` into `prefix`."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "--prefix", str(prefix), str(source)],
        check=True, env=dict(os.environ, PIP_NO_INDEX="1"), cwd=source.parent, timeout=300,
    )


def install_launch_tooling(site: Path, scratch: Path) -> None:
    """launch, launch_ros and ros2cli from ../shared/vendor/ros2-launch into `site` (a --target folder)."""
    sources = [shutil.copytree(VENDOR / name, scratch / name) for name in LAUNCH_PACKAGES]
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(site),
         *map(str, sources)],
        check=True, env=dict(os.environ, PIP_NO_INDEX="1"), cwd=scratch, timeout=600,
    )
    package = site / "composition_interfaces"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "srv.py").write_text(COMPOSITION_INTERFACES)


def ros_env(prefix: Path, site: Path, scratch: Path) -> dict[str, str]:
    """The environment `ros2 launch` and `ros2 ...` run in: the package in `prefix`, the tooling in `site`."""
    tmp = scratch / "tmp"
    tmp.mkdir(exist_ok=True)  # launch_ros leaves launch_params_* files in TMPDIR
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMENT_", "COLCON_", "PYTHON"))}
    env.update(
        AMENT_PREFIX_PATH=f"{prefix}{os.pathsep}{site}",
        PYTHONPATH=f"{prefix / SITE_PACKAGES}{os.pathsep}{site}",
        PATH=os.pathsep.join([str(site / "bin"), "/usr/local/bin", "/usr/bin", "/bin"]),
        TMPDIR=str(tmp),
        PYTHONUNBUFFERED="1",
    )
    return env
