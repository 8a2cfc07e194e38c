"""Raw-pixel baseline replay: the same bag, places and metrics as `replay`, with downsampled pixels as descriptors.

The baseline map holds the very keyframes of a DSFormer map (same place ids and positions), described with
`training.eval.baselines.RawPixels` from the mapping bag, so the only difference to the model's replay is the descriptor.
It produces candidates only: acceptance needs the localizer's score scale, so no fixes are reported.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_save, atomic_write_text
from dsformer_ros.common.config import to_dict
from dsformer_ros.maps.placemap import PlaceMap
from training.eval.baselines import RawPixels
from training.io.bag_reader import DriveLogReader
from training.replay.metrics import ReplayResults, compute_metrics, record_answer
from training.replay.replay import (
    FRAMES,
    REPORT,
    ReplayConfig,
    bag_frames,
    format_metrics,
    frame_count,
    json_default,
    load_ground_truth,
    recall_curve,
    write_figures,
)

log = logging.getLogger(__name__)


def describe_map_places(place_map: PlaceMap, mapping_bag: str | Path, image_topic: str, raw: RawPixels) -> np.ndarray:
    """Raw-pixel descriptors of the map's places, read from the mapping bag by image stamp, in map row order."""
    stamps = np.asarray(place_map.metadata.stamp_ns, dtype=np.int64)
    row_of = {int(s): r for r, s in enumerate(stamps)}
    if len(row_of) != stamps.size:
        raise ValueError("map places share image stamps; cannot find their frames in the mapping bag")
    out = np.zeros((stamps.size, raw.dim), dtype=np.float32)
    found = np.zeros(stamps.size, dtype=bool)
    with DriveLogReader(mapping_bag) as reader:
        for frame in tqdm(reader.image_frames(image_topic), total=reader.message_count(image_topic),
                          desc="raw pixels: map places", unit="frame"):
            row = row_of.get(frame.stamp_ns)
            if row is not None:
                out[row] = raw.describe_image(frame.decode())
                found[row] = True
    if not found.all():
        raise ValueError(f"{int((~found).sum())} map places have no image with their stamp in {mapping_bag}")
    return out


def replay_raw_pixels(cfg: ReplayConfig, model_map: PlaceMap, mapping_bag: str | Path,
                      raw: RawPixels | None = None) -> dict:
    """Replay `cfg.bag` against raw-pixel descriptors of `model_map`'s places; writes and returns the report."""
    raw = raw or RawPixels()
    started = time.perf_counter()
    descriptors = describe_map_places(model_map, mapping_bag, cfg.image_topic, raw)
    raw_map = PlaceMap.build(descriptors, model_map.metadata, model_variant=raw.variant,
                             checkpoint_sha256=raw.fingerprint, preprocessing=raw.preprocessing,
                             build_info={"tool": "replay_raw", "places_of": str(cfg.map)})
    n = frame_count(cfg)
    results = ReplayResults.empty_like(n, cfg.top_k)
    k = min(cfg.top_k, len(raw_map))
    t0 = time.perf_counter()
    for frame in tqdm(bag_frames(cfg), total=n, desc="replay raw pixels", unit="frame"):
        i = frame.index
        rgb = frame.decode()
        t = time.perf_counter()
        hits = raw_map.search(raw.describe_image(rgb)[None], k)
        results.latency_s[i] = time.perf_counter() - t
        results.stamp_ns[i] = frame.stamp_ns
        meta = hits.metadata(0)
        xy = np.column_stack([np.asarray(meta.easting), np.asarray(meta.northing)])
        record_answer(results, i, xy, hits.place_ids[0], hits.scores[0])
    replay_s = time.perf_counter() - t0
    results.gt_xy[:] = load_ground_truth(cfg, model_map).positions(results.stamp_ns)
    map_xy = np.column_stack([np.asarray(model_map.metadata.easting), np.asarray(model_map.metadata.northing)])
    metrics = compute_metrics(results, map_xy, cfg.radius_m, cfg.recall_ns)
    report = {
        "tool": "dsformer-vpr replay (raw-pixel baseline)", "name": cfg.name or "raw pixels", "mode": "offline",
        "bag": str(cfg.bag), "map": f"raw pixels of the places of {cfg.map}", "mapping_bag": str(mapping_bag),
        "method": {"name": raw.name, **to_dict(raw.config)}, "map_places": len(raw_map),
        "metrics": metrics, "recall_curve": recall_curve(results, map_xy, cfg.radius_m),
        "timing": {"replay_s": round(replay_s, 3), "total_s": round(time.perf_counter() - started, 3)},
        "config": to_dict(dataclasses.replace(cfg, checkpoint="")),
    }
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save(out_dir / FRAMES, results.save_npz, suffix=".npz")
    if cfg.figures:
        report["figures"] = write_figures(results, map_xy, report, out_dir)
    atomic_write_text(out_dir / REPORT, json.dumps(report, indent=2, default=json_default) + "\n")
    log.info("raw-pixel replay of %d frames: %s", len(results), format_metrics(metrics))
    return report
