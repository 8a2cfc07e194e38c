"""`bench-localizer`: the sequence localizer on a synthetic grid city of 10k to 1M places, frame by frame.

Per map size: a city (training/bench/city.py), its measurement model fitted on a central district of `fit_places`,
and one drive (training/bench/drive.py) whose top `candidates` places per frame come from exact search before the
localizer runs (not timed). Only `SequenceLocalizer.update()` is timed. Each frame is labelled with the situation the
update met: cold_start (until the first correct fix), tracking, lost (fog, until a correct fix again), relocalize
(after `reset()`, until a correct fix), after_kidnap (until a correct fix) and off_map (the car beyond the city).
Memory: the peak traced by tracemalloc while the localizer is built and drives the same drive again (a second,
untimed pass; numpy and Python allocations, not those of C++ libraries), divided by the places, and what it still
holds at the end; the map's own arrays (positions, headings, ids, descriptors) are made before and not counted.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import time
import tracemalloc
from pathlib import Path
from typing import Callable, NamedTuple

import faiss
import numpy as np
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError, from_dict
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.localization.sequence import SequenceConfig, SequenceLocalizer
from dsformer_ros.maps.similarity import SimilarityModel, fit_similarity, reference_rows
from training.bench.city import City, CityConfig, build_city, grid_for
from training.bench.drive import Drive, DriveConfig, make_drive
from training.replay.calibration import CHI2_2D_95

log = logging.getLogger(__name__)

CHI2_2D_999 = -2.0 * math.log(1.0 - 0.999)  # squared Mahalanobis radius of a 2D Gaussian's 99.9 % ellipse
STATES = ("cold_start", "tracking", "lost", "relocalize", "after_kidnap", "off_map")


@dataclasses.dataclass
class BenchLocalizerConfig:
    """Map sizes, the city, the drive, retrieval, the localizer's settings and where the rows go."""

    places: list[int] = dataclasses.field(default_factory=lambda: [10_000, 100_000, 1_000_000], metadata={"spec": {
        "description": "map sizes (places; the city's grid comes as near as it can; 10000000 when memory allows)"}})
    city: CityConfig = dataclasses.field(default_factory=CityConfig)
    drive: DriveConfig = dataclasses.field(default_factory=DriveConfig)
    candidates: int = setting(50, "places retrieved per frame (exact search, not timed)", low=1)
    fit_places: int = setting(20_000, "places of the central district the measurement model is fitted on", low=4)
    wrong_fix_m: float = setting(25.0, "a fix farther than this from the truth is wrong (m)", low=0.0)
    memory_pass: bool = setting(True, "drive a second time under tracemalloc for the localizer's peak memory")
    sequence: dict = dataclasses.field(default_factory=dict)  # SequenceConfig settings over its defaults
    threads: int = setting(2, "faiss threads of the exact search", low=1)
    json: str = setting("", "write the rows as a JSON list here")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        if not self.places or min(self.places) < 1:
            raise ConfigError(f"places: need at least one map size >= 1, got {self.places}")
        for places in self.places:
            grid_for(places, self.city)
        self.sequence_config()

    def sequence_config(self) -> SequenceConfig:
        """The localizer's settings: defaults with `sequence` over them."""
        try:
            return from_dict(SequenceConfig, self.sequence)
        except ConfigError as exc:
            raise ConfigError(f"sequence: {exc}") from None


@dataclasses.dataclass
class Frames:
    """What the localizer did on each frame of a drive: update time, places touched, the fix's distance from the
    truth (inf: no fix), its Mahalanobis distance against the fix's own x/y covariance (NaN: no fix) and the state."""

    ms: np.ndarray
    touched: np.ndarray
    error_m: np.ndarray
    normalised_error: np.ndarray
    state: list[str]


def fit_model(city: City, count: int) -> SimilarityModel:
    """The measurement model fitted on the `count` places of the city's central district."""
    rows = city.window(count)
    return fit_similarity(city.descriptors[rows], city.xy[rows], city.yaw[rows])


class Retrieval(NamedTuple):
    """Per frame: the top rows (F, k), their scores, and the reference level (median score against
    `reference_rows`)."""

    rows: np.ndarray
    scores: np.ndarray
    reference: np.ndarray


