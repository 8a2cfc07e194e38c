"""`ros2 launch dsformer_ros vpr.launch.py` for real, against the package installed into a prefix with pip.

The launch system and ros2cli come from ../shared/vendor/ros2-launch (skipped where absent). One launch with
`namespace:=robot1 use_sim_time:=true` is driven through its life: lifecycle to active (ros2 lifecycle), sim time
taken from /clock, images answered, then Ctrl-C as a terminal sends it (SIGINT to the whole process group, so the
node gets two). Then 20 launches each get one SIGINT sent to launch alone (as kill -INT and supervisors do), with and
without a terminal, with and without images arriving: every one ends within 5 s (about 10 s a trial on 2 busy
cores, mostly start-up). That a failed configure ends the launch is checked against the colcon install
(test_packaging).
"""
from __future__ import annotations

import os
import pty
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import pytest

rclpy = pytest.importorskip("rclpy")

from builtin_interfaces.msg import Time  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from node_assets import generated_images, make_checkpoint_and_map, write_params  # noqa: E402
from rclpy.qos import qos_profile_sensor_data  # noqa: E402
from ros_client import RosClient  # noqa: E402
from ros_install import ros_env  # noqa: E402
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import Image, PointCloud2  # noqa: E402

from dsformer_ros.ros.messages import read_candidates_cloud  # noqa: E402

pytestmark = [pytest.mark.timeout(900), pytest.mark.slow]
START_TIMEOUT_S = 240.0
ANSWER_TIMEOUT_S = 60.0
NODE = "/robot1/vpr_node"
SIM_TIME_S = 4242


class Launch:
    """`ros2 launch ...` in its own process group (as in a terminal), output in a log file."""

    def __init__(self, env: dict[str, str], log_path: Path, *args: str, terminal: bool = False) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")
        # with a terminal on stdin launch is interactive: on SIGINT it expects the terminal to have sent the node one
        tty, stdin = pty.openpty() if terminal else (None, subprocess.DEVNULL)
        self.proc = subprocess.Popen(
            ["ros2", "launch", "dsformer_ros", "vpr.launch.py", *args],
            env=env, stdin=stdin, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=log_path.parent,
        )
        if tty is not None:
            os.close(stdin)
        self._tty = tty

    def log(self) -> str:
        """What launch and the node printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> None:
        """Wait until `text` appears in the output (fails when launch ends first)."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            assert self.proc.poll() is None, f"launch ended ({self.proc.returncode}) before {text!r}:\n{self.log()}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{self.log()}"
            time.sleep(0.2)

    def ctrl_c(self) -> None:
        """SIGINT to launch and the node at once, as a terminal does on Ctrl-C."""
        os.killpg(self.proc.pid, signal.SIGINT)

    def wait(self, timeout: float) -> int:
        """The exit code of launch; fails when it does not end in time (`kill` then cleans up)."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"launch still running after {timeout:.0f} s:\n{self.log()}") from None

    def kill(self) -> None:
        """Leave no process behind, whatever happened."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()
        if self._tty is not None:
            os.close(self._tty)


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, launch: Launch, tick: Callable[[], None]
) -> Any:
    """Call `tick` and re-check `predicate` every 0.1 s until it is truthy; fails when launch ends or time runs out."""
    deadline = time.monotonic() + timeout
    while not (result := predicate()):
        assert launch.proc.poll() is None, f"launch ended while waiting for {what}:\n{launch.log()}"
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}:\n{launch.log()}"
        tick()
        time.sleep(0.1)
    return result


