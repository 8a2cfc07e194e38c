"""Synthetic place-recognition data sets: frames of one route driven twice, written as an index-folders data set.

`write_traversal_pair` gives the layout `dsformer-vpr eval --dataset-format folders` reads (and that the corridor set
of ../shared/data has): `ref/0000000.jpg ...` (the mapping drive), `query/...` (a second drive of the same route, e.g.
another lane, condition and sensor noise) and `ground_truth.csv` (query i matches ref i +- `tolerance` frames). Both
drives share town, route, speed and frame rate, so frame i of each lies at the same distance along the route; tests
and demos need no outside image data.
"""
from __future__ import annotations

import csv
import io
import logging
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from dsformer_ros.common.atomic import atomic_directory
from training.synth.config import SynthConfig
from training.synth.drive import camera_of, plan_drive, town_of
from training.synth.render import CONDITIONS, Renderer
from training.synth.routes import poses_at

log = logging.getLogger(__name__)

# fields that must agree between the two drives for frame indices to name the same place
_SHARED_FIELDS = ("seed", "blocks_x", "blocks_y", "route", "route_seed", "frames", "length_m", "speed_mps", "fps",
                  "width", "height", "hfov_deg", "camera_height_m")


def render_frames(cfg: SynthConfig) -> list[np.ndarray]:
    """The RGB frames (uint8 HxWx3) of the drive `cfg` describes, rendered in memory (no bag, no files)."""
    cfg.validate()
    town = town_of(cfg)
    renderer = Renderer(town, camera_of(cfg), CONDITIONS[cfg.condition], noise_seed=cfg.drive_seed)
    traj, times = plan_drive(cfg, town)
    poses = poses_at(traj, times, cfg.speed_mps, cfg.drive_seed, cfg.lateral_jitter_m, cfg.yaw_jitter_deg)
    return [renderer.render(pose, k) for k, pose in enumerate(poses)]


def write_traversal_pair(root: str | Path, ref: SynthConfig, query: SynthConfig, tolerance: int = 2) -> Path:
    """Render `ref` and `query` (one route, two drives) into root/ref, root/query and root/ground_truth.csv."""
    for name in _SHARED_FIELDS:
        if getattr(ref, name) != getattr(query, name):
            raise ValueError(f"{name}: the ref and query drives must share it (got {getattr(ref, name)!r} and "
                             f"{getattr(query, name)!r}) so that frame i of both lies at the same place")
    if tolerance < 0:
        raise ValueError(f"tolerance: must be >= 0 frames, got {tolerance}")
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"output {root} exists already; choose a new path or remove it")
    with atomic_directory(root) as tmp:
        counts = {}
        for folder, cfg in (("ref", ref), ("query", query)):
            frames = render_frames(cfg)
            (tmp / folder).mkdir()
            for k, rgb in enumerate(frames):
                _write_jpeg(tmp / folder / f"{k:07d}.jpg", rgb, cfg.jpeg_quality)
            counts[folder] = len(frames)
        (tmp / "ground_truth.csv").write_text(_ground_truth_csv(counts["query"], counts["ref"], tolerance))
    log.info("traversal pair: %d ref (%s) and %d query (%s) frames in %s", counts["ref"], ref.condition,
             counts["query"], query.condition, root)
    return root


def small_traversal_configs(frames: int = 111, width: int = 160, height: int = 120) -> tuple[SynthConfig, SynthConfig]:
    """A small pair like the corridor set: a day mapping drive and a dusk query drive (own jitter and noise), 1 m apart."""
    ref = SynthConfig(seed=7, blocks_x=3, blocks_y=3, route_seed=2, frames=frames, width=width, height=height,
                      fps=10.0, speed_mps=10.0, condition="day", drive_seed=1)
    query = replace(ref, condition="dusk", drive_seed=2)
    return ref, query


def _write_jpeg(path: Path, rgb: np.ndarray, quality: int) -> None:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {path}")
    path.write_bytes(buf.tobytes())


def _ground_truth_csv(num_queries: int, num_refs: int, tolerance: int) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["query_index", "correct_ref_indices"])
    for q in range(num_queries):
        refs = range(max(0, q - tolerance), min(num_refs, q + tolerance + 1))
        writer.writerow([q, " ".join(str(r) for r in refs)])
    return out.getvalue()
