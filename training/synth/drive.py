"""One synthetic drive: render the frames of a route and write them as a rosbag2 drive log and/or an '@' image folder.

Frames: local metres (x east, y north) map to UTM by adding the origin's easting/northing (the local frame is the UTM
grid). Odometry ground truth is in frame "utm" (x = easting, y = northing, yaw counter-clockwise from east); '@' names
carry the ground-truth position and heading as a compass bearing (degrees clockwise from north: 0 north, 90 east).
Besides the ground truth the bag gets a drifting wheel odometry topic (frame "odom", see `odometry`). Two special
drives test localization: a kidnapped drive (`kidnap_at_m`: the car is teleported `kidnap_skip_m` further along the
route, the odometry carries on without the jump) and an off-map drive (`off_map_after_m`: the route is left for
streets it never uses).
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from dsformer_ros.common.atomic import OutputPathError, atomic_directory, check_output_directory
from dsformer_ros.common.geometry import NS_PER_S, yaw_to_heading
from dsformer_ros.common.utm import latlon_to_utm, utm_to_latlon
from training.io.at_names import AtName, format_at_name
from training.io.bag_writer import STATUS_FIX, STATUS_NO_FIX, DriveLogWriter
from training.synth.config import SynthConfig
from training.synth.odometry import WheelOdometryModel, wheel_odometry
from training.synth.render import CONDITIONS, Camera, Pose, Renderer, benchmark
from training.synth.routes import Trajectory, build_trajectory, detour_route, make_route, poses_at
from training.synth.town import Town, TownSpec, build_town

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GeoOrigin:
    """The UTM coordinates of the town's local origin."""

    easting: float
    northing: float
    zone_number: int
    zone_letter: str

    @classmethod
    def from_latlon(cls, lat: float, lon: float) -> GeoOrigin:
        """Origin at WGS84 (lat, lon) degrees."""
        e, n, z, letter = latlon_to_utm(lat, lon)
        return cls(float(e), float(n), int(z), str(letter))

    def latlon(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """WGS84 degrees of local points (x east, y north metres)."""
        return utm_to_latlon(self.easting + np.asarray(x), self.northing + np.asarray(y), self.zone_number, self.zone_letter)


@dataclass(frozen=True)
class DriveSummary:
    """What a drive wrote."""

    frames: int
    gps_fixes: int
    length_m: float
    bag: str
    export_at: str

    def __str__(self) -> str:
        return (f"{self.frames} frames, {self.gps_fixes} GPS messages, {self.length_m:.0f} m"
                + (f", bag {self.bag}" if self.bag else "") + (f", '@' folder {self.export_at}" if self.export_at else ""))


def town_of(cfg: SynthConfig) -> Town:
    """The town a config drives in."""
    return build_town(TownSpec(seed=cfg.seed, blocks_x=cfg.blocks_x, blocks_y=cfg.blocks_y))


def camera_of(cfg: SynthConfig) -> Camera:
    """The camera of a config."""
    return Camera(width=cfg.width, height=cfg.height, hfov_deg=cfg.hfov_deg, height_m=cfg.camera_height_m)


def plan_drive(cfg: SynthConfig, town: Town) -> tuple[Trajectory, np.ndarray]:
    """The trajectory and the image times (s from the start) of a config's drive."""
    needed = cfg.frames / cfg.fps * cfg.speed_mps if cfg.frames else cfg.length_m
    skip = cfg.kidnap_skip_m if cfg.kidnap_at_m > 0 else 0.0
    nodes = make_route(town, cfg.route, cfg.route_seed, (needed + skip) * 1.05 + 60.0)
    if cfg.off_map_after_m > 0:
        nodes = detour_route(town, nodes, cfg.off_map_after_m, needed * 1.05 + 60.0, cfg.drive_seed)
    traj = build_trajectory(town, nodes, cfg.lane_offset_m)
    if cfg.frames:
        n = cfg.frames
    else:
        n = int(min(cfg.length_m, traj.length - skip) / cfg.speed_mps * cfg.fps)
    if n < 1:
        raise ValueError("the drive has no frames: raise frames or length_m")
    times = np.arange(n) / cfg.fps
    return traj, times


def route_times(cfg: SynthConfig, times_s: np.ndarray) -> np.ndarray:
    """Times at which the route is sampled: the drive's times, shifted by the kidnap's skip after the kidnap."""
    times_s = np.asarray(times_s, dtype=np.float64)
    if cfg.kidnap_at_m <= 0:
        return times_s
    after = times_s * cfg.speed_mps >= cfg.kidnap_at_m
    return times_s + np.where(after, cfg.kidnap_skip_m / cfg.speed_mps, 0.0)


def drive_poses(cfg: SynthConfig, traj: Trajectory, times_s: np.ndarray) -> list[Pose]:
    """Camera poses of the drive at `times_s` (s from the start), the kidnap included."""
    return poses_at(traj, route_times(cfg, times_s), cfg.speed_mps, cfg.drive_seed, cfg.lateral_jitter_m,
                    cfg.yaw_jitter_deg)


def odometry_model(cfg: SynthConfig) -> WheelOdometryModel:
    """The wheel odometry errors of a config."""
    return WheelOdometryModel(scale_error=cfg.odometry_scale_error,
                              heading_drift_deg_per_m=cfg.odometry_heading_drift_deg_per_m,
                              distance_noise=cfg.odometry_distance_noise, yaw_noise_deg=cfg.odometry_yaw_noise_deg,
                              seed=cfg.drive_seed)


def write_drive(cfg: SynthConfig) -> DriveSummary:
    """Render the drive of `cfg` into the bag at cfg.out and/or the '@' folder cfg.export_at (both must not exist)."""
    cfg.validate()
    for target in (cfg.out, cfg.export_at):
        if target and Path(target).exists():
            raise OutputPathError(f"output {target} exists already; choose a new path or remove it")
        if target:
            check_output_directory(target)
    town = town_of(cfg)
    cam = camera_of(cfg)
    cond = CONDITIONS[cfg.condition]
    renderer = Renderer(town, cam, cond, noise_seed=cfg.drive_seed)
    traj, times = plan_drive(cfg, town)
    poses = drive_poses(cfg, traj, times)
    origin = GeoOrigin.from_latlon(cfg.origin_lat, cfg.origin_lon)
    t0 = int(round(cfg.start_time_s * NS_PER_S))
    gps_times = np.arange(0.0, times[-1] + 1e-9, 1.0 / cfg.gps_hz)
    gps_poses = drive_poses(cfg, traj, gps_times)
    events = [(int(round(t * NS_PER_S)), 0, k) for k, t in enumerate(times)] + [(int(round(t * NS_PER_S)), 1, k) for k, t in enumerate(gps_times)]
    odom = np.zeros((0, 3))
    if cfg.odometry_topic and cfg.odometry_hz > 0:
        odom_times = np.arange(0.0, times[-1] + 1e-9, 1.0 / cfg.odometry_hz)
        odom = wheel_odometry(drive_poses(cfg, traj, odom_times), odom_times, odometry_model(cfg), 3.0 * cfg.speed_mps)
        events += [(int(round(t * NS_PER_S)), 2, k) for k, t in enumerate(odom_times)]
    events.sort()
    rng = np.random.default_rng([cfg.drive_seed, 31])
    sigma = cfg.gps_sigma_m
    log.info("drive: %s route %d, %s, %d frames over %.0f m", cfg.route, cfg.route_seed, cfg.condition, len(times), times[-1] * cfg.speed_mps)
    topic = cfg.image_topic or ("/camera/image_raw/compressed" if cfg.compressed else "/camera/image_raw")
    with contextlib.ExitStack() as stack:  # on error neither the bag nor the folder appears
        at_dir = stack.enter_context(atomic_directory(cfg.export_at)) if cfg.export_at else None
        writer = (
            stack.enter_context(DriveLogWriter(cfg.out, cfg.storage, topic, cfg.compressed, jpeg_quality=cfg.jpeg_quality))
            if cfg.out else None
        )
        for dt_ns, what, k in tqdm(events, desc=f"synth {cfg.condition}", unit="msg"):
            stamp = t0 + dt_ns
            if what == 2:
                if writer is not None:
                    writer.write_odometry(stamp, "odom", "base_link", odom[k, 0], odom[k, 1], 0.0, odom[k, 2],
                                          (0.01, 0.01, 1e-4, 1e-6, 1e-6, 1e-4), topic=cfg.odometry_topic)
                continue
            if what == 1:
                pose = gps_poses[k]
                if writer is None:
                    continue
                if rng.random() < cfg.gps_no_fix_fraction:
                    writer.write_navsatfix(stamp, math.nan, math.nan, math.nan, (sigma**2, sigma**2, (2 * sigma) ** 2), STATUS_NO_FIX)
                    continue
                ex, ny, nz = rng.normal(0.0, 1.0, size=3) * np.array([sigma, sigma, 2 * sigma])
                lat, lon = origin.latlon(pose.x + ex, pose.y + ny)
                writer.write_navsatfix(stamp, float(lat), float(lon), cfg.origin_alt_m + nz, (sigma**2, sigma**2, (2 * sigma) ** 2), STATUS_FIX)
                continue
            pose = poses[k]
            rgb = renderer.render(pose, k)
            if writer is not None:
                writer.write_image(stamp, rgb)
                writer.write_camera_info(stamp, cam.width, cam.height, cam.fx, cam.fx, cam.cx, cam.cy)
                writer.write_odometry(
                    stamp, "utm", "base_link", origin.easting + pose.x, origin.northing + pose.y, 0.0, pose.yaw,
                    (1e-4, 1e-4, 1e-4, 1e-6, 1e-6, 1e-6),
                )
            if at_dir is not None:
                _write_at_image(at_dir, origin, pose, rgb, stamp, k, cfg)
    return DriveSummary(len(times), len(gps_times), float(times[-1] * cfg.speed_mps), cfg.out, cfg.export_at)


def _write_at_image(folder: Path, origin: GeoOrigin, pose: Pose, rgb: np.ndarray, stamp: int, k: int, cfg: SynthConfig) -> None:
    lat, lon = origin.latlon(pose.x, pose.y)
    name = format_at_name(
        AtName(
            easting=origin.easting + pose.x, northing=origin.northing + pose.y, zone_number=origin.zone_number,
            zone_letter=origin.zone_letter, lat=float(lat), lon=float(lon),
            pano_id=f"synth{cfg.seed}-{cfg.route}{cfg.route_seed}-{cfg.condition}-{k:06d}",
            heading_deg=float(yaw_to_heading(pose.yaw)), timestamp=str(stamp), note=cfg.condition,
        )
    )
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for frame {k}")
    (folder / name).write_bytes(buf.tobytes())


def benchmark_config(cfg: SynthConfig, n_frames: int) -> tuple[float, float]:
    """(frames/s rendering only, frames/s rendering + JPEG encoding) over the first `n_frames` poses of the drive."""
    town = town_of(cfg)
    renderer = Renderer(town, camera_of(cfg), CONDITIONS[cfg.condition], noise_seed=cfg.drive_seed)
    traj, _ = plan_drive(cfg, town)
    times = np.arange(n_frames) / cfg.fps
    times = times[route_times(cfg, times) * cfg.speed_mps <= traj.length]
    poses = drive_poses(cfg, traj, times)
    return benchmark(renderer, poses), benchmark(renderer, poses, cfg.jpeg_quality)
