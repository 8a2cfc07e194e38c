"""`dsformer-vpr replay`: replay a drive log (images + GPS) against a map and measure what the localizer delivers.

Recall@N within `radius_m` of the bag's own GPS (interpolated to each image stamp), precision and availability of
accepted fixes, position-error and latency percentiles, and whether the fixes can be trusted (covariance coverage,
first fix, kidnap recovery, fixes off the map: `calibration`); `report.json`, per-frame `frames.npz` and PNG figures.
With `localizer: sequence` and an `odometry_topic`, the bag's odometry reaches the localizer by stamp as in the node.
Any descriptor method runs the same pipeline (`method: dsformer | raw_pixels`, with a map built by that method).
Two modes share the frame order, the localizer settings and the metric code, so they give the same recall:
- offline: the node's `Localizer` called directly from Python, frame by frame (fast model comparison);
- node: the real node started as a subprocess with use_sim_time; /clock and the bag's image messages are published
  one frame at a time, each after the previous frame's answer arrived (no frame is dropped).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_save, atomic_write_text
from dsformer_ros.common.config import to_dict
from dsformer_ros.common.utm import latlon_to_utm, utm_to_latlon
from dsformer_ros.inference.image_codec import MAX_PIXELS, ImageDecodeError, decode_image_msg
from dsformer_ros.inference.methods import RawPixels
from dsformer_ros.localization.localizer import LocalizationResult, Localizer
from dsformer_ros.maps.placemap import PlaceMap
from training.io.bag_reader import DriveLogReader, ImageFrame, OdomPose
from training.maps.track import Track, position_frames, track_from_fixes
from training.replay.calibration import calibration_metrics
from training.replay.config import ReplayConfig
from training.replay.metrics import ReplayResults, compute_metrics, has_positive, recall_at, record_answer, record_fix
from training.replay.through_node import replay_through_node
from training.reports import num, pct

log = logging.getLogger(__name__)

REPORT = "report.json"
FRAMES = "frames.npz"
_MAX_LOGGED_BAD = 10


@dataclasses.dataclass
class GroundTruth:
    """The bag's GPS track projected into the map's UTM zone, interpolated per image stamp."""

    track: Track
    zone_number: int
    zone_letter: str
    max_fix_gap_s: float

    def positions(self, stamps_ns: np.ndarray) -> np.ndarray:
        """(F, 2) easting, northing in the map's zone; NaN where no GPS fix is close enough in time."""
        pos = position_frames(self.track, np.asarray(stamps_ns, dtype=np.int64), self.max_fix_gap_s)
        xy = np.column_stack([pos.easting, pos.northing])
        if self.track.zone_number != self.zone_number:
            ok = pos.ok
            xy[ok, 0], xy[ok, 1], _, _ = latlon_to_utm(pos.lat[ok], pos.lon[ok], force_zone=self.zone_number)
        return xy


def load_ground_truth(cfg: ReplayConfig, reader: DriveLogReader, place_map: PlaceMap) -> GroundTruth:
    """Read the bag's GPS fixes into a track in the map's UTM zone."""
    zone = int(np.asarray(place_map.metadata.zone_number)[0])
    letter = str(np.asarray(place_map.metadata.zone_letter)[0])
    track = track_from_fixes(reader.gps_fixes(cfg.gps_topic), cfg.max_gps_std_m, cfg.heading_baseline_m)
    if track.zone_number != zone:
        log.warning("the bag's GPS lies in UTM zone %d%s, the map in %d%s: ground truth is reprojected into the map's",
                    track.zone_number, track.zone_letter, zone, letter)
        lat, lon = utm_to_latlon(track.easting, track.northing, track.zone_number, track.zone_letter)
        track.easting, track.northing, _, _ = latlon_to_utm(lat, lon, force_zone=zone)
        track = dataclasses.replace(track, zone_number=zone, zone_letter=letter)
    log.info("ground truth: %d GPS fixes used of %d", track.counts.get("fixes_used", 0), track.counts.get("fixes_read", 0))
    return GroundTruth(track, zone, letter, cfg.max_fix_gap_s)


