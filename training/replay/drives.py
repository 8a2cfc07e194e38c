"""One drive's evaluation, shared by the demo, `sweep` and `study`: describe its frames once, localize them with
any localizer settings, summarise what the fixes were worth.

The model does not depend on the localizer's settings, so a drive is described once and replayed through as many
localizers as asked (single-frame and sequence, each value of a swept setting) in bag order with its odometry by
stamp, as `replay` does offline. The summary classifies the drive by its ground truth (on the map, kidnapped,
leaving the map) and counts its fixes, wrong fixes (beyond the radius) and fixes off the map; `summarise` pools
drives into one row.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from dsformer_ros.localization.localizer import Localizer
from training.io.bag_reader import DriveLogReader, OdomPose
from training.replay.calibration import find_jump
from training.replay.config import ReplayConfig
from training.replay.metrics import ReplayResults
from training.replay.replay import (
    OdometryFeed,
    bag_frames,
    bag_odometry,
    decodable,
    frame_count,
    load_ground_truth,
    record_result,
)


@dataclasses.dataclass
class DescribedDrive:
    """One bag, described once: its frames' descriptors and stamps, its odometry and its ground truth."""

    bag: str
    frames: int  # image messages, bad ones included (unanswered)
    index: np.ndarray  # (M,) frame numbers of the decodable frames
    stamp_ns: np.ndarray  # (F,) every frame's stamp
    descriptors: np.ndarray  # (M, D) float32
    describe_s: np.ndarray  # (M,) seconds the model took per frame
    odometry: list[OdomPose]
    gt_xy: np.ndarray  # (F, 2)


def describe_drive(cfg: ReplayConfig, localizer: Localizer) -> DescribedDrive:
    """Decode and describe every frame of `cfg.bag` with the localizer's model, one frame at a time as the node
    does; read its odometry (for a sequence `cfg`) and its ground truth."""
    with DriveLogReader(cfg.bag) as reader:
        reader.require_topic(cfg.image_topic, "image")
        n = frame_count(cfg, reader)
        if n == 0:
            raise ValueError(f"{cfg.bag}: no images on {cfg.image_topic}")
        ground_truth = load_ground_truth(cfg, reader, localizer.place_map)
        odometry = bag_odometry(cfg, reader)
        stamps = np.zeros(n, dtype=np.int64)
        bad: list[tuple[int, int]] = []
        index, descriptors, seconds = [], [], []
        for frame, rgb in tqdm(decodable(bag_frames(cfg, reader), bad), total=n,
                               desc=f"describe {Path(cfg.bag).name}", unit="frame"):
            stamps[frame.index] = frame.stamp_ns
            index.append(frame.index)
            t0 = time.perf_counter()
            descriptors.append(localizer.method.describe([rgb])[0])
            seconds.append(time.perf_counter() - t0)
        for i, stamp in bad:
            stamps[i] = stamp
    return DescribedDrive(cfg.bag, n, np.asarray(index, dtype=np.int64), stamps,
                          np.asarray(descriptors, dtype=np.float32).reshape(len(index), -1),
                          np.asarray(seconds, dtype=np.float64), odometry, ground_truth.positions(stamps))


def localize_drive(drive: DescribedDrive, localizer: Localizer, top_k: int) -> ReplayResults:
    """The drive's descriptors through a fresh `localizer` in bag order, odometry by stamp; each frame's latency is
    its model time plus the localizer's (what `Localizer.localize` takes)."""
    results = ReplayResults.empty_like(drive.frames, top_k)
    results.stamp_ns[:] = drive.stamp_ns
    feed = OdometryFeed(localizer, drive.odometry)
    for row, i in enumerate(drive.index):
        stamp = int(drive.stamp_ns[i])
        feed.until(stamp)
        t0 = time.perf_counter()
        answer = localizer.localize_descriptor(drive.descriptors[row:row + 1], stamp)
        record_result(results, int(i), stamp, answer, time.perf_counter() - t0 + float(drive.describe_s[row]))
    results.gt_xy[:] = drive.gt_xy
    return results


def drive_summary(results: ReplayResults, metrics: dict[str, Any], radius_m: float) -> dict[str, Any]:
    """What a drive's fixes were worth: its kind (on_map, kidnapped, off_map), fixes, wrong fixes (beyond the
    radius), the largest error, fixes off the map and the kidnap's aftermath."""
    cal = metrics["calibration"]
    kidnap = cal.get("kidnap")
    kind = "kidnapped" if find_jump(results) is not None else "off_map" if cal["frames_off_map"] else "on_map"
    error = np.linalg.norm(results.fix_xy - results.gt_xy, axis=1)
    fixes = results.accepted & np.isfinite(results.gt_xy).all(axis=1)
    return {
        "kind": kind,
        "frames_with_gps": metrics["frames_with_gps"],
        "fixes": int(fixes.sum()),
        "availability": metrics["fix"]["availability"],
        "wrong_fixes": int((fixes & (error > radius_m)).sum()),
        "max_error_m": cal["max_error_m"],
        "fixes_off_map": cal["fixes_off_map"],
        "kidnap_max_error_after_m": kidnap.get("max_error_after_m") if kidnap else None,
        "kidnap_recovered_after_m": kidnap.get("recovered_after_m") if kidnap else None,
    }


def summarise(drives: list[dict[str, Any]], radius_m: float) -> dict[str, Any]:
    """Drives pooled into one row: availability over the on-map drives' frames, their precision and largest error,
    kidnapped drives with a fix beyond the radius after the jump, wrong fixes and fixes off the map of all drives."""
    on_map = [d for d in drives if d["kind"] == "on_map"]
    kidnapped = [d for d in drives if d["kind"] == "kidnapped"]
    off_map = [d for d in drives if d["kind"] == "off_map"]
    frames = sum(d["frames_with_gps"] for d in on_map)
    fixes = sum(d["fixes"] for d in on_map)
    wrong = sum(d["wrong_fixes"] for d in on_map)
    errors = [d["max_error_m"] for d in on_map if d["max_error_m"] is not None]
    return {
        "on_map_drives": len(on_map),
        "availability": fixes / frames if frames else None,
        "precision": (fixes - wrong) / fixes if fixes else None,
        "max_error_m": max(errors) if errors else None,
        "kidnapped_drives": len(kidnapped),
        "kidnapped_with_fix_beyond_radius": sum((d["kidnap_max_error_after_m"] or 0.0) > radius_m for d in kidnapped),
        "off_map_drives": len(off_map),
        "off_map_drives_with_fix": sum(d["fixes_off_map"] > 0 for d in off_map),
        "fixes_off_map": sum(d["fixes_off_map"] for d in drives),
        "wrong_fixes": sum(d["wrong_fixes"] for d in drives),
        "drives_with_wrong_fix": sum(d["wrong_fixes"] > 0 for d in drives),
    }
