"""`dsformer-vpr node --params-file F` as a user runs it: it starts itself, ends with exit code 0 however many SIGINTs
arrive, and every configure failure (unknown parameter, no CUDA, missing map, corrupt checkpoint) is one clear line.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("rclpy")

from node_assets import make_checkpoint_and_map, write_params  # noqa: E402

from dsformer_ros.ros.parameters import unknown_parameters_message  # noqa: E402

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]  # node processes started and signalled
START_TIMEOUT_S = 240.0


class NodeCli:
    """`python -m training.cli node --params-file F`, its merged output collected line by line."""

    def __init__(self, params: Path, repo_root: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "node", "--params-file", str(params)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=repo_root,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for_line(self, text: str, timeout: float) -> None:
        """Wait until a line containing `text` was printed (fails when the process ends first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(text in line for line in self.lines):
                code = self.proc.poll()
                assert code is None, f"node exited ({code}) before {text!r}:\n{self.output()}"
                assert time.monotonic() < deadline, f"no {text!r} after {timeout:.0f} s:\n{self.output()}"
                self._changed.wait(0.2)

    def finish(self, timeout: float = 120.0) -> int:
        """Wait for the exit (killing the process if it hangs) and return the exit code."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"node did not exit within {timeout:.0f} s:\n{self.output()}") from None
        self._reader.join(10.0)
        return self.proc.returncode

    def kill(self) -> None:
        """Leave no process behind (nothing to do when it has exited)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        """Everything printed so far, faiss' loader chatter (which names a ModuleNotFoundError) left out."""
        return "\n".join(line for line in self.lines if "faiss.loader" not in line and "swigfaiss" not in line)


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A checkpoint and a map that belong together."""
    return make_checkpoint_and_map(tmp_path_factory.mktemp("node_cli"))


def test_minimal_params_file_starts_the_node_and_two_sigints_exit_0(assets, tmp_path, repo_root):
    """No autostart in the file: the node configures and activates itself; SIGINT twice, 50 ms apart: exit 0."""
    params = write_params(tmp_path / "minimal.yaml", **assets, device="cpu", warmup_iterations=0, torch_threads=1)
    node = NodeCli(params, repo_root)
    try:
        node.wait_for_line("active: listening to /camera/image_raw", START_TIMEOUT_S)
        node.proc.send_signal(signal.SIGINT)
        time.sleep(0.05)
        node.proc.send_signal(signal.SIGINT)
        code = node.finish()
    finally:
        node.kill()
    assert code == 0, f"exit code {code} after two SIGINTs:\n{node.output()}"
    assert "Traceback" not in node.output() and "Error" not in node.output(), node.output()


def test_every_configure_failure_is_one_clear_line(assets, tmp_path, repo_root):
    """Each bad configuration ends configure with exit code 1 and one error line naming the problem, no traceback."""
    import torch

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(assets["checkpoint"].read_bytes()[:5000])
    cases = {
        "misspelled": ({"score_treshold": 0.6}, "unknown parameter(s) score_treshold (did you mean score_threshold?)"),
        "no map": ({"map_path": tmp_path / "nowhere"}, "nowhere does not exist"),
        "corrupt checkpoint": ({"checkpoint": corrupt}, "corrupt.pt"),
    }
    if not torch.cuda.is_available():
        cases["cuda"] = ({"device": "cuda"}, "'cuda' was requested but CUDA is not available")
    runs = {}
    try:
        for name, (values, _) in cases.items():
            settings = {**assets, "device": "cpu", "warmup_iterations": 0, "torch_threads": 1, **values}
            runs[name] = NodeCli(write_params(tmp_path / f"{name.replace(' ', '_')}.yaml", **settings), repo_root)
        finished = {name: (run.finish(START_TIMEOUT_S), run.output()) for name, run in runs.items()}
    finally:
        for run in runs.values():
            run.kill()
    for name, (_, expected) in cases.items():
        code, output = finished[name]
        errors = [line for line in output.splitlines() if "error" in line.lower()]
        assert code == 1, f"{name}: exit code {code}:\n{output}"
        assert "Traceback" not in output, f"{name}:\n{output}"
        assert len(errors) == 1 and "configure failed: " in errors[0] and expected in errors[0], f"{name}:\n{output}"


def test_unknown_parameters_name_the_nearest_known_one():
    """Every unknown name is listed with its nearest known name; ROS' own per-topic QoS overrides are not unknown."""
    known = ["score_threshold", "top_k", "temporal_window", "use_sim_time"]
    assert unknown_parameters_message(["top_k", "qos_overrides./tf.subscription.depth"], known) is None
    message = unknown_parameters_message(["score_treshold", "topk", "zzz_unrelated", "top_k"], known)
    assert message.startswith("unknown parameter(s) score_treshold (did you mean score_threshold?), "
                              "topk (did you mean top_k?), zzz_unrelated;"), message
