"""The ROS 2 localization node: a managed (lifecycle) node around `Localizer`, images in, ranked places and fixes out.

configure: read parameters, load checkpoint + map (refused when they do not belong together), warm up, create the
lifecycle publishers. activate: subscriptions (images with sensor-data QoS, odometry), worker thread, `~/relocalize`,
diagnostics timer. deactivate/cleanup release them again. With `autostart` the node configures and activates itself
at start-up. Inference runs on a worker that always takes the newest frame (see `latest_frame`), so the node never
falls behind; odometry is stored as it arrives and the sequence filter takes the motion between the stamps of the
frames it processes, so dropped frames lose nothing.
"""
from __future__ import annotations

import functools
import math
import threading
import time
import traceback
from typing import Any, Callable

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseWithCovarianceStamped
from nav_msgs.msg import Odometry
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import qos_profile_sensor_data
from rclpy.time import Time
from sensor_msgs.msg import CompressedImage, Image, PointCloud2
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from dsformer_ros.common.geometry import NS_PER_S, quaternion_to_yaw, stamp_to_ns
from dsformer_ros.inference.image_codec import ImageDecodeError
from dsformer_ros.localization.latest_frame import FrameRejected, LatestFrameWorker, RollingPercentiles
from dsformer_ros.localization.localizer import LocalizationResult, Localizer
from dsformer_ros.localization.sequence import LOST
from dsformer_ros.ros.frame_decoder import make_decoder
from dsformer_ros.ros.messages import candidate_markers, candidates_cloud, diagnostics_message, pose_message
from dsformer_ros.ros.parameters import NodeSettings, declare_parameters, read_settings

NODE_NAME = "vpr_node"
WORKER_STOP_TIMEOUT_S = 60.0
# Per-frame timings (ms) kept for the diagnostics percentiles; overhead = arrival -> published, minus model + search.
TIMINGS = ("model", "search", "decode", "overhead")


def _logged_transition(callback: Callable[..., TransitionCallbackReturn]) -> Callable[..., TransitionCallbackReturn]:
    """rclpy turns an exception in a transition into a silent ERROR; log it with its traceback first."""

    @functools.wraps(callback)
    def wrapper(self: "VprNode", state: LifecycleState) -> TransitionCallbackReturn:
        try:
            return callback(self, state)
        except Exception:
            self.get_logger().error(f"{callback.__name__} raised:\n{traceback.format_exc()}")
            return TransitionCallbackReturn.ERROR

    return wrapper