def retrieve(descriptors: np.ndarray, queries: np.ndarray, k: int) -> Retrieval:
    """Exact top-k of every query over the map's descriptors and its reference level."""
    scores, rows = faiss.knn(queries, descriptors, min(k, len(descriptors)), metric=faiss.METRIC_INNER_PRODUCT)
    reference = np.median(queries @ descriptors[reference_rows(len(descriptors))].T, axis=1)
    return Retrieval(rows.astype(np.int64), scores.astype(np.float64), reference.astype(np.float64))


def drive_localizer(loc: SequenceLocalizer, drive: Drive, retrieval: Retrieval, progress: str = "") -> Frames:
    """Feed the drive to the localizer (odometry, then one update per frame; reset where the drive says)."""
    rows, scores, reference = retrieval
    ms, touched = np.empty(drive.frames), np.empty(drive.frames)
    error, normalised, states = np.full(drive.frames, np.inf), np.full(drive.frames, np.nan), []
    for k in tqdm(range(drive.frames), desc=progress, unit="frame", disable=not progress, leave=False):
        if k == drive.reset_at:
            loc.reset()
        stamp = int(drive.stamp_ns[k])
        loc.add_odometry(stamp, *drive.odometry[k])
        start = time.perf_counter()
        decision = loc.update(stamp, rows[k], scores[k], float(reference[k]))
        ms[k] = (time.perf_counter() - start) * 1e3
        touched[k] = loc.status()["sequence_places_touched"]
        if decision.fix is not None:
            e = np.array([decision.fix.easting, decision.fix.northing]) - drive.xy[k]
            error[k] = math.hypot(*e)
            normalised[k] = math.sqrt(e @ np.linalg.solve(decision.fix.covariance[:2, :2], e))
        states.append(decision.state)
    return Frames(ms, touched, error, normalised, states)


def traced_bytes(make: Callable[[], SequenceLocalizer], drive: Drive, retrieval: Retrieval) -> tuple[int, int]:
    """Memory traced by tracemalloc while `make()` builds a localizer and it drives `drive`: still held at the end
    (the localizer alive) and the peak."""
    tracemalloc.start()
    try:
        loc = make()
        drive_localizer(loc, drive, retrieval)
        held, peak = tracemalloc.get_traced_memory()
        del loc
        return held, peak
    finally:
        tracemalloc.stop()


def label_frames(drive: Drive, error_m: np.ndarray, wrong_fix_m: float) -> list[str]:
    """The situation each update met (see the module docstring); a phase ends after the frame of a correct fix."""
    labels, phase = [], "cold_start"
    for k in range(drive.frames):
        if k == drive.reset_at:
            phase = "relocalize"
        if k == drive.kidnap_at:
            phase = "after_kidnap"
        if drive.fog[k]:
            phase = "lost"
        labels.append("off_map" if drive.beyond_m[k] > 0 else phase)
        if not drive.fog[k] and error_m[k] <= wrong_fix_m:
            phase = "tracking"
    return labels


def _first(mask: np.ndarray, start: int, stop: int | None = None) -> int | None:
    hits = np.flatnonzero(mask[start:stop])
    return start + int(hits[0]) if hits.size else None


def drive_figures(drive: Drive, frames: Frames, labels: list[str], wrong_fix_m: float) -> dict:
    """Distances to the first fix (cold start) and the first correct fix after the fog, the reset and the kidnap;
    wrong fixes, fixes off the map, the share of fixes inside their own 95 % ellipse and the count outside their
    99.9 % ellipse, and the share of tracking frames with a correct fix."""
    error = frames.error_m
    fixed, correct = np.isfinite(error), error <= wrong_fix_m
    d2 = frames.normalised_error[fixed] ** 2
    fog_end = int(np.flatnonzero(drive.fog)[-1]) + 1 if drive.fog.any() else None

    def distance(frame: int | None, since: int | None) -> float | None:
        if frame is None or since is None:
            return None
        return round(float(drive.distance_m[frame] - drive.distance_m[since]), 1)

    tracking = np.array([label == "tracking" for label in labels])
    return {
        "first_fix_m": distance(_first(fixed, 0, drive.reset_at), 0),
        "after_lost_m": distance(_first(correct, fog_end, drive.reset_at) if fog_end else None, fog_end),
        "relocalized_m": distance(_first(correct, drive.reset_at, drive.kidnap_at), drive.reset_at),
        "reconverged_m": distance(_first(correct, drive.kidnap_at), drive.kidnap_at),
        "fixes": int(fixed.sum()),
        "wrong_fixes": int((fixed & (error > wrong_fix_m)).sum()),
        "off_map_fixes": int((fixed & (drive.beyond_m > wrong_fix_m)).sum()),
        "inside_95": round(float((d2 <= CHI2_2D_95).mean()), 3) if fixed.any() else None,
        "outside_999": int((d2 > CHI2_2D_999).sum()),
        "tracking_fix_share": round(float(correct[tracking].mean()), 3) if tracking.any() else None,
        "drive_frames": drive.frames,
        "driven_m": round(float(drive.distance_m[-1]), 1),
    }


