"""The ament_python package: package.xml dependencies and what `pip install .` puts where ROS tools look."""
from __future__ import annotations

import os
import subprocess
import sys
import xml.etree.ElementTree as ET


def test_package_xml_declares_every_ros_dependency(repo_root):
    root = ET.parse(repo_root / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == "dsformer_ros"
    assert root.find("export/build_type").text == "ament_python"
    deps = {e.text for e in root.iter("exec_depend")}
    for dep in ("rclpy", "sensor_msgs", "geometry_msgs", "nav_msgs", "std_msgs", "diagnostic_msgs",
                "visualization_msgs", "std_srvs", "cv_bridge"):
        assert dep in deps, dep


def test_pip_install_puts_ros_files_where_launch_finds_them(repo_root, tmp_path):
    prefix = tmp_path / "prefix"
    env = dict(os.environ, PIP_NO_INDEX="1")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "--prefix", str(prefix), str(repo_root)],
        check=True, env=env, cwd=tmp_path, timeout=300,
    )
    share = prefix / "share"
    assert (share / "ament_index" / "resource_index" / "packages" / "dsformer_ros").is_file()
    assert (share / "dsformer_ros" / "package.xml").is_file()
    assert (share / "dsformer_ros" / "launch" / "vpr.launch.py").is_file()
    assert (share / "dsformer_ros" / "config" / "vpr.yaml").is_file()
    wrapper = prefix / "lib" / "dsformer_ros" / "vpr_node"
    assert wrapper.is_file() and os.access(wrapper, os.X_OK)
    assert (prefix / "bin" / "dsformer-vpr").is_file()


def test_cli_lists_commands_without_importing_torch(repo_root):
    code = "import sys; from training.cli import main; main(['--help']); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo_root)
    assert "build-map" in out.stdout and "describe" in out.stdout
    assert out.stdout.strip().endswith("False")


def test_unknown_command_is_an_error(repo_root):
    out = subprocess.run([sys.executable, "-m", "training.cli", "frobnicate"], capture_output=True, text=True, cwd=repo_root)
    assert out.returncode == 2 and "unknown command 'frobnicate'" in out.stderr