def bag_frames(cfg: ReplayConfig, reader: DriveLogReader) -> Iterator[ImageFrame]:
    """The bag's image messages in bag order, at most `max_frames` (unreadable ones too: `decodable` skips them)."""
    for frame in reader.image_frames(cfg.image_topic):
        if cfg.max_frames and frame.index >= cfg.max_frames:
            return
        yield frame


def decodable(frames: Iterator[ImageFrame], bad: list[tuple[int, int]], max_pixels: int = MAX_PIXELS
              ) -> Iterator[tuple[ImageFrame, np.ndarray]]:
    """(frame, RGB) for the frames that decode as the node decodes them; (index, stamp) of each bad one (unreadable
    message, damaged or oversized image) is appended to `bad`, the first few are logged, and the replay goes on."""
    for frame in frames:
        try:
            yield frame, decode_image_msg(frame.msg, max_pixels) if frame.msg is not None else frame.decode()
        except ImageDecodeError as exc:
            bad.append((frame.index, frame.stamp_ns))
            if len(bad) <= _MAX_LOGGED_BAD:
                log.warning("skipping bad frame %d (stamp %d): %s", frame.index, frame.stamp_ns, exc)


def frame_count(cfg: ReplayConfig, reader: DriveLogReader) -> int:
    """How many frames the replay will process."""
    n = reader.message_count(cfg.image_topic)
    return min(n, cfg.max_frames) if cfg.max_frames else n


def open_localizer(cfg: ReplayConfig) -> Localizer:
    """The localizer of an offline replay: the checkpoint's DSFormer, or the configured baseline method."""
    method = RawPixels(cfg.raw_pixels) if cfg.method == "raw_pixels" else None
    return Localizer.load(cfg.localizer_config(), method)


def bag_odometry(cfg: ReplayConfig, reader: DriveLogReader) -> list[OdomPose]:
    """The odometry the localizer gets, sorted by stamp ([] without an odometry topic or in single-frame mode)."""
    if not cfg.odometry_topic or cfg.localizer != "sequence":
        return []
    reader.require_topic(cfg.odometry_topic, "odometry")
    odometry = sorted(reader.odometry(cfg.odometry_topic), key=lambda o: o.stamp_ns)
    log.info("odometry: %d messages on %s", len(odometry), cfg.odometry_topic)
    return odometry


class OdometryFeed:
    """Hands the localizer the odometry stamped up to each frame's stamp, before the frame, as the node receives it."""

    def __init__(self, localizer: Localizer, odometry: Sequence[OdomPose]) -> None:
        self.localizer = localizer
        self.odometry = odometry
        self.next = 0

    def until(self, stamp_ns: int) -> None:
        """Feed every odometry pose not yet fed whose stamp is at most `stamp_ns`."""
        while self.next < len(self.odometry) and self.odometry[self.next].stamp_ns <= stamp_ns:
            o = self.odometry[self.next]
            self.localizer.add_odometry(o.stamp_ns, o.x, o.y, o.yaw)
            self.next += 1


def record_result(results: ReplayResults, i: int, stamp_ns: int, answer: LocalizationResult, latency_s: float) -> None:
    """Store frame i's answer: stamp, latency, ranked candidates and the fix, if any."""
    results.latency_s[i] = latency_s
    results.stamp_ns[i] = stamp_ns
    c = answer.candidates
    record_answer(results, i, c.xy, np.asarray(c.place_id), np.asarray(c.score))
    fix = answer.decision.fix
    if fix is not None:
        record_fix(results, i, fix.easting, fix.northing, fix.yaw, fix.covariance)