def _log_events(drive: Drive, frames: Frames, labels: list[str], wrong_fix_m: float) -> None:
    """Say what happened on the drive: where each situation began, the correct fix that ended it, and every wrong
    fix."""
    for k in range(drive.frames):
        if np.isfinite(frames.error_m[k]) and frames.error_m[k] > wrong_fix_m:
            log.warning("frame %d (%.0f m driven, %s): a wrong fix, %.0f m off (%.1f sigma)", k, drive.distance_m[k],
                        labels[k], frames.error_m[k], frames.normalised_error[k])
        if k > 0 and labels[k] == labels[k - 1] and k not in (drive.reset_at, drive.kidnap_at):
            continue
        if labels[k] == "tracking":
            log.info("frame %d (%.0f m driven): %s ends with a fix %.1f m off", k - 1, drive.distance_m[k - 1],
                     labels[k - 1], frames.error_m[k - 1])
            continue
        how = {drive.reset_at: " (localizer reset)", drive.kidnap_at: " (car carried off)"}.get(k, "")
        log.info("frame %d (%.0f m driven): %s begins%s; localizer %s", k, drive.distance_m[k], labels[k], how,
                 frames.state[k])


def _state_row(places: int, state: str, frames: Frames, mask: np.ndarray) -> dict:
    ms, touched = frames.ms[mask], frames.touched[mask]
    return {
        "places": places,
        "state": state,
        "frames": int(mask.sum()),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "max_ms": round(float(ms.max()), 3),
        "places_touched": round(float(touched.mean()), 1),
        "places_touched_max": int(touched.max()),
    }


