"""Building the node's ROS messages from localization results (candidates cloud, pose, markers, diagnostics).

Candidates go out as a sensor_msgs/PointCloud2 with one point per candidate in rank order. UTM eastings (~500 km)
and northings (up to 10,000 km) need more than float32's 24-bit mantissa (float32 resolves only 0.5-1 m there), so
x, y and z are FLOAT64 fields; RViz reads FLOAT64 coordinates. yaw (ENU, rad; NaN when the map has no heading) and
score are FLOAT32, rank and place_id UINT32.
"""
from __future__ import annotations

import math
from typing import Iterable

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseWithCovarianceStamped
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from visualization_msgs.msg import Marker, MarkerArray

from dsformer_ros.common.geometry import yaw_to_quaternion
from dsformer_ros.localization.pose_estimate import Candidates, Fix

CANDIDATE_DTYPE = np.dtype(
    [
        ("x", "<f8"),
        ("y", "<f8"),
        ("z", "<f8"),
        ("yaw", "<f4"),
        ("score", "<f4"),
        ("rank", "<u4"),
        ("place_id", "<u4"),
    ]
)
_POINT_FIELD_TYPES = {"<f8": PointField.FLOAT64, "<f4": PointField.FLOAT32, "<u4": PointField.UINT32}


def candidate_fields() -> list[PointField]:
    """The PointField list describing CANDIDATE_DTYPE."""
    return [
        PointField(name=name, offset=offset, datatype=_POINT_FIELD_TYPES[dtype.str], count=1)
        for name, (dtype, offset) in CANDIDATE_DTYPE.fields.items()
    ]


def candidates_cloud(header: Header, candidates: Candidates) -> PointCloud2:
    """One point per candidate in rank order: x, y, z (UTM easting, northing, 0), yaw, score, rank, place_id."""
    n = len(candidates)
    points = np.zeros(n, dtype=CANDIDATE_DTYPE)
    points["x"] = candidates.easting
    points["y"] = candidates.northing
    points["yaw"] = candidates.yaw
    points["score"] = candidates.score
    points["rank"] = np.arange(n, dtype=np.uint32)
    points["place_id"] = np.asarray(candidates.place_id).astype(np.uint32)
    msg = PointCloud2()
    msg.header = header
    msg.height = 1
    msg.width = n
    msg.fields = candidate_fields()
    msg.is_bigendian = False
    msg.point_step = CANDIDATE_DTYPE.itemsize
    msg.row_step = CANDIDATE_DTYPE.itemsize * n
    msg.data = points.tobytes()
    msg.is_dense = True
    return msg


def read_candidates_cloud(msg: PointCloud2) -> np.ndarray:
    """The structured CANDIDATE_DTYPE array carried by a candidates cloud (checks the layout)."""
    names = [f.name for f in msg.fields]
    if names != list(CANDIDATE_DTYPE.names) or msg.point_step != CANDIDATE_DTYPE.itemsize:
        raise ValueError(f"not a candidates cloud: fields {names}, point_step {msg.point_step}")
    return np.frombuffer(bytes(msg.data), dtype=CANDIDATE_DTYPE, count=msg.width * msg.height)


def pose_message(header: Header, fix: Fix) -> PoseWithCovarianceStamped:
    """The fix as PoseWithCovarianceStamped: UTM position, yaw, row-major 6x6 covariance (x, y, z, roll, pitch, yaw)."""
    msg = PoseWithCovarianceStamped()
    msg.header = header
    msg.pose.pose.position.x = fix.easting
    msg.pose.pose.position.y = fix.northing
    msg.pose.pose.position.z = 0.0
    q = msg.pose.pose.orientation
    q.x, q.y, q.z, q.w = yaw_to_quaternion(fix.yaw)
    msg.pose.covariance = np.asarray(fix.covariance, dtype=np.float64).reshape(36)
    return msg


def candidate_markers(header: Header, candidates: Candidates, namespace: str = "vpr_candidates") -> MarkerArray:
    """Spheres (size and colour by score, best in green) with 'rank id score' labels; stale markers are deleted."""
    out = MarkerArray()
    clear = Marker()
    clear.header = header
    clear.ns = namespace
    clear.action = Marker.DELETEALL
    out.markers.append(clear)
    scores = np.asarray(candidates.score, dtype=np.float64)
    for rank in range(len(candidates)):
        score = float(scores[rank])
        strength = min(max(score, 0.0), 1.0)
        sphere = Marker()
        sphere.header = header
        sphere.ns = namespace
        sphere.id = 2 * rank
        sphere.type = Marker.SPHERE
        sphere.action = Marker.ADD
        sphere.pose.position.x = float(candidates.easting[rank])
        sphere.pose.position.y = float(candidates.northing[rank])
        sphere.pose.orientation.w = 1.0
        size = 1.0 + 2.0 * strength
        sphere.scale.x = sphere.scale.y = sphere.scale.z = size
        sphere.color.r, sphere.color.g, sphere.color.b = (0.1, 0.9, 0.1) if rank == 0 else (0.9, 0.6, 0.1)
        sphere.color.a = 0.4 + 0.6 * strength
        label = Marker()
        label.header = header
        label.ns = namespace
        label.id = 2 * rank + 1
        label.type = Marker.TEXT_VIEW_FACING
        label.action = Marker.ADD
        label.pose.position.x = sphere.pose.position.x
        label.pose.position.y = sphere.pose.position.y
        label.pose.position.z = size
        label.pose.orientation.w = 1.0
        label.scale.z = 1.0
        label.color.r = label.color.g = label.color.b = label.color.a = 1.0
        label.text = f"#{rank + 1} id {int(candidates.place_id[rank])} {score:.2f}"
        out.markers.extend([sphere, label])
    return out


DIAGNOSTIC_LEVELS = {"OK": DiagnosticStatus.OK, "WARN": DiagnosticStatus.WARN, "ERROR": DiagnosticStatus.ERROR}


def diagnostics_message(
    stamp: Time, name: str, hardware_id: str, level: str, message: str, values: Iterable[tuple[str, object]]
) -> DiagnosticArray:
    """A DiagnosticArray with one status; floats are written with 3 decimals, NaN as 'nan'."""
    status = DiagnosticStatus()
    status.level = DIAGNOSTIC_LEVELS[level]
    status.name = name
    status.message = message
    status.hardware_id = hardware_id
    status.values = [KeyValue(key=key, value=_text(value)) for key, value in values]
    msg = DiagnosticArray()
    msg.header.stamp = stamp
    msg.status = [status]
    return msg


def _text(value: object) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)
