"""The project's angle and time conventions in one place.

Headings are compass bearings in degrees (clockwise from north: 0 north, 90 east), as in '@' names and map
metadata; yaws are ENU radians (counter-clockwise from east), as in ROS messages; quaternions are (x, y, z, w).
Stamps are integer nanoseconds; ROS `builtin_interfaces/Time` splits them into sec + nanosec (ROS 1: nsec).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

NS_PER_S = 1_000_000_000


def wrap_angle(angle: np.ndarray | float) -> np.ndarray | float:
    """Angle (rad) wrapped into [-pi, pi]; a float stays a float (odometry's hot path), arrays work elementwise."""
    if isinstance(angle, (float, int)):
        return math.atan2(math.sin(angle), math.cos(angle))
    angle = np.asarray(angle, dtype=np.float64)
    return np.arctan2(np.sin(angle), np.cos(angle))


def angle_difference(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray | float:
    """Signed smallest rotation (rad) from b to a, in [-pi, pi]."""
    return wrap_angle(a - b)


def heading_difference_deg(a: np.ndarray | float, b: np.ndarray | float) -> np.ndarray:
    """Absolute smallest difference between two angles in degrees, in [0, 180]."""
    return np.abs((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) + 180.0) % 360.0 - 180.0)


def heading_to_yaw(heading_deg: np.ndarray | float) -> np.ndarray:
    """Compass heading (deg clockwise from north) -> ENU yaw (rad counter-clockwise from east) in [-pi, pi]."""
    return wrap_angle(np.pi / 2.0 - np.radians(np.asarray(heading_deg, dtype=np.float64)))


def yaw_to_heading(yaw: np.ndarray | float) -> np.ndarray:
    """ENU yaw (rad counter-clockwise from east) -> compass heading in degrees [0, 360)."""
    return np.mod(90.0 - np.degrees(np.asarray(yaw, dtype=np.float64)), 360.0)


def yaw_to_quaternion(yaw: float) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a rotation by `yaw` about z."""
    return 0.0, 0.0, math.sin(yaw / 2.0), math.cos(yaw / 2.0)


def quaternion_to_yaw(x: float, y: float, z: float, w: float) -> float:
    """Rotation about z of quaternion (x, y, z, w); NaN for a zero (invalid) quaternion."""
    if not x * x + y * y + z * z + w * w > 0:
        return math.nan
    return math.atan2(2.0 * (w * z + x * y), 1.0 - 2.0 * (y * y + z * z))


def stamp_to_ns(stamp: Any) -> int:
    """A ROS 2 (sec, nanosec) or ROS 1 (secs/sec, nsec) time message -> integer nanoseconds."""
    nanosec = getattr(stamp, "nanosec", getattr(stamp, "nsec", 0))
    return int(stamp.sec) * NS_PER_S + int(nanosec)


def ns_to_stamp(stamp_ns: int) -> tuple[int, int]:
    """Integer nanoseconds -> (sec, nanosec) for a ROS 2 time message."""
    return int(stamp_ns) // NS_PER_S, int(stamp_ns) % NS_PER_S
