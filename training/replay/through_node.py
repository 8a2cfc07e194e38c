"""Node mode of `replay`: the real VPR node as a subprocess on the ROS graph, fed the bag's images frame by frame.

The node runs with use_sim_time; this driver publishes /clock at each frame's stamp and then the bag's own image
message (same topic type, same bytes), and waits for the candidates stamped with that frame before sending the next,
so the node's newest-frame policy never drops one and recall matches offline mode. Before the first frame a probe
image (stamped one second before the bag) confirms the whole path works; `~/relocalize` then clears the node's
temporal filter so the probe leaves no trace.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import yaml
from rosbags.typesys import Stores, get_typestore
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.config import to_dict
from dsformer_ros.common.geometry import NS_PER_S, ns_to_stamp, quaternion_to_yaw, stamp_to_ns
from dsformer_ros.localization.localizer import LocalizerConfig
from training.io.bag_reader import ImageFrame, OdomPose
from training.replay.config import ReplayConfig
from training.replay.metrics import ReplayResults, record_answer, record_fix

log = logging.getLogger(__name__)

PROBE_RETRY_S = 3.0
STOP_TIMEOUT_S = 30.0
POSE_GRACE_S = 1.0
ODOMETRY_LEAD_S = 0.05
_LOG_TAIL = 3000


class NodeReplayError(RuntimeError):
    """The node could not be started or stopped answering; the message carries the end of its log."""


@dataclasses.dataclass
class _Answer:
    points: np.ndarray
    received: float


def node_parameters(cfg: ReplayConfig, loc_cfg: LocalizerConfig, input_type: str) -> dict[str, Any]:
    """The node's parameters for a replay: the localizer settings of both modes, sim time, no rate limit."""
    sections = ("acceptance", "sequence", "odometry")
    params = {k: v for k, v in to_dict(loc_cfg).items() if k.split(".")[0] not in sections}
    for section in sections:
        params.update(to_dict(getattr(loc_cfg, section)))
    params.update({
        "odometry_topic": cfg.odometry_topic,
        "use_sim_time": True,
        "autostart": True,
        "input_type": input_type,
        "image_topic": cfg.image_topic,
        "image_decoder": "builtin",  # the decoder offline mode uses, so both see identical pixels
        "max_rate_hz": 0.0,
        "publish_markers": False,
        "no_fix_warn_s": 0.0,
        "torch_threads": cfg.threads,
    })
    return params


def _tail(path: Path) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return text[-_LOG_TAIL:]


class _Driver:
    """This process's side of the replay: publishers of /clock and images, subscribers of the node's outputs."""

    def __init__(self, node_name: str, image_topic: str, compressed: bool, odometry_topic: str = "") -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseWithCovarianceStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import CompressedImage, Image, PointCloud2
        from std_srvs.srv import Trigger

        from dsformer_ros.ros.messages import read_candidates_cloud

        self._read_cloud = read_candidates_cloud
        self.image_type = CompressedImage if compressed else Image
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"{node_name}_driver", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        reliable = QoSProfile(depth=100)
        self.clock_pub = self.node.create_publisher(Clock, "/clock", 10)
        self.image_pub = self.node.create_publisher(self.image_type, image_topic, qos_profile_sensor_data)
        self.odometry_pub = None
        if odometry_topic:
            from nav_msgs.msg import Odometry

            self._odometry_type = Odometry
            self.odometry_pub = self.node.create_publisher(Odometry, odometry_topic, 100)
        self.answers: dict[int, _Answer] = {}
        self.poses: dict[int, tuple[float, float, np.ndarray]] = {}
        self.diagnostics: dict[str, str] = {}
        self.node.create_subscription(PointCloud2, f"/{node_name}/candidates", self._on_candidates, reliable)
        self.node.create_subscription(PoseWithCovarianceStamped, f"/{node_name}/pose", self._on_pose, reliable)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, reliable)
        self.relocalize = self.node.create_client(Trigger, f"/{node_name}/relocalize")
        self._trigger = Trigger
        self._clock_type = Clock

    def _on_candidates(self, msg: Any) -> None:
        self.answers[stamp_to_ns(msg.header.stamp)] = _Answer(self._read_cloud(msg).copy(), time.monotonic())

    def _on_pose(self, msg: Any) -> None:
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        self.poses[stamp_to_ns(msg.header.stamp)] = (p.x, p.y, quaternion_to_yaw(q.x, q.y, q.z, q.w),
                                                     np.asarray(msg.pose.covariance, dtype=np.float64))

    def _on_diagnostics(self, msg: Any) -> None:
        for status in msg.status:
            if "visual place recognition" in status.name:
                self.diagnostics = {kv.key: kv.value for kv in status.values}
                self.diagnostics["level_message"] = status.message

    def spin_until(self, done: Callable[[], bool], timeout_s: float, alive: Callable[[], bool]) -> bool:
        """Process callbacks until `done()` or the timeout; raises when the node process has died."""
        deadline = time.monotonic() + timeout_s
        while not done():
            if not alive():
                raise NodeReplayError("the node process exited")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.executor.spin_once(timeout_sec=min(0.05, remaining))
        return True

    def publish_frame(self, stamp_ns: int, payload: Any) -> float:
        """/clock at the frame's stamp, then the image; returns the monotonic publish time."""
        clock = self._clock_type()
        clock.clock.sec, clock.clock.nanosec = ns_to_stamp(stamp_ns)
        self.clock_pub.publish(clock)
        sent = time.monotonic()
        self.image_pub.publish(payload)
        return sent

    def publish_odometry(self, pose: "OdomPose") -> None:
        """One bag odometry pose as nav_msgs/Odometry (frame odom)."""
        msg = self._odometry_type()
        msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp(pose.stamp_ns)
        msg.header.frame_id, msg.child_frame_id = pose.frame_id or "odom", "base_link"
        msg.pose.pose.position.x, msg.pose.pose.position.y = float(pose.x), float(pose.y)
        msg.pose.pose.orientation.z, msg.pose.pose.orientation.w = math.sin(pose.yaw / 2), math.cos(pose.yaw / 2)
        self.odometry_pub.publish(msg)

    def call_relocalize(self, timeout_s: float, alive: Callable[[], bool]) -> None:
        """Clear the node's temporal filter (forgets the probe frame)."""
        if not self.spin_until(lambda: self.relocalize.service_is_ready(), timeout_s, alive):
            raise NodeReplayError("the node's ~/relocalize service did not appear")
        future = self.relocalize.call_async(self._trigger.Request())
        if not self.spin_until(future.done, timeout_s, alive) or not future.result().success:
            raise NodeReplayError("~/relocalize did not succeed")

    def close(self) -> None:
        """Destroy the node and shut this context down."""
        self.executor.shutdown()
        self.node.destroy_node()
        self.context.try_shutdown()


