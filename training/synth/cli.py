"""`dsformer-vpr synth`: render a synthetic drive through a procedural town into a rosbag2 and/or an '@' image folder."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

from dsformer_ros.common.cli import add_config_arguments, config_from_args
from dsformer_ros.common.config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class SynthConfig:
    """Everything one synthetic drive depends on; the same config gives byte-identical frames."""

    seed: int = 0  # town seed
    blocks_x: int = 5
    blocks_y: int = 5
    route: str = "random"  # random | serpentine
    route_seed: int = 0  # which random route; mapping and query drives of the same places share it
    condition: str = "day"  # day | dusk | night | fog | winter
    lane_offset_m: float = 1.75  # right of the street centreline (negative: left lane)
    lateral_jitter_m: float = 0.2
    yaw_jitter_deg: float = 1.5
    frames: int = 0  # 0: as many as length_m allows
    length_m: float = 500.0
    speed_mps: float = 8.0
    fps: float = 10.0
    gps_hz: float = 10.0
    gps_sigma_m: float = 1.5
    gps_no_fix_fraction: float = 0.0
    width: int = 640
    height: int = 480
    hfov_deg: float = 90.0
    camera_height_m: float = 1.6
    origin_lat: float = 48.1351
    origin_lon: float = 11.5820
    origin_alt_m: float = 520.0
    start_time_s: float = 1_700_000_000.0
    drive_seed: int = 0  # GPS noise, jitter and sensor noise of this drive
    output: str = ""  # rosbag2 directory to create ("" = no bag)
    storage: str = "mcap"  # mcap | sqlite3
    compressed: bool = False
    jpeg_quality: int = 90
    image_topic: str = ""  # "" = /camera/image_raw (raw) or /camera/image_raw/compressed
    export_at: str = ""  # folder of '@'-named JPEGs to create ("" = none)
    odometry_topic: str = "/odom/wheel"  # drifting wheel odometry in frame "odom" ("" = none)
    odometry_hz: float = 20.0
    odometry_scale_error: float = 0.03  # the wheels measure 3 % too far
    odometry_heading_drift_deg_per_m: float = 0.05
    odometry_distance_noise: float = 0.01  # relative, per odometry step
    odometry_yaw_noise_deg: float = 0.05  # per odometry step
    kidnap_at_m: float = 0.0  # > 0: after this many metres the car is teleported (the odometry does not see it)
    kidnap_skip_m: float = 250.0  # how far along the route it reappears
    off_map_after_m: float = 0.0  # > 0: after this many metres the drive leaves the route for streets it never uses

    def validate(self) -> None:
        """Raise ConfigError naming the bad field."""
        from training.synth.render import CONDITIONS
        from training.synth.routes import ROUTE_KINDS

        if self.condition not in CONDITIONS:
            raise ConfigError(f"condition: {self.condition!r} is not one of {', '.join(CONDITIONS)}")
        if self.route not in ROUTE_KINDS:
            raise ConfigError(f"route: {self.route!r} is not one of {', '.join(ROUTE_KINDS)}")
        if self.storage not in ("mcap", "sqlite3"):
            raise ConfigError(f"storage: must be mcap or sqlite3, got {self.storage!r}")
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
        for name in ("odometry_hz", "odometry_distance_noise", "odometry_yaw_noise_deg", "kidnap_at_m",
                     "kidnap_skip_m", "off_map_after_m"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if self.kidnap_at_m > 0 and self.off_map_after_m > 0:
            raise ConfigError("kidnap_at_m and off_map_after_m: choose one special drive, not both")
        if not -80.0 <= self.origin_lat <= 84.0 or not -180.0 <= self.origin_lon <= 180.0:
            raise ConfigError("origin_lat/origin_lon: must lie within the UTM range (lat -80..84, lon -180..180)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `synth`; every SynthConfig field is also settable with --set key=value."""
    add_config_arguments(parser)
    parser.add_argument("--seed", type=int, help="town seed")
    parser.add_argument("--route", choices=("random", "serpentine"), help="route kind")
    parser.add_argument("--route-seed", type=int, help="which random route")
    parser.add_argument("--condition", help="day, dusk, night, fog or winter")
    parser.add_argument("--lane-offset", type=float, help="metres right of the street centreline")
    parser.add_argument("--frames", type=int, help="number of frames (0: from --length)")
    parser.add_argument("--length", type=float, help="route length in metres when --frames is 0")
    parser.add_argument("--fps", type=float, help="camera frame rate")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--fov", type=float, help="horizontal field of view in degrees")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"))
    parser.add_argument("--compressed", action="store_true", default=None, help="sensor_msgs/CompressedImage (JPEG)")
    parser.add_argument("--output", "-o", help="rosbag2 directory to create")
    parser.add_argument("--export-at", help="folder of '@'-named JPEGs to create")
    parser.add_argument("--odometry-topic", help="drifting wheel odometry topic ('' = none; default /odom/wheel)")
    parser.add_argument("--kidnap-at", type=float, help="teleport the car after this many metres (kidnapped drive)")
    parser.add_argument("--off-map-after", type=float, help="leave the route after this many metres (off-map drive)")
    parser.add_argument("--benchmark", type=int, metavar="N", help="only time rendering N frames and print fps")


def run(args: argparse.Namespace) -> int:
    """Render the configured drive (or benchmark the renderer)."""
    from training.synth.drive import benchmark_config, write_drive

    cfg = config_from_args(
        SynthConfig, args, seed=args.seed, route=args.route, route_seed=args.route_seed, condition=args.condition,
        lane_offset_m=args.lane_offset, frames=args.frames, length_m=args.length, fps=args.fps, width=args.width,
        height=args.height, hfov_deg=args.fov, storage=args.storage, compressed=args.compressed, output=args.output,
        export_at=args.export_at, odometry_topic=args.odometry_topic, kidnap_at_m=args.kidnap_at,
        off_map_after_m=args.off_map_after,
    )
    if args.benchmark:
        render_fps, jpeg_fps = benchmark_config(cfg, args.benchmark)
        print(f"{cfg.width}x{cfg.height} {cfg.condition}: {render_fps:.1f} frames/s rendering, {jpeg_fps:.1f} with JPEG encoding")
        return 0
    if not cfg.output and not cfg.export_at:
        raise ConfigError("nothing to write: give --output BAG and/or --export-at DIR")
    summary = write_drive(cfg)
    print(summary)
    return 0
