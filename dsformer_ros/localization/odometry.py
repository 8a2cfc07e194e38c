"""Odometry as relative motion between frames: a checked, bounded history of (stamp, x, y, yaw) in the odom frame.

Wheel odometry or VIO drifts, so only the motion between two frames is used, never the absolute pose. Each sample is
checked on arrival against the last accepted one: non-finite values, a stamp that does not increase and a speed above
`max_speed_mps` (a jump of kilometres) are counted by reason and ignored, so one bad message cannot move the belief.
When the odometry really restarted (several rejected samples in a row of the same kind), the history starts again
in a new epoch; motion is only ever computed between two poses of one epoch. Thread-safe: the node adds samples from
its executor while the inference worker asks for poses.
"""
from __future__ import annotations

import bisect
import math
import threading
from dataclasses import dataclass

from dsformer_ros.common.geometry import NS_PER_S, angle_difference, wrap_angle
from dsformer_ros.common.params import check_fields, setting

REJECTIONS = ("nonfinite", "time_not_increasing", "jump")


@dataclass(frozen=True)
class OdomPose:
    """An odometry pose at a stamp: x/y (m) and yaw (rad) in the odometry's own frame, and its epoch."""

    stamp_ns: int
    x: float
    y: float
    yaw: float
    epoch: int


@dataclass(frozen=True)
class Motion:
    """Relative motion between two frames in the robot frame of the first: forward dx, left dy (m), turn dyaw (rad)."""

    dx: float
    dy: float
    dyaw: float

    @property
    def distance(self) -> float:
        """Distance travelled (m)."""
        return math.hypot(self.dx, self.dy)


def motion_between(a: OdomPose, b: OdomPose) -> Motion | None:
    """The motion from pose a to pose b in a's robot frame; None when they lie in different epochs."""
    if a.epoch != b.epoch:
        return None
    c, s = math.cos(a.yaw), math.sin(a.yaw)
    ex, ny = b.x - a.x, b.y - a.y
    return Motion(c * ex + s * ny, -s * ex + c * ny, angle_difference(b.yaw, a.yaw))


@dataclass
class OdometryConfig:
    """The odometry gate's settings; each field is also the node parameter of that name."""

    odometry_max_speed_mps: float = setting(
        60.0, "Odometry implying a faster motion is a jump: counted in diagnostics and ignored.",
        low=0.1, high=10000.0, section="input",
    )
    odometry_tolerance_s: float = setting(
        0.5, "A frame stamped farther than this outside the odometry received is localized without odometry.",
        low=0.0, high=60.0, section="input",
    )

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        check_fields(self)


class OdometryTrack:
    """Accepted odometry samples (bounded), with rejection counts and interpolation at a frame's stamp."""

    def __init__(self, max_speed_mps: float, tolerance_s: float, capacity: int = 4096, resync_after: int = 3) -> None:
        if not max_speed_mps > 0 or not tolerance_s >= 0:
            raise ValueError("max_speed_mps must be > 0 and tolerance_s >= 0")
        self.max_speed_mps = max_speed_mps
        self.tolerance_ns = int(tolerance_s * NS_PER_S)
        self.capacity = capacity
        self.resync_after = resync_after
        self._lock = threading.Lock()
        self._samples: list[OdomPose] = []
        self._stamps: list[int] = []
        self._epoch = 0
        self._streak: tuple[str, int] = ("", 0)
        self.received = 0
        self.rejected = {reason: 0 for reason in REJECTIONS}
        self.resyncs = 0
        self.last_rejection = ""

    def add(self, stamp_ns: int, x: float, y: float, yaw: float) -> str:
        """Check and store one sample; returns '' when accepted, else the reason it was ignored."""
        with self._lock:
            self.received += 1
            if not all(math.isfinite(v) for v in (x, y, yaw)):
                return self._reject("nonfinite", f"odometry at {stamp_ns} has a non-finite pose ({x}, {y}, {yaw})")
            if self._samples:
                last = self._samples[-1]
                dt = (stamp_ns - last.stamp_ns) / NS_PER_S
                if dt <= 0:
                    return self._reject_or_resync(
                        "time_not_increasing", f"odometry stamp {stamp_ns} is not after the last one {last.stamp_ns}",
                        stamp_ns, x, y, yaw,
                    )
                speed = math.hypot(x - last.x, y - last.y) / dt
                if speed > self.max_speed_mps:
                    return self._reject_or_resync(
                        "jump", f"odometry jumped {math.hypot(x - last.x, y - last.y):.1f} m in {dt:.3f} s "
                        f"({speed:.0f} m/s > max {self.max_speed_mps:g})", stamp_ns, x, y, yaw,
                    )
            self._streak = ("", 0)
            self._append(OdomPose(int(stamp_ns), float(x), float(y), float(yaw), self._epoch))
            return ""

    def _reject(self, reason: str, text: str) -> str:
        self.rejected[reason] += 1
        self.last_rejection = text
        return text

    def _reject_or_resync(self, reason: str, text: str, stamp_ns: int, x: float, y: float, yaw: float) -> str:
        kind, count = self._streak
        count = count + 1 if kind == reason else 1
        self._streak = (reason, count)
        if count < self.resync_after:
            return self._reject(reason, text)
        self._epoch += 1
        self.resyncs += 1
        self._samples, self._stamps = [], []
        self._streak = ("", 0)
        self._append(OdomPose(int(stamp_ns), float(x), float(y), float(yaw), self._epoch))
        self.last_rejection = f"odometry restarted after {count} rejected samples ({reason}); new epoch {self._epoch}"
        return ""

    def _append(self, pose: OdomPose) -> None:
        self._samples.append(pose)
        self._stamps.append(pose.stamp_ns)
        if len(self._samples) > self.capacity:
            drop = len(self._samples) - self.capacity
            del self._samples[:drop], self._stamps[:drop]

    def pose_at(self, stamp_ns: int) -> OdomPose | None:
        """The pose interpolated at `stamp_ns`; the nearest end within tolerance_s outside the history; else None."""
        with self._lock:
            if not self._samples:
                return None
            k = bisect.bisect_left(self._stamps, stamp_ns)
            if k == 0:
                first = self._samples[0]
                return first if first.stamp_ns - stamp_ns <= self.tolerance_ns else None
            if k == len(self._samples):
                last = self._samples[-1]
                return last if stamp_ns - last.stamp_ns <= self.tolerance_ns else None
            a, b = self._samples[k - 1], self._samples[k]
        if a.epoch != b.epoch:
            return b if b.stamp_ns - stamp_ns <= self.tolerance_ns else None
        t = (stamp_ns - a.stamp_ns) / (b.stamp_ns - a.stamp_ns)
        return OdomPose(int(stamp_ns), a.x + t * (b.x - a.x), a.y + t * (b.y - a.y), wrap_angle(a.yaw + t * angle_difference(b.yaw, a.yaw)),
                        a.epoch)

    def clear(self) -> None:
        """Forget every sample (counts are kept); the next one starts a new epoch."""
        with self._lock:
            self._samples, self._stamps = [], []
            self._epoch += 1
            self._streak = ("", 0)

    def counts(self) -> dict[str, int | str]:
        """Received, rejected by reason, restarts and the last rejection text, for diagnostics."""
        with self._lock:
            return {"odometry_received": self.received,
                    **{f"odometry_rejected_{r}": n for r, n in self.rejected.items()},
                    "odometry_restarts": self.resyncs, "odometry_last_rejection": self.last_rejection}