def _serialized(frames: Iterable[ImageFrame], msgtype: str) -> Iterator[tuple[int, int, bytes]]:
    """(index, header stamp ns, CDR bytes of the bag's message) in bag order."""
    typestore = get_typestore(Stores.ROS2_KILTED)
    for frame in frames:
        yield frame.index, frame.stamp_ns, bytes(typestore.serialize_cdr(frame.msg, msgtype))


def _probe_message(payload: bytes, image_type: type, stamp_ns: int) -> Any:
    from rclpy.serialization import deserialize_message

    msg = deserialize_message(payload, image_type)
    msg.header.stamp.sec, msg.header.stamp.nanosec = ns_to_stamp(stamp_ns)
    return msg


def _start_node(params: dict, node_name: str, out_dir: Path) -> tuple[subprocess.Popen, Path]:
    params_file = out_dir / "node_params.yaml"
    atomic_write_text(params_file, yaml.safe_dump({"/**": {"ros__parameters": params}}, sort_keys=False))
    log_path = out_dir / "node.log"
    cmd = [sys.executable, "-m", "dsformer_ros.ros.main", "--ros-args", "--params-file", str(params_file),
           "-r", f"__node:={node_name}"]
    log.info("starting the node: %s", " ".join(cmd))
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=dict(os.environ))
    return process, log_path


