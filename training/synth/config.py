"""Configuration of `dsformer-vpr synth` (no CLI code: the renderer, the drive writer and the CLI share it)."""
from __future__ import annotations

from dataclasses import dataclass

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting
from training.synth.render import CONDITIONS
from training.synth.routes import ROUTE_KINDS


@dataclass
class SynthConfig:
    """Everything one synthetic drive depends on; the same config gives byte-identical frames."""

    seed: int = setting(0, "town seed")
    blocks_x: int = 5
    blocks_y: int = 5
    route: str = setting("random", "route kind", choices=ROUTE_KINDS)
    route_seed: int = setting(0, "which random route; mapping and query drives of the same places share it")
    condition: str = setting("day", "lighting and weather", choices=tuple(CONDITIONS))
    lane_offset_m: float = setting(1.75, "metres right of the street centreline (negative: left lane)")
    lateral_jitter_m: float = 0.2
    yaw_jitter_deg: float = 1.5
    frames: int = setting(0, "number of frames (0: as many as length_m allows)")
    length_m: float = setting(500.0, "route length in metres when frames is 0")
    speed_mps: float = 8.0
    fps: float = setting(10.0, "camera frame rate")
    gps_hz: float = 10.0
    gps_sigma_m: float = 1.5
    gps_no_fix_fraction: float = 0.0
    width: int = setting(640, "image width")
    height: int = setting(480, "image height")
    hfov_deg: float = setting(90.0, "horizontal field of view in degrees")
    camera_height_m: float = 1.6
    origin_lat: float = 48.1351
    origin_lon: float = 11.5820
    origin_alt_m: float = 520.0
    start_time_s: float = 1_700_000_000.0
    drive_seed: int = 0  # GPS noise, jitter and sensor noise of this drive
    out: str = setting("", "rosbag2 directory to create ('' = no bag)")
    storage: str = setting("mcap", "rosbag2 storage plugin", choices=("mcap", "sqlite3"))
    compressed: bool = setting(False, "sensor_msgs/CompressedImage (JPEG) instead of Image")
    jpeg_quality: int = 90
    image_topic: str = ""  # "" = /camera/image_raw (raw) or /camera/image_raw/compressed
    export_at: str = setting("", "folder of '@'-named JPEGs to create ('' = none)")

    def validate(self) -> None:
        """Raise ConfigError naming the bad field."""
        check_fields(self)
        if abs(self.lane_offset_m) + abs(self.lateral_jitter_m) * 2 > 3.0:
            raise ConfigError("lane_offset_m: |lane_offset_m| + 2*|lateral_jitter_m| must stay within 3 m of the centreline")
        for name in ("speed_mps", "fps", "gps_hz", "length_m"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.frames < 0:
            raise ConfigError(f"frames: must be >= 0, got {self.frames}")
        if self.gps_sigma_m < 0 or not 0.0 <= self.gps_no_fix_fraction <= 1.0:
            raise ConfigError("gps_sigma_m must be >= 0 and gps_no_fix_fraction within 0..1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConfigError(f"jpeg_quality: must be 1..100, got {self.jpeg_quality}")
        if not -80.0 <= self.origin_lat <= 84.0 or not -180.0 <= self.origin_lon <= 180.0:
            raise ConfigError("origin_lat/origin_lon: must lie within the UTM range (lat -80..84, lon -180..180)")
