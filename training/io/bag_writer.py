"""Write real rosbag2 drive logs (MCAP or sqlite3) without ROS: camera images, camera info, GPS fixes and odometry.

Messages use the ROS 2 Kilted type store of `rosbags`; header stamps equal the bag receive time given per call.
The bag is written beside `path` and renamed into place on close, so a failed run leaves no half bag.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import cv2
import numpy as np
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore

from dsformer_ros.common.atomic import OutputPathError
from dsformer_ros.common.geometry import ns_to_stamp, yaw_to_quaternion

log = logging.getLogger(__name__)

STORAGES: dict[str, StoragePlugin] = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
STATUS_FIX = 0
STATUS_NO_FIX = -1


class BagExistsError(OutputPathError):
    """The output bag path exists already; bags are never overwritten."""


class DriveLogWriter:
    """A rosbag2 writer for drive logs (context manager); one connection per topic, created on first use."""

    def __init__(
        self,
        path: str | Path,
        storage: str = "mcap",
        image_topic: str = "/camera/image_raw",
        compressed: bool = False,
        gps_topic: str = "/gps/fix",
        odom_topic: str = "/odom/ground_truth",
        camera_info_topic: str = "/camera/camera_info",
        frame_id: str = "camera",
        jpeg_quality: int = 90,
    ) -> None:
        self.path = Path(path)
        if storage not in STORAGES:
            raise ValueError(f"bag storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        if self.path.exists():
            raise BagExistsError(f"bag output {self.path} exists already; choose a new path or remove it")
        if not 1 <= int(jpeg_quality) <= 100:
            raise ValueError(f"jpeg_quality must be 1..100, got {jpeg_quality}")
        self.storage = storage
        self.image_topic = image_topic
        self.compressed = bool(compressed)
        self.gps_topic = gps_topic
        self.odom_topic = odom_topic
        self.camera_info_topic = camera_info_topic
        self.frame_id = frame_id
        self.jpeg_quality = int(jpeg_quality)
        self.typestore = get_typestore(Stores.ROS2_KILTED)
        self._types = self.typestore.types
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_dir = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent))
        self._writer = Writer(self._tmp_dir / self.path.name, version=9, storage_plugin=STORAGES[storage])
        try:
            self._writer.open()
        except BaseException:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            raise
        self._connections: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._closed = False

    def __enter__(self) -> DriveLogWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            self.discard()

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        stamp_ns = int(stamp_ns)
        if stamp_ns < 0:
            raise ValueError(f"stamp_ns must be >= 0, got {stamp_ns}")
        sec, nanosec = ns_to_stamp(stamp_ns)
        time = self._types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        return self._types["std_msgs/msg/Header"](stamp=time, frame_id=frame_id)

    def write_raw(self, topic: str, msgtype: str, stamp_ns: int, msg: Any) -> None:
        """Serialize any rosbags message object onto `topic` at bag time `stamp_ns`, creating the connection once."""
        if self._closed:
            raise RuntimeError(f"bag {self.path} is closed")
        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = conn
        elif conn.msgtype != msgtype:
            raise ValueError(f"topic {topic} already carries {conn.msgtype}, cannot write {msgtype}")
        self._writer.write(conn, int(stamp_ns), self.typestore.serialize_cdr(msg, msgtype))
        self._counts[topic] = self._counts.get(topic, 0) + 1

    def write_image(self, stamp_ns: int, rgb: np.ndarray) -> None:
        """Write one uint8 HxWx3 RGB frame: raw sensor_msgs/Image rgb8, or CompressedImage 'jpeg' when compressed."""
        rgb = np.asarray(rgb)
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(f"image must be uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
        header = self._header(stamp_ns, self.frame_id)
        if self.compressed:
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
            if not ok:
                raise RuntimeError("JPEG encoding failed")
            msgtype = "sensor_msgs/msg/CompressedImage"
            msg = self._types[msgtype](header=header, format="jpeg", data=buf.reshape(-1))
        else:
            h, w = rgb.shape[:2]
            msgtype = "sensor_msgs/msg/Image"
            msg = self._types[msgtype](
                header=header, height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3,
                data=np.ascontiguousarray(rgb).reshape(-1),
            )
        self.write_raw(self.image_topic, msgtype, stamp_ns, msg)

    def write_camera_info(self, stamp_ns: int, width: int, height: int, fx: float, fy: float, cx: float, cy: float) -> None:
        """Write a pinhole sensor_msgs/CameraInfo (plumb_bob, zero distortion)."""
        t = self._types
        msgtype = "sensor_msgs/msg/CameraInfo"
        msg = t[msgtype](
            header=self._header(stamp_ns, self.frame_id),
            height=int(height),
            width=int(width),
            distortion_model="plumb_bob",
            d=np.zeros(5, dtype=np.float64),
            k=np.array([fx, 0.0, cx, 0.0, fy, cy, 0.0, 0.0, 1.0], dtype=np.float64),
            r=np.eye(3, dtype=np.float64).reshape(-1),
            p=np.array([fx, 0.0, cx, 0.0, 0.0, fy, cy, 0.0, 0.0, 0.0, 1.0, 0.0], dtype=np.float64),
            binning_x=0,
            binning_y=0,
            roi=t["sensor_msgs/msg/RegionOfInterest"](x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )
        self.write_raw(self.camera_info_topic, msgtype, stamp_ns, msg)

    def write_navsatfix(
        self,
        stamp_ns: int,
        lat: float,
        lon: float,
        alt: float,
        cov_diag_m2: tuple[float, float, float],
        status: int = STATUS_FIX,
    ) -> None:
        """Write a sensor_msgs/NavSatFix with a known diagonal covariance (m^2, east/north/up); status FIX=0, NO_FIX=-1."""
        if len(cov_diag_m2) != 3:
            raise ValueError(f"cov_diag_m2 must have 3 values (east, north, up), got {cov_diag_m2!r}")
        t = self._types
        msgtype = "sensor_msgs/msg/NavSatFix"
        cov = np.zeros(9, dtype=np.float64)
        cov[[0, 4, 8]] = [float(c) for c in cov_diag_m2]
        status_cls = t["sensor_msgs/msg/NavSatStatus"]
        msg = t[msgtype](
            header=self._header(stamp_ns, "gps"),
            status=status_cls(status=int(status), service=status_cls.SERVICE_GPS),
            latitude=float(lat),
            longitude=float(lon),
            altitude=float(alt),
            position_covariance=cov,
            position_covariance_type=t[msgtype].COVARIANCE_TYPE_DIAGONAL_KNOWN,
        )
        self.write_raw(self.gps_topic, msgtype, stamp_ns, msg)

    def write_odometry(
        self,
        stamp_ns: int,
        frame_id: str,
        child_frame_id: str,
        x: float,
        y: float,
        z: float,
        yaw: float,
        cov_diag: tuple | None = None,
        topic: str = "",
    ) -> None:
        """Write a nav_msgs/Odometry pose (yaw in radians about +z, counter-clockwise from +x); cov_diag has 6 values.

        `topic` "" writes to the writer's odom_topic (ground truth); another name, e.g. a wheel odometry topic.
        """
        t = self._types
        cov = np.zeros(36, dtype=np.float64)
        if cov_diag is not None:
            if len(cov_diag) != 6:
                raise ValueError(f"cov_diag must have 6 values (x, y, z, roll, pitch, yaw), got {cov_diag!r}")
            cov[[0, 7, 14, 21, 28, 35]] = [float(c) for c in cov_diag]
        pose = t["geometry_msgs/msg/Pose"](
            position=t["geometry_msgs/msg/Point"](x=float(x), y=float(y), z=float(z)),
            orientation=t["geometry_msgs/msg/Quaternion"](**dict(zip("xyzw", yaw_to_quaternion(yaw)))),
        )
        vec = t["geometry_msgs/msg/Vector3"]
        twist = t["geometry_msgs/msg/Twist"](linear=vec(x=0.0, y=0.0, z=0.0), angular=vec(x=0.0, y=0.0, z=0.0))
        msgtype = "nav_msgs/msg/Odometry"
        msg = t[msgtype](
            header=self._header(stamp_ns, frame_id),
            child_frame_id=child_frame_id,
            pose=t["geometry_msgs/msg/PoseWithCovariance"](pose=pose, covariance=cov),
            twist=t["geometry_msgs/msg/TwistWithCovariance"](twist=twist, covariance=np.zeros(36, dtype=np.float64)),
        )
        self.write_raw(topic or self.odom_topic, msgtype, stamp_ns, msg)

    def discard(self) -> None:
        """Abandon the bag: nothing appears at `path` (used when writing failed)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
        finally:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)

    def close(self) -> None:
        """Finish the bag (index and metadata.yaml) and move it to `path` in one rename; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._writer.close()
            if self.path.exists():
                raise BagExistsError(f"bag output {self.path} appeared while writing; not overwriting it")
            os.replace(self._tmp_dir / self.path.name, self.path)
        finally:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
        log.info("wrote bag %s (%s): %s", self.path, self.storage,
                 ", ".join(f"{k} x{v}" for k, v in sorted(self._counts.items())) or "no messages")