def _stop_node(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.error("the node did not exit within %.0f s of SIGINT; killing it", STOP_TIMEOUT_S)
            process.kill()
            process.wait()
    return int(process.returncode)


def _probe(driver: _Driver, first: bytes, first_stamp: int, cfg: ReplayConfig, alive: Callable[[], bool]) -> float:
    """Publish probe frames until one is answered, let stragglers finish, clear the temporal filter; probe latency s."""
    deadline = time.monotonic() + cfg.startup_timeout_s
    if not driver.spin_until(lambda: driver.image_pub.get_subscription_count() > 0, cfg.startup_timeout_s, alive):
        raise NodeReplayError(f"the node did not subscribe to {cfg.image_topic} within {cfg.startup_timeout_s:g} s")
    probe_stamps: list[int] = []
    latency = float("nan")
    while not any(s in driver.answers for s in probe_stamps):
        if time.monotonic() > deadline:
            raise NodeReplayError(f"no answer to a probe frame within startup_timeout_s={cfg.startup_timeout_s:g}")
        stamp = first_stamp - NS_PER_S - len(probe_stamps) * 1000
        probe_stamps.append(stamp)
        sent = driver.publish_frame(stamp, _probe_message(first, driver.image_type, stamp))
        if driver.spin_until(lambda: stamp in driver.answers, PROBE_RETRY_S, alive):
            latency = driver.answers[stamp].received - sent
    quiet = max(1.0, 2.0 * latency if latency == latency else 1.0)
    count = len(driver.answers)
    while driver.spin_until(lambda: len(driver.answers) > count, quiet, alive):
        count = len(driver.answers)
    driver.call_relocalize(cfg.startup_timeout_s, alive)
    for stamp in probe_stamps:
        driver.answers.pop(stamp, None)
        driver.poses.pop(stamp, None)
    return latency


def replay_through_node(
    cfg: ReplayConfig, loc_cfg: LocalizerConfig, image_frames: Iterable[ImageFrame], n: int, compressed: bool,
    out_dir: Path, odometry: list[OdomPose] = (),
) -> tuple[ReplayResults, dict]:
    """Start the node, replay the `n` frames through it, stop it; per-frame results and a node section.

    `odometry` (sorted by stamp) is published on cfg.odometry_topic, each pose before the first frame stamped after it.

    DDS discovery stays on loopback unless ROS_AUTOMATIC_DISCOVERY_RANGE says otherwise.
    """
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    log.info("DDS discovery range %s, domain %s", os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"],
             os.environ.get("ROS_DOMAIN_ID", "0"))
    msgtype = "sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image"
    node_name = f"vpr_replay_{os.getpid()}"
    out_dir.mkdir(parents=True, exist_ok=True)
    results = ReplayResults.empty_like(n, cfg.top_k)
    sent_at = np.full(n, np.nan)
    started = time.monotonic()
    process, log_path = _start_node(node_parameters(cfg, loc_cfg, "compressed" if compressed else "raw"), node_name, out_dir)
    driver = None
    timeouts = 0
    try:
        driver = _Driver(node_name, cfg.image_topic, compressed, cfg.odometry_topic if odometry else "")
        alive = lambda: process.poll() is None  # noqa: E731
        frames = _serialized(image_frames, msgtype)
        first = next(frames, None)
        if first is None:
            raise ValueError(f"{cfg.bag}: no images on {cfg.image_topic}")
        probe_s = _probe(driver, first[2], first[1], cfg, alive)
        startup_s = time.monotonic() - started
        log.info("node ready after %.1f s (probe answered in %.0f ms)", startup_s, probe_s * 1000)
        seen: set[int] = set()
        period = 1.0 / cfg.rate if cfg.rate > 0 else 0.0
        last_sent = -np.inf
        k = 0
        if odometry and not driver.spin_until(lambda: driver.odometry_pub.get_subscription_count() > 0,
                                              cfg.startup_timeout_s, alive):
            raise NodeReplayError(f"the node did not subscribe to {cfg.odometry_topic}")
        with tqdm(total=n, desc="replay node", unit="frame") as bar:
            for i, stamp, payload in _chain(first, frames):
                if stamp in seen:
                    raise ValueError(f"{cfg.bag}: two images share the stamp {stamp}; node mode matches answers by stamp")
                seen.add(stamp)
                if period:
                    time.sleep(max(0.0, last_sent + period - time.monotonic()))
                results.stamp_ns[i] = stamp
                sent = k
                while k < len(odometry) and odometry[k].stamp_ns <= stamp:
                    driver.publish_odometry(odometry[k])
                    k += 1
                if k > sent:  # let the odometry arrive before the frame, as it would in a live robot
                    driver.spin_until(lambda: False, ODOMETRY_LEAD_S, alive)
                sent_at[i] = last_sent = driver.publish_frame(stamp, payload)
                if not driver.spin_until(lambda: stamp in driver.answers, cfg.frame_timeout_s, alive):
                    timeouts += 1
                    log.warning("frame %d (stamp %d): no answer within %.0f s", i, stamp, cfg.frame_timeout_s)
                bar.update(1)
        last = int(results.stamp_ns[np.flatnonzero(np.isfinite(sent_at))[-1]])  # the last frame sent (not a bad one)
        driver.spin_until(lambda: last in driver.answers, cfg.frame_timeout_s, alive)
        driver.spin_until(lambda: False, POSE_GRACE_S, alive)
        diagnostics = dict(driver.diagnostics)
        _fill(results, driver, sent_at)
    except NodeReplayError as exc:
        raise NodeReplayError(f"{exc}; node log {log_path}:\n{_tail(log_path)}") from None
    finally:
        if driver is not None:
            driver.close()
        code = _stop_node(process)
    extra = {"node": {
        "startup_s": round(startup_s, 3), "probe_latency_ms": round(probe_s * 1000, 1), "timeouts": timeouts,
        "exit_code": code, "log": str(log_path), "params_file": str(out_dir / "node_params.yaml"),
        "diagnostics": diagnostics,
    }}
    if code != 0:
        log.warning("the node exited with code %d (log %s)", code, log_path)
    return results, extra


def _chain(first: tuple, rest):
    yield first
    yield from rest


def _fill(results: ReplayResults, driver: _Driver, sent_at: np.ndarray) -> None:
    """Match the node's answers and fixes to frames by stamp."""
    for i, stamp in enumerate(results.stamp_ns.tolist()):
        answer = driver.answers.get(stamp)
        if answer is not None:
            points = answer.points
            xy = np.column_stack([points["x"], points["y"]])
            record_answer(results, i, xy, points["place_id"].astype(np.int64), points["score"])
            results.latency_s[i] = answer.received - sent_at[i]
        pose = driver.poses.get(stamp)
        if pose is not None:
            record_fix(results, i, *pose)
