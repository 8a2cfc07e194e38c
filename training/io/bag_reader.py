"""Streaming reads of drive logs with `rosbags` (no ROS install): rosbag2 (sqlite3, MCAP) and ROS 1 `.bag` files.

Image frames come one at a time with their header stamp and are decoded only on request, so memory stays bounded
however large the bag. GPS fixes (sensor_msgs/NavSatFix) and odometry (nav_msgs/Odometry) are small records.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from types import TracebackType
from typing import Any, Iterator

import numpy as np
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from dsformer_ros.common.geometry import quaternion_to_yaw, stamp_to_ns
from dsformer_ros.inference.image_codec import ImageDecodeError, decode_image_msg

log = logging.getLogger(__name__)

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
NAVSATFIX_TYPE = "sensor_msgs/msg/NavSatFix"
ODOMETRY_TYPE = "nav_msgs/msg/Odometry"
STATUS_NO_FIX = -1
COVARIANCE_TYPE_UNKNOWN = 0


class BagError(ValueError):
    """A drive log cannot be read as asked (missing file, unreadable bag, wrong message type)."""


class TopicNotFoundError(BagError):
    """The requested topic is not in the bag; the message lists the topics that are."""


@dataclasses.dataclass
class ImageFrame:
    """One image message: position in the topic's stream, header stamp, bag time, decoded on `decode()`."""

    index: int
    stamp_ns: int
    bag_time_ns: int
    msg: Any = dataclasses.field(repr=False)
    error: str = ""

    def decode(self) -> np.ndarray:
        """RGB uint8 (H, W, 3); ImageDecodeError when the payload is damaged or of an unsupported encoding."""
        if self.msg is None:
            raise ImageDecodeError(self.error or "message could not be deserialized")
        return decode_image_msg(self.msg)


@dataclasses.dataclass
class GpsFix:
    """One NavSatFix: stamp, status, lat/lon/alt and the horizontal standard deviation (m; NaN when unknown)."""

    stamp_ns: int
    status: int
    lat: float
    lon: float
    alt: float
    horizontal_std_m: float
    covariance_error: str = ""  # why a covariance of a known type cannot be used (negative or NaN variance)


@dataclasses.dataclass
class OdomPose:
    """One Odometry pose: stamp, frame, x/y (m) and yaw (rad, counter-clockwise from +x; NaN when not given)."""

    stamp_ns: int
    frame_id: str
    x: float
    y: float
    yaw: float
    horizontal_std_m: float
    covariance_error: str = ""


def horizontal_std(var_x: float, var_y: float) -> tuple[float, str]:
    """(std, "") of the larger horizontal variance (m^2); (NaN, why) when a variance is negative or NaN, which no
    receiver or filter can mean: such a fix is refused, neither read as exact nor as unknown."""
    if math.isnan(var_x) or math.isnan(var_y):
        return math.nan, f"NaN variance ({var_x}, {var_y})"
    if var_x < 0 or var_y < 0:
        return math.nan, f"negative variance ({var_x}, {var_y})"
    return math.sqrt(max(var_x, var_y)), ""


