"""Entry points of the VPR node: `vpr_node --ros-args ...` (ROS users) and `dsformer-vpr node --params-file FILE`.

Both start one `VprNode` in a single-threaded executor (inference has its own worker thread). A wrong parameter
(type or range) and, with `autostart` (the default outside launch), a failed configure (e.g. map and checkpoint do
not match) end the process with a clear message and a non-zero exit code. Ctrl-C exits 0 however many SIGINTs
arrive: a terminal and `ros2 launch` each send one, and the second must not kill the shutdown half-way.
"""
from __future__ import annotations

import argparse
import gc
import signal
import sys
from pathlib import Path

from dsformer_ros.common.cli import setup_logging

EXIT_BAD_PARAMETER = 2
EXIT_CONFIGURE_FAILED = 1


class _InterruptOnce:
    """SIGINT handler: the first SIGINT while spinning stops it (KeyboardInterrupt); any other is ignored, so the
    clean-up always finishes (rclpy puts this handler back at shutdown, and launch may send more SIGINTs late)."""

    def __init__(self) -> None:
        self.armed = True

    def __call__(self, signum: int, frame: object) -> None:
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the node until Ctrl-C or shutdown; `argv` are the arguments after the program name (ROS args included)."""
    from dsformer_ros.common.cpus import prefer_passive_omp_wait

    prefer_passive_omp_wait()  # before torch is imported: the node shares its cores with the robot's other work
    import rclpy
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    from dsformer_ros.ros.node import VprNode

    args = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    # rclpy's own handler chains to this one; rclpy.try_shutdown restores it, hence SIG_IGN again at the end
    # (Python resets a Python-level handler to the default while finalising, which a late SIGINT would die of).
    interrupt = _InterruptOnce()
    signal.signal(signal.SIGINT, interrupt)
    rclpy.init(args=["vpr_node", *args])
    node = None
    try:
        executor = SingleThreadedExecutor()
        try:
            node = VprNode()
        except ParameterException as exc:
            hint = ""
            if "expecting type 'DOUBLE'" in str(exc):
                hint = " (write floating-point values with a decimal point, e.g. 1.0)"
            print(f"vpr_node: invalid parameter: {exc}{hint}", file=sys.stderr)
            return EXIT_BAD_PARAMETER
        if node.get_parameter("autostart").value and not node.autostart():
            return EXIT_CONFIGURE_FAILED
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        interrupt.armed = False
        if node is not None:
            node.stop_worker()
            node.destroy_node()
        rclpy.try_shutdown()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # What is left is freed by the exit: the interpreter's final collection would walk torch's object graph
        # for about a second first, a good part of the 5 s launch allows between SIGINT and SIGTERM.
        gc.freeze()
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `dsformer-vpr node`."""
    parser.add_argument("--params-file", help="ROS 2 parameter file, e.g. config/vpr.yaml (required to run)")
    parser.add_argument(
        "--print-params-file",
        action="store_true",
        help="print the commented parameter file with every default (the source of config/vpr.yaml) and exit",
    )
    parser.add_argument(
        "--set-param",
        action="append",
        default=[],
        metavar="NAME:=VALUE",
        help="override one parameter (as ros2 run's -p); repeatable",
    )
    parser.add_argument("--log-level", default=None, help="ROS log level (debug, info, warn, error)")


def ros_arguments(args: argparse.Namespace) -> list[str]:
    """The `--ros-args` list that `dsformer-vpr node` options stand for."""
    if not args.params_file:
        raise ValueError("--params-file is required")
    params_file = Path(args.params_file)
    if params_file.is_dir():
        raise ValueError(f"--params-file {params_file} is a directory, not a parameter file")
    if not params_file.is_file():
        raise FileNotFoundError(f"--params-file {params_file} does not exist")
    check_params_file(params_file)
    out = ["--ros-args", "--params-file", str(params_file)]
    for item in args.set_param:
        if ":=" not in item:
            raise ValueError(f"--set-param {item!r} must look like name:=value")
        out += ["-p", item]
    if args.log_level:
        out += ["--log-level", args.log_level]
    return out


def _check_section(path: Path, name: str, section: object, depth: int = 0) -> None:
    if isinstance(section, dict) and "ros__parameters" in section:
        if not isinstance(section["ros__parameters"], dict):
            raise ValueError(f"--params-file {path}: {name}/ros__parameters must be a mapping of parameter values")
        return
    if not isinstance(section, dict) or not section or depth > 8:
        raise ValueError(f"--params-file {path}: section {name!r} holds no 'ros__parameters' mapping")
    for key, value in section.items():
        _check_section(path, f"{name}/{key}", value, depth + 1)


def check_params_file(path: Path) -> None:
    """Raise ValueError unless `path` is a ROS 2 parameter file: YAML mapping node names (or namespaces) to
    `ros__parameters` mappings; rcl would otherwise fail at init with a traceback."""
    import yaml

    try:
        data = yaml.safe_load(path.read_bytes())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"--params-file {path} is not YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise ValueError(f"--params-file {path} is nested too deeply to be a parameter file") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"--params-file {path} must map node names to parameters ('/**: ros__parameters: ...')")
    for name, section in data.items():
        _check_section(path, str(name), section)


def run(args: argparse.Namespace) -> int:
    """Start the node with the parameter file and overrides given on the command line."""
    if args.print_params_file:
        from dsformer_ros.ros.parameters import render_params_file

        print(render_params_file(), end="")
        return 0
    try:
        ros_args = ros_arguments(args)
    except (FileNotFoundError, ValueError) as exc:
        print(f"dsformer-vpr node: error: {exc}", file=sys.stderr)
        return EXIT_BAD_PARAMETER
    return main(ros_args)


if __name__ == "__main__":
    sys.exit(main())