def ros2(env: dict[str, str], *args: str) -> str:
    """Run one `ros2` command line (no daemon, as on this machine) and return its output."""
    out = subprocess.run(["ros2", *args], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"ros2 {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def env(pip_prefix: Path, launch_site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of `ros2 launch`: installed package and launch tooling, no virtual environment on PATH."""
    return ros_env(pip_prefix, launch_site, tmp_path_factory.mktemp("launch_env"))


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A checkpoint and a map that belong together."""
    return make_checkpoint_and_map(tmp_path_factory.mktemp("launch_assets"))


@pytest.fixture(scope="module")
def launched(env: dict[str, str], assets: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Launch:
    """`ros2 launch dsformer_ros vpr.launch.py params_file:=... namespace:=robot1 use_sim_time:=true`."""
    out = tmp_path_factory.mktemp("launch_run")
    params = write_params(out / "vpr.yaml", **assets, device="cpu", warmup_iterations=0, torch_threads=1,
                          diagnostics_period_s=0.2)
    launch = Launch(env, out / "launch.log", f"params_file:={params}", "namespace:=robot1", "use_sim_time:=true")
    try:
        yield launch
    finally:
        launch.kill()


def test_launch_drives_the_node_to_active_in_its_namespace(env, launched):
    """The launch file configures and activates the node; ros2cli sees it active, with use_sim_time on."""
    launched.wait_for_log("active: listening to /camera/image_raw", START_TIMEOUT_S)
    assert "active [3]" in ros2(env, "lifecycle", "get", NODE, "--no-daemon", "--spin-time", "3")
    assert "Boolean value is: True" in ros2(env, "param", "get", NODE, "use_sim_time", "--no-daemon",
                                            "--spin-time", "3")


def test_launched_node_answers_images_on_sim_time(launched):
    """An image gets its candidates; diagnostics carry the /clock time, not the wall clock."""
    launched.wait_for_log("active: listening", START_TIMEOUT_S)
    client = RosClient("launch_test_client")
    try:
        client.subscribe(PointCloud2, f"{NODE}/candidates")
        client.subscribe(DiagnosticArray, "/diagnostics")
        clock = client.node.create_publisher(Clock, "/clock", 10)
        images = client.node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
        rgb = generated_images(1, seed=7)[0]
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3,
                    data=rgb.tobytes())
        msg.header.stamp = Time(sec=77, nanosec=0)

        ticks = [0]

        def tick() -> None:  # sim time moves on, so the node's sim-time diagnostics timer keeps firing
            ticks[0] += 1
            clock.publish(Clock(clock=Time(sec=SIM_TIME_S + ticks[0] // 5, nanosec=(ticks[0] % 5) * 200_000_000)))
            images.publish(msg)

        clouds = wait_until(lambda: [c for _, c in client.messages(f"{NODE}/candidates") if c.header.stamp.sec == 77],
                            ANSWER_TIMEOUT_S, "candidates of the image", launched, tick)
        assert len(read_candidates_cloud(clouds[0])) == 5
        ours = f"{NODE}: visual place recognition"
        diagnostics = wait_until(
            lambda: [d for _, d in client.messages("/diagnostics") if d.status and d.status[0].name == ours
                     and d.header.stamp.sec >= SIM_TIME_S],
            ANSWER_TIMEOUT_S, "diagnostics on sim time", launched, tick,
        )
        assert diagnostics[0].header.stamp.sec < SIM_TIME_S + 60, "diagnostics must follow /clock"
    finally:
        client.close()


def test_ctrl_c_ends_launch_and_node_cleanly(launched):
    """SIGINT to the process group (the node gets one from the terminal and one from launch): all exit 0."""
    launched.wait_for_log("active: listening", START_TIMEOUT_S)
    launched.ctrl_c()
    code = launched.wait(90.0)
    log = launched.log()
    assert code == 0, log
    assert "process has finished cleanly" in log, log
    assert "process has died" not in log and "Traceback" not in log, log


SIGINT_TRIALS = 20
EXIT_AFTER_SIGINT_S = 5.0


def _session_processes(session: int) -> list[str]:
    """Command lines of the live processes of a session (launch's, started with start_new_session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            fields = text[text.rindex(")") + 2:].split()
            if int(fields[3]) == session and fields[0] != "Z":
                found.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (OSError, ValueError):
            continue  # the process ended while we looked
    return found


def test_sigint_to_launch_alone_ends_launch_and_node_every_time(env, assets, tmp_path):
    """SIGINT to the `ros2 launch` process alone (kill -INT, timeout -s INT, a supervisor), launched from a terminal
    and without one, with images arriving and without: launch and the node exit within 5 s every time and leave no
    process behind."""
    params = write_params(tmp_path / "vpr.yaml", **assets, device="cpu", warmup_iterations=0, torch_threads=1)
    rgb = generated_images(1, seed=3)[0]
    msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", step=rgb.shape[1] * 3, data=rgb.tobytes())
    client = RosClient("sigint_test_client")
    client.subscribe(PointCloud2, "/vpr_node/candidates")
    images = client.node.create_publisher(Image, "/camera/image_raw", qos_profile_sensor_data)
    failed, exits = [], []
    try:
        for trial in range(SIGINT_TRIALS):
            in_flight, terminal = trial % 2 == 0, trial % 4 >= 2
            what = (f"trial {trial} ({'frames in flight' if in_flight else 'idle'}, "
                    f"{'a' if terminal else 'no'} terminal)")
            launch = Launch(env, tmp_path / f"launch{trial}.log", f"params_file:={params}", terminal=terminal)
            try:
                launch.wait_for_log("active: listening", START_TIMEOUT_S)
                if in_flight:
                    answered = len(client.messages("/vpr_node/candidates"))
                    wait_until(lambda: len(client.messages("/vpr_node/candidates")) > answered, ANSWER_TIMEOUT_S,
                               "an answer", launch, lambda: images.publish(msg))
                started = time.monotonic()
                os.kill(launch.proc.pid, signal.SIGINT)
                deadline = started + EXIT_AFTER_SIGINT_S
                while ((launch.proc.poll() is None or _session_processes(launch.proc.pid))
                       and time.monotonic() < deadline):
                    if in_flight:
                        images.publish(msg)
                    time.sleep(0.02)
                exits.append(time.monotonic() - started)
                left = _session_processes(launch.proc.pid)
                log = launch.log()
                if launch.proc.poll() is None or left or "Traceback" in log or "process has died" in log:
                    failed.append(f"{what}: launch {'running' if launch.proc.poll() is None else 'ended'}, "
                                  f"processes left {left}:\n{log[-3000:]}")
            finally:
                launch.kill()
    finally:
        client.close()
    print(f"exit after SIGINT: {min(exits):.2f}..{max(exits):.2f} s over {len(exits)} trials")
    assert not failed, f"{len(failed)} of {SIGINT_TRIALS} trials did not end within {EXIT_AFTER_SIGINT_S:.0f} s:\n" + \
        "\n".join(failed)