def resolve_bag_path(path: str | Path) -> Path:
    """The path AnyReader opens: a rosbag2 directory (also from its .db3/.mcap file) or a ROS 1 .bag file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"drive log {path} does not exist")
    if path.is_file() and path.suffix in (".db3", ".mcap") and (path.parent / "metadata.yaml").is_file():
        return path.parent
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        raise BagError(f"{path} is a directory without metadata.yaml: not a rosbag2 recording")
    if path.is_dir() and path.suffix == ".bag":
        raise BagError(
            f"{path} is a rosbag2 directory named like a ROS 1 file: rosbags reads every '*.bag' as ROS 1, "
            "so rename the directory (e.g. without the .bag suffix)"
        )
    if path.is_file() and path.suffix != ".bag":
        raise BagError(f"{path}: expected a rosbag2 directory or a ROS 1 .bag file")
    return path


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}" if str(exc).strip() else type(exc).__name__


class DriveLogReader:
    """An open drive log (context manager): topic listing, image frames and GPS/odometry records, all streamed."""

    def __init__(self, path: str | Path) -> None:
        self.path = resolve_bag_path(path)
        try:
            self._reader = AnyReader([self.path], default_typestore=get_typestore(Stores.ROS2_KILTED))
            self._reader.open()
        except Exception as exc:  # rosbags and its sqlite/MCAP layers raise assorted types for damaged files
            raise BagError(f"cannot open drive log {self.path} (damaged or not a bag?): {_one_line(exc)}") from None

    def __enter__(self) -> DriveLogReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the bag files."""
        self._reader.close()

    def topics(self) -> dict[str, str]:
        """Topic name -> message type of every connection in the bag."""
        return {c.topic: c.msgtype for c in self._reader.connections}

    def _messages(self, conns: list[Any], topic: str, **kwargs: Any) -> Iterator[tuple[Any, int, bytes]]:
        """rosbags' message stream; a damaged storage (corrupt sqlite page, broken MCAP chunk) ends it with one
        BagError naming the bag and the topic, whatever layer noticed."""
        stream = self._reader.messages(conns, **kwargs)
        while True:
            try:
                item = next(stream)
            except StopIteration:
                return
            except Exception as exc:  # apsw.CorruptError, MCAP decoding errors, ...
                raise BagError(f"drive log {self.path} is damaged while reading {topic}: {_one_line(exc)}") from None
            yield item

    def _connections(self, topic: str, types: tuple[str, ...], what: str) -> list[Any]:
        conns = [c for c in self._reader.connections if c.topic == topic]
        if not conns:
            listing = ", ".join(f"{t} ({m})" for t, m in sorted(self.topics().items())) or "none"
            raise TopicNotFoundError(f"{what} topic {topic!r} is not in {self.path}; topics: {listing}")
        bad = sorted({c.msgtype for c in conns if c.msgtype not in types})
        if bad:
            raise BagError(f"{what} topic {topic!r} carries {', '.join(bad)}; expected {' or '.join(types)}")
        return conns

    def require_topic(self, topic: str, what: str) -> None:
        """Raise TopicNotFoundError (listing the bag's topics) unless `topic` exists with the type `what` needs:
        'image', 'GPS' or 'odometry'."""
        types = {"image": IMAGE_TYPES, "GPS": (NAVSATFIX_TYPE,), "odometry": (ODOMETRY_TYPE,)}[what]
        self._connections(topic, types, what)

    def message_count(self, topic: str) -> int:
        """Number of messages on `topic` (from the bag index; 0 for a missing topic)."""
        return sum(c.msgcount for c in self._reader.connections if c.topic == topic)

    def image_frames(self, topic: str, start_ns: int | None = None, stop_ns: int | None = None,
                     first_index: int = 0) -> Iterator[ImageFrame]:
        """Image messages of `topic` in bag order with bag time in [start_ns, stop_ns); `index` counts from
        `first_index` (the number of image messages before start_ns). Undeserializable messages come with
        `msg=None`, their bag time as stamp and `error` set, so indices stay aligned."""
        conns = self._connections(topic, IMAGE_TYPES, "image")
        index = first_index
        for conn, bag_time, raw in self._messages(conns, topic, start=start_ns, stop=stop_ns):
            try:
                msg = self._reader.deserialize(raw, conn.msgtype)
                frame = ImageFrame(index, stamp_to_ns(msg.header.stamp), int(bag_time), msg)
            except Exception as exc:  # rosbags raises assorted errors on damaged CDR
                frame = ImageFrame(index, int(bag_time), int(bag_time), None, f"cannot deserialize {conn.msgtype}: {exc}")
            index += 1
            yield frame

    def _readable(self, topic: str, msgtype: str, what: str) -> Iterator[Any]:
        """Deserialized messages of one type on `topic` in bag order; damaged ones are logged and skipped."""
        for conn, _, raw in self._messages(self._connections(topic, (msgtype,), what), topic):
            try:
                yield self._reader.deserialize(raw, conn.msgtype)
            except Exception as exc:  # rosbags raises assorted errors on damaged CDR
                log.warning("skipping an unreadable %s message on %s: %s", msgtype, topic, exc)

    def gps_fixes(self, topic: str) -> Iterator[GpsFix]:
        """NavSatFix messages of `topic` in bag order (undeserializable ones are logged and skipped)."""
        for msg in self._readable(topic, NAVSATFIX_TYPE, "GPS"):
            cov = np.asarray(msg.position_covariance, dtype=np.float64)
            std, error = math.nan, ""
            if int(msg.position_covariance_type) != COVARIANCE_TYPE_UNKNOWN and cov.size == 9:
                std, error = horizontal_std(float(cov[0]), float(cov[4]))
            yield GpsFix(stamp_to_ns(msg.header.stamp), int(msg.status.status), float(msg.latitude), float(msg.longitude),
                         float(msg.altitude), std, error)

    def odometry(self, topic: str) -> Iterator[OdomPose]:
        """Odometry messages of `topic` in bag order (undeserializable ones are logged and skipped)."""
        for msg in self._readable(topic, ODOMETRY_TYPE, "odometry"):
            pose = msg.pose.pose
            cov = np.asarray(msg.pose.covariance, dtype=np.float64)
            std, error = math.nan, ""
            if cov.size == 36 and cov[[0, 7]].any():  # all zeros: not filled in
                std, error = horizontal_std(float(cov[0]), float(cov[7]))
            q = pose.orientation
            yield OdomPose(stamp_to_ns(msg.header.stamp), str(msg.header.frame_id), float(pose.position.x),
                           float(pose.position.y), quaternion_to_yaw(q.x, q.y, q.z, q.w), std, error)