class VprNode(LifecycleNode):
    """Lifecycle node: images -> `~/candidates` (PointCloud2), `~/pose`, `~/markers`, `/diagnostics`."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        declare_parameters(self)
        self._settings: NodeSettings | None = None
        self._localizer: Localizer | None = None
        self._decode = None
        self._decoder_name = ""
        self._worker: LatestFrameWorker | None = None
        self._subscription = None
        self._odometry_subscription = None
        self._service = None
        self._timer = None
        self._outputs: dict[str, Any] = {}
        self._timing: dict[str, RollingPercentiles] = {}
        self._lock = threading.Lock()
        self._fixes = 0
        self._last_fix_time: Time | None = None
        self._active_since: Time | None = None
        self._last_put: Time | None = None
        self._last_frame: dict[str, Any] = {}
        self._reported = (0, 0)

    # ---------------------------------------------------------------- lifecycle
    @_logged_transition
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, load and match checkpoint + map, warm up, create publishers."""
        try:
            settings, config = read_settings(self)
            decode, decoder_name = make_decoder(
                settings.image_decoder, settings.input_type == "compressed", settings.max_image_pixels
            )
            if settings.torch_threads > 0:
                import torch

                torch.set_num_threads(settings.torch_threads)
            self.get_logger().info(f"configuring: checkpoint {config.checkpoint}, map {config.map_path}")
            localizer = Localizer.load(config)
        except ValueError as exc:  # ConfigError, LocalizerError, DeviceError, ImageDecodeError...: the message says it
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        except Exception as exc:  # e.g. OSError reading a file, RuntimeError from torch: one line too
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self.get_logger().debug(traceback.format_exc())
            return TransitionCallbackReturn.FAILURE
        self._settings, self._localizer = settings, localizer
        self._decode, self._decoder_name = decode, decoder_name
        self._outputs = {
            "candidates": self.create_lifecycle_publisher(PointCloud2, "~/candidates", 10),
            "pose": self.create_lifecycle_publisher(PoseWithCovarianceStamped, "~/pose", 10),
            "diagnostics": self.create_lifecycle_publisher(DiagnosticArray, "/diagnostics", 10),
        }
        if settings.publish_markers:
            self._outputs["markers"] = self.create_lifecycle_publisher(MarkerArray, "~/markers", 10)
        self.get_logger().info(
            f"configured: {len(localizer.place_map)} places, {localizer.backend} on {localizer.device}, decoder "
            f"{decoder_name}"
        )
        return super().on_configure(state)

    @_logged_transition
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Start the worker, subscribe to images, offer ~/relocalize, publish diagnostics."""
        settings = self._settings
        self._timing = {name: RollingPercentiles(settings.latency_window) for name in TIMINGS}
        self._worker = LatestFrameWorker(self._process, latency_window=settings.latency_window, name="vpr-inference")
        self._worker.start()
        self._active_since = self.get_clock().now()
        self._last_put = None
        msg_type = CompressedImage if settings.input_type == "compressed" else Image
        self._subscription = self.create_subscription(
            msg_type, settings.image_topic, self._on_image, qos_profile_sensor_data
        )
        if settings.odometry_topic:
            self._odometry_subscription = self.create_subscription(
                Odometry, settings.odometry_topic, self._on_odometry, 50
            )
        self._service = self.create_service(Trigger, "~/relocalize", self._on_relocalize)
        self._timer = self.create_timer(settings.diagnostics_period_s, self._publish_diagnostics)
        odometry = f", odometry {settings.odometry_topic}" if settings.odometry_topic else ", no odometry"
        self.get_logger().info(
            f"active: listening to {self._subscription.topic_name} ({msg_type.__name__}){odometry}, "
            f"mode {self._localizer.config.mode}"
        )
        return super().on_activate(state)

    @_logged_transition
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking images, finish the frame in progress, stop diagnostics."""
        self._release_active()
        self.get_logger().info("deactivated")
        return super().on_deactivate(state)

    @_logged_transition
    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Destroy the publishers and free the model and the map."""
        self._release_configured()
        self.get_logger().info("cleaned up")
        return super().on_cleanup(state)

    @_logged_transition
    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything, whatever the state."""
        self._release_active()
        self._release_configured()
        return super().on_shutdown(state)

    @_logged_transition
    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """After an error: release everything and go back to unconfigured."""
        self._release_active()
        self._release_configured()
        return TransitionCallbackReturn.SUCCESS

    def _release_active(self) -> None:
        if self._subscription is not None:
            self.destroy_subscription(self._subscription)
            self._subscription = None
        if self._odometry_subscription is not None:
            self.destroy_subscription(self._odometry_subscription)
            self._odometry_subscription = None
        if self._worker is not None:
            if not self._worker.stop(WORKER_STOP_TIMEOUT_S):
                self.get_logger().error("the inference worker did not stop in time")
            self._worker = None
        if self._service is not None:
            self.destroy_service(self._service)
            self._service = None
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    def _release_configured(self) -> None:
        for publisher in self._outputs.values():
            self.destroy_lifecycle_publisher(publisher)
        self._outputs = {}
        self._localizer = None
        self._decode = None

    def autostart(self) -> bool:
        """Configure and activate now; False (with the reason logged) when a transition fails."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def stop_worker(self) -> None:
        """Stop the inference worker (process exit)."""
        if self._worker is not None:
            self._worker.stop(WORKER_STOP_TIMEOUT_S)

    # ---------------------------------------------------------------- data path
    def _on_image(self, msg: Any) -> None:
        worker = self._worker
        if worker is None:
            return
        max_rate = self._settings.max_rate_hz
        if max_rate > 0:
            now = self.get_clock().now()
            if self._last_put is not None and self._last_put <= now:
                if (now - self._last_put).nanoseconds < NS_PER_S / max_rate:
                    worker.count_dropped()
                    return
            self._last_put = now
        worker.put(msg)

    def _on_odometry(self, msg: Odometry) -> None:
        localizer = self._localizer
        if localizer is None:
            return
        p, q = msg.pose.pose.position, msg.pose.pose.orientation
        reason = localizer.add_odometry(stamp_to_ns(msg.header.stamp), p.x, p.y, quaternion_to_yaw(q.x, q.y, q.z, q.w))
        if reason:
            self.get_logger().warning(f"odometry ignored: {reason}", throttle_duration_sec=5.0)

    def _process(self, msg: Any, arrival: float) -> None:
        t0 = time.monotonic()
        try:
            rgb = self._decode(msg)
        except ImageDecodeError as exc:
            raise FrameRejected(str(exc)) from None
        decode_ms = (time.monotonic() - t0) * 1000.0
        stamp_ns = stamp_to_ns(msg.header.stamp)
        result = self._localizer.localize(rgb, stamp_ns)
        header = Header(stamp=msg.header.stamp, frame_id=self._settings.frame_id)
        try:
            self._publish_result(header, result)
        except Exception:
            if self.context.ok():
                raise
            return  # Ctrl-C: rclpy closed the context under the frame in progress, which is dropped
        overhead_ms = (time.monotonic() - arrival) * 1000.0 - result.model_ms - result.search_ms
        fix = result.decision.fix
        timings = (result.model_ms, result.search_ms, decode_ms, overhead_ms)
        for name, value in zip(TIMINGS, timings):
            self._timing[name].add(value)
        with self._lock:
            if fix is not None:
                self._fixes += 1
                self._last_fix_time = self.get_clock().now()
            self._last_frame = {
                "last_frame_stamp": f"{msg.header.stamp.sec}.{msg.header.stamp.nanosec:09d}",
                "last_frame_model_ms": result.model_ms,
                "last_frame_search_ms": result.search_ms,
                "last_frame_overhead_ms": overhead_ms,
                "last_decision": result.decision.reason,
            }

    def _publish_result(self, header: Header, result: LocalizationResult) -> None:
        """~/candidates, ~/pose when the fix is accepted, ~/markers when enabled."""
        self._outputs["candidates"].publish(candidates_cloud(header, result.candidates))
        if result.decision.fix is not None:
            self._outputs["pose"].publish(pose_message(header, result.decision.fix))
        if "markers" in self._outputs:
            self._outputs["markers"].publish(candidate_markers(header, result.candidates))

    def _on_relocalize(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        self._localizer.reset_temporal()
        response.success = True
        if self._localizer.sequence is not None:
            response.message = "sequence belief reset: searching the whole map again"
        else:
            response.message = "temporal filter cleared; the next accepted frame starts a new track"
        self.get_logger().info(f"relocalize: {response.message}")
        return response

    # ---------------------------------------------------------------- diagnostics
    def _seconds_since(self, then: Time | None, now: Time) -> float:
        if then is None or then > now:
            return math.nan
        return (now - then).nanoseconds / NS_PER_S

    def _level(self, stats: Any, fix_age: float, since_active: float, publishers: int) -> tuple[str, str]:
        """OK/WARN/ERROR with a one-line reason, judged on what happened since the last diagnostics message."""
        new_failed = stats.failed - self._reported[0]
        new_rejected = stats.rejected - self._reported[1]
        self._reported = (stats.failed, stats.rejected)
        warn_s = self._settings.no_fix_warn_s
        if not self._worker.alive:
            return "ERROR", "the inference worker has stopped"
        if new_failed > 0:
            return "ERROR", f"{new_failed} frame(s) failed in inference: {stats.last_error}"
        if new_rejected > 0:
            return "WARN", f"{new_rejected} malformed frame(s) rejected: {stats.last_reject_reason}"
        if stats.received == 0 and warn_s > 0 and since_active >= warn_s:
            why = f"{publishers} publisher(s) matched" if publishers else "no publisher matched: check the topic name"
            return "WARN", f"no images received on {self._settings.image_topic} for {since_active:.0f} s ({why})"
        no_fix_for = fix_age if not math.isnan(fix_age) else since_active
        sequence = self._localizer.sequence
        if sequence is not None and sequence.last_decision is not None:
            state = sequence.last_decision
            if warn_s > 0 and no_fix_for >= warn_s:
                return "WARN", f"no fix for {no_fix_for:.0f} s; {state.reason}"
            return ("WARN" if state.state == LOST else "OK"), state.reason
        if warn_s > 0 and no_fix_for >= warn_s:
            return "WARN", f"no fix accepted for {no_fix_for:.0f} s"
        if math.isnan(fix_age):
            return "OK", "localizing, no fix yet"
        return "OK", f"localizing, last fix {fix_age:.1f} s ago"

    def _publish_diagnostics(self) -> None:
        stats = self._worker.stats()
        now = self.get_clock().now()
        with self._lock:
            fixes, last_fix, last_frame = self._fixes, self._last_fix_time, dict(self._last_frame)
        fix_age = self._seconds_since(last_fix, now)
        since_active = self._seconds_since(self._active_since, now)
        subscription, odometry = self._subscription, self._odometry_subscription
        publishers = subscription.get_publisher_count() if subscription is not None else 0
        level, message = self._level(stats, fix_age, since_active if not math.isnan(since_active) else 0.0, publishers)
        localizer = self._localizer
        values = [
            ("input_topic", subscription.topic_name if subscription is not None else ""),
            ("input_type", self._settings.input_type),
            ("input_publishers", publishers),
            ("decoder", self._decoder_name),
            ("input_rate_hz", stats.input_rate_hz),
            ("latency_p50_ms", stats.latency_p50_ms),
            ("latency_p95_ms", stats.latency_p95_ms),
            ("model_ms_p50", self._timing["model"].percentile(50)),
            ("search_ms_p50", self._timing["search"].percentile(50)),
            ("decode_ms_p50", self._timing["decode"].percentile(50)),
            ("overhead_ms_p50", self._timing["overhead"].percentile(50)),
            ("overhead_ms_p95", self._timing["overhead"].percentile(95)),
            ("frames_received", stats.received),
            ("frames_processed", stats.processed),
            ("frames_dropped", stats.dropped),
            ("frames_rejected", stats.rejected),
            ("frames_failed", stats.failed),
            ("last_reject_reason", stats.last_reject_reason),
            ("last_error", stats.last_error),
            ("fixes_accepted", fixes),
            ("last_fix_age_s", fix_age),
            ("map_places", len(localizer.place_map)),
            ("map_keyframe_spacing_m", 2.0 * localizer.floor_sigma_m),
            ("map_path", localizer.config.map_path),
            ("device", localizer.device),
            ("backend", localizer.backend),
            ("mode", localizer.config.mode),
            ("odometry_topic", self._settings.odometry_topic),
            ("odometry_publishers", odometry.get_publisher_count() if odometry is not None else 0),
            *(localizer.sequence.status().items() if localizer.sequence is not None else ()),
            *last_frame.items(),
        ]
        name = f"{self.get_fully_qualified_name()}: visual place recognition"
        self._outputs["diagnostics"].publish(
            diagnostics_message(now.to_msg(), name, localizer.device, level, message, values)
        )
