"""`dsformer-vpr replay`: replay a drive log (images + GPS) against a map and measure what the localizer delivers.

Recall@N within `radius_m` of the bag's own GPS (interpolated to each image stamp), precision and availability of
accepted fixes, position-error and latency percentiles; `report.json`, per-frame `frames.npz` and PNG figures.
Two modes share the frame order, the localizer settings and the metric code, so they give the same recall:
- offline: the node's `Localizer` called directly from Python, frame by frame (fast model comparison);
- node: the real node started as a subprocess with use_sim_time; /clock and the bag's image messages are published
  one frame at a time, each after the previous frame's answer arrived (no frame is dropped).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_save, atomic_write_text
from dsformer_ros.common.cli import add_config_arguments, config_from_args
from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.common.utm import latlon_to_utm, utm_to_latlon
from dsformer_ros.localization.localizer import LocalizationResult, Localizer, LocalizerConfig
from dsformer_ros.maps.placemap import PlaceMap
from training.io.bag_reader import DriveLogReader, ImageFrame
from training.maps.track import Track, position_frames, track_from_fixes
from training.replay.metrics import ReplayResults, compute_metrics, has_positive, recall_at, record_answer, record_fix
from training.replay.through_node import replay_through_node

log = logging.getLogger(__name__)

REPORT = "report.json"
FRAMES = "frames.npz"


@dataclasses.dataclass
class AcceptanceSection:
    """When the localizer accepts a fix (the node's parameters of the same names); defaults are the node's."""

    score_threshold: float = LocalizerConfig.score_threshold
    agreement_radius_m: float = LocalizerConfig.agreement_radius_m
    min_agreeing: int = LocalizerConfig.min_agreeing
    temporal_window: int = LocalizerConfig.temporal_window
    temporal_radius_m: float = LocalizerConfig.temporal_radius_m


@dataclasses.dataclass
class ReplayConfig:
    """Configuration of `replay`: inputs, topics, mode, metric settings, node-mode pacing and the output folder."""

    bag: str = ""
    map: str = ""
    checkpoint: str = ""
    image_topic: str = "/camera/image_raw"
    gps_topic: str = "/gps/fix"
    mode: Literal["offline", "node"] = "offline"
    radius_m: float = 25.0
    recall_ns: list[int] = dataclasses.field(default_factory=lambda: [1, 5, 10])
    max_frames: int = 0  # 0: every frame of the bag
    rate: float = 0.0  # node mode: most frames per second published (0: as fast as the node answers)
    frame_timeout_s: float = 60.0  # node mode: longest wait for one frame's answer
    startup_timeout_s: float = 180.0  # node mode: longest wait for the node to load and answer a probe frame
    device: str = "auto"
    precision: str = "fp32"
    torch_threads: int = 0  # node mode: the node's torch threads (0: PyTorch's default)
    acceptance: AcceptanceSection = dataclasses.field(default_factory=AcceptanceSection)
    max_gps_std_m: float = 10.0  # GPS fixes with a larger horizontal std are not used as ground truth
    max_fix_gap_s: float = 1.5  # a frame needs a GPS fix this close in time on each side
    heading_baseline_m: float = 2.0
    name: str = ""  # label of this run in the report and figures ("" = the checkpoint's file name)
    out_dir: str = "runs/replay"
    figures: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        for name in ("bag", "map", "checkpoint", "out_dir"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: required")
        if self.mode not in ("offline", "node"):
            raise ConfigError(f"mode: {self.mode!r} is not 'offline' or 'node'")
        if not self.radius_m > 0:
            raise ConfigError(f"radius_m: must be > 0, got {self.radius_m}")
        if not self.recall_ns or min(self.recall_ns) < 1:
            raise ConfigError(f"recall_ns: need positive N values, got {self.recall_ns}")
        if self.max_frames < 0:
            raise ConfigError(f"max_frames: must be >= 0 (0: all), got {self.max_frames}")
        if self.rate < 0:
            raise ConfigError(f"rate: must be >= 0 (0: as fast as the node answers), got {self.rate}")
        for name in ("frame_timeout_s", "startup_timeout_s", "max_gps_std_m", "max_fix_gap_s", "heading_baseline_m"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be > 0, got {getattr(self, name)}")
        if self.torch_threads < 0:
            raise ConfigError(f"torch_threads: must be >= 0, got {self.torch_threads}")

    @property
    def top_k(self) -> int:
        """Candidates kept per frame: enough for the largest Recall@N."""
        return max(self.recall_ns)

    def localizer_config(self) -> LocalizerConfig:
        """The localizer settings both modes run with (the node gets them as parameters)."""
        cfg = LocalizerConfig(checkpoint=self.checkpoint, map_path=self.map, device=self.device,
                              precision=self.precision, top_k=self.top_k, **to_dict(self.acceptance))
        try:
            cfg.validate()
        except ConfigError as exc:
            raise ConfigError(f"acceptance.{exc}") from None
        return cfg


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


def load_ground_truth(cfg: ReplayConfig, place_map: PlaceMap) -> GroundTruth:
    """Read the bag's GPS fixes into a track in the map's UTM zone."""
    zone = int(np.asarray(place_map.metadata.zone_number)[0])
    letter = str(np.asarray(place_map.metadata.zone_letter)[0])
    with DriveLogReader(cfg.bag) as reader:
        track = track_from_fixes(reader.gps_fixes(cfg.gps_topic), cfg.max_gps_std_m, cfg.heading_baseline_m)
    if track.zone_number != zone:
        log.warning("the bag's GPS lies in UTM zone %d%s, the map in %d%s: ground truth is reprojected into the map's",
                    track.zone_number, track.zone_letter, zone, letter)
        lat, lon = utm_to_latlon(track.easting, track.northing, track.zone_number, track.zone_letter)
        track.easting, track.northing, _, _ = latlon_to_utm(lat, lon, force_zone=zone)
        track = dataclasses.replace(track, zone_number=zone, zone_letter=letter)
    log.info("ground truth: %d GPS fixes used of %d", track.counts.get("fixes_used", 0), track.counts.get("fixes_read", 0))
    return GroundTruth(track, zone, letter, cfg.max_fix_gap_s)


def bag_frames(cfg: ReplayConfig) -> Iterator[ImageFrame]:
    """The bag's image messages in bag order, at most `max_frames` (unreadable ones raise: a replay needs them all)."""
    with DriveLogReader(cfg.bag) as reader:
        reader.require_topic(cfg.image_topic, "image")
        for frame in reader.image_frames(cfg.image_topic):
            if cfg.max_frames and frame.index >= cfg.max_frames:
                return
            if frame.msg is None:
                raise ValueError(f"{cfg.bag}: image {frame.index} on {cfg.image_topic} is unreadable: {frame.error}")
            yield frame


def frame_count(cfg: ReplayConfig) -> int:
    """How many frames the replay will process."""
    with DriveLogReader(cfg.bag) as reader:
        n = reader.message_count(cfg.image_topic)
    return min(n, cfg.max_frames) if cfg.max_frames else n


def replay_offline(cfg: ReplayConfig, localizer: Localizer, n: int) -> ReplayResults:
    """Every frame through `Localizer.localize` in bag order (the node's code path without ROS)."""
    results = ReplayResults.empty_like(n, cfg.top_k)
    for frame in tqdm(bag_frames(cfg), total=n, desc="replay offline", unit="frame"):
        i = frame.index
        rgb = frame.decode()
        t0 = time.perf_counter()
        answer: LocalizationResult = localizer.localize(rgb)
        results.latency_s[i] = time.perf_counter() - t0
        results.stamp_ns[i] = frame.stamp_ns
        c = answer.candidates
        record_answer(results, i, c.xy, np.asarray(c.place_id), np.asarray(c.score))
        fix = answer.decision.fix
        if fix is not None:
            record_fix(results, i, fix.easting, fix.northing, fix.covariance)
    return results


def run_replay(cfg: ReplayConfig) -> dict:
    """Replay the bag in the configured mode, write report.json, frames.npz and figures; return the report."""
    cfg.validate()
    for name in ("bag", "map", "checkpoint"):
        if not Path(getattr(cfg, name)).exists():
            raise FileNotFoundError(f"{name}: {getattr(cfg, name)} does not exist")
    loc_cfg = cfg.localizer_config()
    out_dir = Path(cfg.out_dir)
    started = time.perf_counter()
    n = frame_count(cfg)
    if n == 0:
        raise ValueError(f"{cfg.bag}: no images on {cfg.image_topic}")
    extra: dict = {}
    if cfg.mode == "offline":
        localizer = Localizer.load(loc_cfg)
        place_map = localizer.place_map
        ground_truth = load_ground_truth(cfg, place_map)
        t0 = time.perf_counter()
        results = replay_offline(cfg, localizer, n)
        replay_s = time.perf_counter() - t0
        fingerprint = localizer.extractor.fingerprint
    else:
        place_map = PlaceMap.load(cfg.map)
        ground_truth = load_ground_truth(cfg, place_map)
        t0 = time.perf_counter()
        results, extra = replay_through_node(cfg, loc_cfg, bag_frames(cfg), n, out_dir)
        replay_s = time.perf_counter() - t0
        fingerprint = place_map.manifest.checkpoint_sha256
    results.gt_xy[:] = ground_truth.positions(results.stamp_ns)
    map_xy = np.column_stack([np.asarray(place_map.metadata.easting), np.asarray(place_map.metadata.northing)])
    metrics = compute_metrics(results, map_xy, cfg.radius_m, cfg.recall_ns)
    report = {
        "tool": "dsformer-vpr replay",
        "name": cfg.name or Path(cfg.checkpoint).stem,
        "mode": cfg.mode,
        "bag": str(cfg.bag),
        "map": str(cfg.map),
        "checkpoint": str(cfg.checkpoint),
        "checkpoint_sha256": fingerprint,
        "map_places": len(place_map),
        "map_keyframe_spacing_m": place_map.keyframe_spacing_m(),
        "localizer": {k: v for k, v in to_dict(loc_cfg).items() if k not in ("checkpoint", "map_path")},
        "metrics": metrics,
        "recall_curve": recall_curve(results, map_xy, cfg.radius_m),
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
    log.info("replay (%s) of %d frames: %s", cfg.mode, len(results), format_metrics(metrics))
    return report


def recall_curve(results: ReplayResults, map_xy: np.ndarray, radius_m: float) -> dict[str, float]:
    """Recall@N for every N up to the candidates kept (for the recall figure)."""
    evaluable = has_positive(results.gt_xy, map_xy, radius_m)
    return recall_at(results, evaluable, radius_m, range(1, results.cand_place_ids.shape[1] + 1))


def write_figures(results: ReplayResults, map_xy: np.ndarray, report: dict, out_dir: Path) -> list[str]:
    """trajectory.png, recall.png and errors.png in `out_dir`; returns their file names."""
    from training.eval.plots import plot_recall_curves
    from training.replay.plots import plot_error_histogram, plot_trajectory

    radius = report["metrics"]["radius_m"]
    evaluable = has_positive(results.gt_xy, map_xy, radius)
    title = f"{report['name']} ({report['mode']}): R@1 {100 * report['metrics']['recall'][str(1)]:.1f}%" \
        if "1" in report["metrics"]["recall"] else ""
    plot_trajectory(results, map_xy, evaluable, radius, out_dir / "trajectory.png", title=title)
    curve = {int(n): v for n, v in report["recall_curve"].items()}
    plot_recall_curves(out_dir / "recall.png", {report["name"]: curve}, title=f"Recall@N within {radius:g} m of GPS")
    plot_error_histogram(results, radius, out_dir / "errors.png")
    return ["trajectory.png", "recall.png", "errors.png"]


def format_metrics(metrics: dict) -> str:
    """One line: recall, fix precision/availability, latency."""
    recall = ", ".join(f"R@{n} {100 * v:.1f}%" for n, v in metrics["recall"].items())
    fix = metrics["fix"]
    lat = metrics["latency_ms"]
    return (f"{recall}; fixes {fix['accepted']} (precision {_pct(fix['precision'])}, availability "
            f"{_pct(fix['availability'])}); latency p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}")


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def json_default(value: object) -> object:
    """JSON encoding of numpy scalars and paths in reports."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `replay` (any config field also through --set key=value)."""
    parser.add_argument("bag", nargs="?", help="rosbag2 directory (or ROS 1 .bag) with images and NavSatFix")
    parser.add_argument("--map", help="map directory built with the same checkpoint (dsformer-vpr build-map)")
    parser.add_argument("--checkpoint", help="model checkpoint")
    parser.add_argument("--mode", choices=("offline", "node"))
    parser.add_argument("--image-topic")
    parser.add_argument("--gps-topic")
    parser.add_argument("--radius", type=float, help="metres from the bag's GPS that count as correct (default 25)")
    parser.add_argument("--max-frames", type=int, help="replay only the first N frames")
    parser.add_argument("--rate", type=float, help="node mode: most frames per second (0: as fast as answered)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--out-dir", help="report folder (report.json, frames.npz, PNG figures)")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run the replay and print its one-line summary."""
    cfg = config_from_args(
        ReplayConfig, args, bag=args.bag, map=args.map, checkpoint=args.checkpoint, mode=args.mode,
        image_topic=args.image_topic, gps_topic=args.gps_topic, radius_m=args.radius, max_frames=args.max_frames,
        rate=args.rate, device=args.device, out_dir=args.out_dir,
    )
    report = run_replay(cfg)
    print(f"{report['name']} ({cfg.mode}, {report['metrics']['frames']} frames): {format_metrics(report['metrics'])}")
    print(f"report: {Path(cfg.out_dir) / REPORT}")
    return 0