def replay_offline(cfg: ReplayConfig, localizer: Localizer, frames: Iterator[ImageFrame], n: int,
                   bad: list[tuple[int, int]], odometry: Sequence[OdomPose] = ()) -> ReplayResults:
    """Every decodable frame through `Localizer.localize` in bag order (the node's code path without ROS); bad
    frames are counted in `bad` and left unanswered; odometry reaches the localizer by stamp (`OdometryFeed`)."""
    results = ReplayResults.empty_like(n, cfg.top_k)
    feed = OdometryFeed(localizer, odometry)
    for frame, rgb in tqdm(decodable(frames, bad), total=n, desc=f"replay offline ({cfg.method}, {cfg.localizer})",
                           unit="frame"):
        feed.until(frame.stamp_ns)
        t0 = time.perf_counter()
        answer = localizer.localize(rgb, frame.stamp_ns)
        record_result(results, frame.index, frame.stamp_ns, answer, time.perf_counter() - t0)
    return results


def place_xy(place_map: PlaceMap) -> np.ndarray:
    """(N, 2) UTM easting, northing of the map's places."""
    return np.column_stack([np.asarray(place_map.metadata.easting), np.asarray(place_map.metadata.northing)])


def replay_metrics(results: ReplayResults, place_map: PlaceMap, radius_m: float, recall_ns: Sequence[int]) -> dict:
    """The report's metrics of filled-in results against the map: recall, fixes, latency and `calibration`."""
    map_xy = place_xy(place_map)
    metrics = compute_metrics(results, map_xy, np.asarray(place_map.metadata.place_id), radius_m, recall_ns)
    metrics["calibration"] = calibration_metrics(results, map_xy, radius_m)
    return metrics