def _memory_available() -> int:
    """MemAvailable of this machine in bytes (Linux /proc)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("MemAvailable not found in /proc/meminfo")


def bench_size(requested: int, cfg: BenchLocalizerConfig) -> list[dict]:
    """One map size: the city, its model, the drive, the timed pass and the memory pass; its rows."""
    need = requested * (4 * cfg.city.dim + 32) * 2  # descriptors and poses, and as much again while they are made
    if need > _memory_available():
        log.warning("skipping %d places: the city needs about %.1f GB, %.1f GB available", requested, need / 1e9,
                    _memory_available() / 1e9)
        return [{"places": requested, "state": "skipped", "reason": f"needs about {need / 1e9:.1f} GB"}]
    start = time.perf_counter()
    city = build_city(requested, cfg.city)
    log.info("city: %d places (%d x %d blocks of %.0f m, %d look-alike blocks) in %.1f s", city.places, city.nx,
             city.ny, cfg.city.block_m, city.appearance.lookalike_blocks, time.perf_counter() - start)
    start = time.perf_counter()
    model = fit_model(city, cfg.fit_places)
    log.info("measurement model on %d places in %.1f s: positives %.3f, negatives %.3f +- %.3f, place sigma %.1f m, "
             "alias excess %.3f", min(cfg.fit_places, city.places), time.perf_counter() - start, model.positive_mean,
             model.negative_mean, model.negative_std, model.place_sigma_m, model.alias_excess)
    drive = make_drive(city, cfg.drive)
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.drive.seed)
    queries = city.appearance.describe(drive.xy, drive.yaw, cfg.drive.query_noise, rng, fog=drive.fog)
    retrieval = retrieve(city.descriptors, queries, cfg.candidates)
    log.info("drive: %d frames, %.0f m; top %d of each by exact search in %.1f s", drive.frames,
             drive.distance_m[-1], cfg.candidates, time.perf_counter() - start)
    ids = np.arange(city.places, dtype=np.int64)
    sequence = cfg.sequence_config()

    def make() -> SequenceLocalizer:
        return SequenceLocalizer(city.xy, city.yaw, ids, model, sequence, floor_sigma_m=cfg.city.spacing_m / 2.0,
                                 position_sigma_m=0.0)

    frames = drive_localizer(make(), drive, retrieval, progress=f"{city.places} places")
    labels = label_frames(drive, frames.error_m, cfg.wrong_fix_m)
    _log_events(drive, frames, labels, cfg.wrong_fix_m)
    figures = drive_figures(drive, frames, labels, cfg.wrong_fix_m)
    log.info("drive figures: %s", figures)
    held, peak = traced_bytes(make, drive, retrieval) if cfg.memory_pass else (None, None)
    size = {"places_requested": requested, "bytes_per_place": round(peak / city.places, 1) if peak else None,
            "held_bytes_per_place": round(held / city.places, 1) if held else None}
    names = np.array(labels)
    rows = [_state_row(city.places, state, frames, names == state) for state in STATES if (names == state).any()]
    rows.append(_state_row(city.places, "all", frames, np.ones(drive.frames, dtype=bool)))
    return [{**row, **size, **figures} for row in rows]


def run_benchmark(cfg: BenchLocalizerConfig) -> list[dict]:
    """Every map size in turn; all rows."""
    faiss.omp_set_num_threads(cfg.threads)
    return [row for places in cfg.places for row in bench_size(places, cfg)]


def _cell(value, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def format_table(rows: list[dict]) -> str:
    """Per-state timings and touched places, then the drive's figures per map size, as fixed-width text."""
    head = (f"{'places':>9} {'state':<12} {'frames':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'touched':>9} "
            f"{'max touched':>11} {'B/place':>8} {'held B/pl':>9}")
    lines = [head, "-" * len(head)]
    for r in rows:
        if r["state"] == "skipped":
            lines.append(f"{r['places']:>9} skipped: {r['reason']}")
            continue
        lines.append(f"{r['places']:>9} {r['state']:<12} {r['frames']:>6} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                     f"{r['max_ms']:>8.2f} {r['places_touched']:>9.0f} {r['places_touched_max']:>11} "
                     f"{_cell(r['bytes_per_place'], '.0f'):>8} {_cell(r['held_bytes_per_place'], '.0f'):>9}")
    head = (f"{'places':>9} {'driven m':>8} {'first fix m':>11} {'after fog m':>11} {'reset->fix m':>12} "
            f"{'kidnap->fix m':>13} {'fixes':>6} {'wrong':>6} {'off map':>7} {'in 95%':>7} {'out 99.9%':>9} "
            f"{'tracking fixed':>14}")
    lines += ["", head, "-" * len(head)]
    for r in rows:
        if r["state"] == "all":
            lines.append(f"{r['places']:>9} {r['driven_m']:>8.0f} {_cell(r['first_fix_m'], '.0f'):>11} "
                         f"{_cell(r['after_lost_m'], '.0f'):>11} {_cell(r['relocalized_m'], '.0f'):>12} "
                         f"{_cell(r['reconverged_m'], '.0f'):>13} {r['fixes']:>6} {r['wrong_fixes']:>6} "
                         f"{r['off_map_fixes']:>7} {_cell(r['inside_95'], '.1%'):>7} {r['outside_999']:>9} "
                         f"{_cell(r['tracking_fix_share'], '.1%'):>14}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `bench-localizer` (everything else via --config / --set, e.g. --set city.block_m=80)."""
    add_config_flags(parser, BenchLocalizerConfig, ("places", "candidates", "fit_places", "memory_pass", "threads",
                                                    "json"))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark, print the table, write the JSON rows."""
    cfg = config_from_args(BenchLocalizerConfig, args)
    rows = run_benchmark(cfg)
    load = os.getloadavg()
    print(format_table(rows))
    print(f"load average at the end (1/5/15 min): {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} cores")
    if cfg.json:
        atomic_write_text(Path(cfg.json), json.dumps(rows, indent=2) + "\n")
        log.info("wrote %s", cfg.json)
    return 0