def run_replay(cfg: ReplayConfig) -> dict:
    """Replay the bag in the configured mode, write report.json, frames.npz and figures; return the report.

    The bag is opened once: its GPS fixes give the ground truth, its image messages the frames.
    """
    cfg.validate()
    for name in ("bag", "map") + (("checkpoint",) if cfg.method == "dsformer" else ()):
        if not Path(getattr(cfg, name)).exists():
            raise FileNotFoundError(f"{name}: {getattr(cfg, name)} does not exist")
    loc_cfg = cfg.localizer_config()
    out_dir = Path(cfg.out)
    started = time.perf_counter()
    extra: dict = {}
    with DriveLogReader(cfg.bag) as reader:
        reader.require_topic(cfg.image_topic, "image")
        n = frame_count(cfg, reader)
        if n == 0:
            raise ValueError(f"{cfg.bag}: no images on {cfg.image_topic}")
        if cfg.mode == "offline":
            localizer = open_localizer(cfg)
            place_map = localizer.place_map
            fingerprint = localizer.method.fingerprint
        else:
            place_map = PlaceMap.load(cfg.map, verify_checksums=False)  # positions only: the node checks the map
            fingerprint = place_map.manifest.checkpoint_sha256
        ground_truth = load_ground_truth(cfg, reader, place_map)
        odometry = bag_odometry(cfg, reader)
        t0 = time.perf_counter()
        bad: list[tuple[int, int]] = []
        if cfg.mode == "offline":
            results = replay_offline(cfg, localizer, bag_frames(cfg, reader), n, bad, odometry)
        else:
            compressed = reader.topics()[cfg.image_topic].endswith("CompressedImage")
            frames = (frame for frame, _ in decodable(bag_frames(cfg, reader), bad))
            results, extra = replay_through_node(cfg, loc_cfg, frames, n, compressed, out_dir, odometry)
        for i, stamp in bad:  # unanswered, but placed in time: with GPS they count as misses in both modes
            results.stamp_ns[i] = stamp
        if bad:
            log.warning("%d of %d frames could not be decoded and were skipped", len(bad), n)
        replay_s = time.perf_counter() - t0
    results.gt_xy[:] = ground_truth.positions(results.stamp_ns)
    map_xy, map_ids = place_xy(place_map), np.asarray(place_map.metadata.place_id)
    metrics = replay_metrics(results, place_map, cfg.radius_m, cfg.recall_ns)
    report = {
        "tool": "dsformer-vpr replay",
        "name": cfg.name or (Path(cfg.checkpoint).stem if cfg.method == "dsformer" else cfg.method),
        "mode": cfg.mode,
        "method": cfg.method,
        "bag": str(cfg.bag),
        "map": str(cfg.map),
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": fingerprint,
        "map_places": len(place_map),
        "map_keyframe_spacing_m": place_map.keyframe_spacing_m(),
        "localizer": {k: v for k, v in to_dict(loc_cfg).items() if k not in ("checkpoint", "map_path")},
        "metrics": metrics,
        "frames_bad": len(bad),
        "recall_curve": recall_at(results, map_xy, map_ids, cfg.radius_m, range(1, cfg.top_k + 1)),
        "timing": {"replay_s": round(replay_s, 3), "total_s": round(time.perf_counter() - started, 3),
                   "frames_per_s": round(len(results) / replay_s, 3) if replay_s > 0 else None},
        **extra,
        "config": to_dict(cfg),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(out_dir / FRAMES, results.save_npz, suffix=".npz")
    if cfg.figures:
        report["figures"] = write_figures(results, map_xy, report, out_dir)
    atomic_write_text(out_dir / REPORT, json.dumps(report, indent=2, default=json_default) + "\n")
    log.info("replay (%s, %s) of %d frames: %s", cfg.mode, cfg.method, len(results), format_metrics(metrics))
    return report


def write_figures(results: ReplayResults, map_xy: np.ndarray, report: dict, out_dir: Path) -> list[str]:
    """trajectory.png, recall.png and errors.png in `out_dir`; returns their file names."""
    from training.eval.plots import plot_recall_curves
    from training.replay.plots import plot_error_histogram, plot_trajectory
    from training.replay.sigma_plot import plot_error_vs_sigma

    radius = report["metrics"]["radius_m"]
    evaluable = has_positive(results.gt_xy, map_xy, radius)
    title = f"{report['name']} ({report['mode']}): R@1 {100 * report['metrics']['recall'][str(1)]:.1f}%" \
        if "1" in report["metrics"]["recall"] else ""
    plot_trajectory(results, map_xy, evaluable, radius, out_dir / "trajectory.png", title=title)
    curve = {int(n): v for n, v in report["recall_curve"].items()}
    plot_recall_curves(out_dir / "recall.png", {report["name"]: curve}, title=f"Recall@N within {radius:g} m of GPS")
    plot_error_histogram(results, radius, out_dir / "errors.png")
    plot_error_vs_sigma({report["name"]: (results.fix_sigma_m, np.linalg.norm(results.fix_xy - results.gt_xy, axis=1))},
                        out_dir / "error_vs_sigma.png", radius)
    return ["trajectory.png", "recall.png", "errors.png", "error_vs_sigma.png"]


def format_metrics(metrics: dict) -> str:
    """One line: recall, fix precision/availability, latency."""
    recall = ", ".join(f"R@{n} {pct(v)} %" for n, v in metrics["recall"].items())
    fix = metrics["fix"]
    lat = metrics["latency_ms"]
    line = (f"{recall}; fixes {fix['accepted']} (precision {pct(fix['precision'])} %, availability "
            f"{pct(fix['availability'])} %); latency p50 {num(lat['p50'], 0)} ms, p95 {num(lat['p95'], 0)} ms")
    cal = metrics.get("calibration")
    if cal and cal["fixes_with_covariance"]:
        line += (f"; inside 95% ellipse {pct(cal['inside_95'])} %, 1 sigma {pct(cal['inside_1sigma'])} %, median "
                 f"normalised error {num(cal['median_normalised_error'], 2)}, largest error {num(cal['max_error_m'])} m")
    return line


def json_default(value: object) -> object:
    """JSON encoding of numpy scalars and paths in reports."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
