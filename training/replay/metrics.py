"""Per-frame replay results and their metrics: Recall@N within D metres of GPS, accepted-fix precision, latency.

Both replay modes (offline through the Python API, node on the ROS graph) fill the same `ReplayResults`, so their
numbers come from one computation and are directly comparable.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dsformer_ros.localization.pose_estimate import UNKNOWN_YAW_VARIANCE
from training.eval.recall import positives_within_radius, recall_at_n

PERCENTILES = (50, 90, 95, 99)


@dataclasses.dataclass
class ReplayResults:
    """Column arrays over F frames; K = candidates kept per frame (padded with place id -1 and NaN)."""

    stamp_ns: np.ndarray  # (F,) int64 image header stamps
    gt_xy: np.ndarray  # (F, 2) float64 UTM easting/northing from the bag's GPS track; NaN where unknown
    cand_place_ids: np.ndarray  # (F, K) int64, -1 = no candidate
    cand_xy: np.ndarray  # (F, K, 2) float64 UTM of each candidate place
    cand_scores: np.ndarray  # (F, K) float32
    answered: np.ndarray  # (F,) bool: the localizer answered this frame (node mode: candidates arrived in time)
    accepted: np.ndarray  # (F,) bool: an accepted fix was produced
    fix_xy: np.ndarray  # (F, 2) float64 UTM of the accepted fix, NaN otherwise
    fix_sigma_m: np.ndarray  # (F,) float64 1-sigma horizontal position uncertainty of the fix, NaN otherwise
    fix_cov_xy: np.ndarray  # (F, 2, 2) float64 x/y covariance of the fix, NaN otherwise
    fix_yaw: np.ndarray  # (F,) float64 ENU yaw of the fix (rad), NaN without a fix or where its yaw is unknown
    latency_s: np.ndarray  # (F,) float64 seconds from image to answer, NaN where unanswered

    def __post_init__(self) -> None:
        n = self.stamp_ns.shape[0]
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value.shape[0] != n:
                raise ValueError(f"replay result column {field.name} has {value.shape[0]} rows, expected {n}")

    def __len__(self) -> int:
        return int(self.stamp_ns.shape[0])

    @staticmethod
    def empty_like(frames: int, k: int) -> "ReplayResults":
        """All-unanswered results for `frames` frames and `k` candidates each, to be filled in."""
        return ReplayResults(
            stamp_ns=np.zeros(frames, dtype=np.int64),
            gt_xy=np.full((frames, 2), np.nan),
            cand_place_ids=np.full((frames, k), -1, dtype=np.int64),
            cand_xy=np.full((frames, k, 2), np.nan),
            cand_scores=np.full((frames, k), np.nan, dtype=np.float32),
            answered=np.zeros(frames, dtype=bool),
            accepted=np.zeros(frames, dtype=bool),
            fix_xy=np.full((frames, 2), np.nan),
            fix_sigma_m=np.full(frames, np.nan),
            fix_cov_xy=np.full((frames, 2, 2), np.nan),
            fix_yaw=np.full(frames, np.nan),
            latency_s=np.full(frames, np.nan),
        )

    def save_npz(self, path: Path) -> None:
        """Write every column to an .npz at exactly `path` (no pickle), for later re-analysis."""
        with open(path, "wb") as fh:
            np.savez(fh, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)})

    @staticmethod
    def load_npz(path: Path) -> "ReplayResults":
        """Read results written by `save_npz`."""
        with np.load(path, allow_pickle=False) as data:
            return ReplayResults(**{f.name: data[f.name] for f in dataclasses.fields(ReplayResults)})


def record_answer(results: ReplayResults, i: int, xy: np.ndarray, place_ids: np.ndarray, scores: np.ndarray) -> None:
    """Store frame i's ranked candidates (fewer than K are padded)."""
    k = min(len(place_ids), results.cand_place_ids.shape[1])
    results.answered[i] = True
    results.cand_place_ids[i, :k] = place_ids[:k]
    results.cand_xy[i, :k] = xy[:k]
    results.cand_scores[i, :k] = scores[:k]


def record_fix(results: ReplayResults, i: int, easting: float, northing: float, yaw: float,
               covariance: np.ndarray) -> None:
    """Store frame i's accepted fix, its 1-sigma horizontal uncertainty and its yaw (NaN when the fix's yaw variance
    says unknown)."""
    cov = np.asarray(covariance, dtype=np.float64).reshape(6, 6)
    results.accepted[i] = True
    results.fix_xy[i] = (easting, northing)
    results.fix_sigma_m[i] = float(np.sqrt(max(cov[0, 0] + cov[1, 1], 0.0) / 2.0))
    results.fix_cov_xy[i] = cov[:2, :2]
    results.fix_yaw[i] = yaw if cov[5, 5] < UNKNOWN_YAW_VARIANCE else np.nan


def _percentiles(values: np.ndarray, scale: float = 1.0) -> dict[str, float | None]:
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {**{f"p{p}": None for p in PERCENTILES}, "mean": None, "max": None}
    out: dict[str, float | None] = {f"p{p}": float(np.percentile(values, p) * scale) for p in PERCENTILES}
    out["mean"] = float(values.mean() * scale)
    out["max"] = float(values.max() * scale)
    return out


def correct_at(results: ReplayResults, radius_m: float) -> np.ndarray:
    """(F, K) bool: candidate k of frame f lies within `radius_m` of the frame's GPS position."""
    d = np.linalg.norm(results.cand_xy - results.gt_xy[:, None, :], axis=2)
    return np.isfinite(d) & (d <= radius_m)


def _positives(gt_xy: np.ndarray, map_xy: np.ndarray, radius_m: float) -> tuple[np.ndarray, list[np.ndarray]]:
    """Frames with a known GPS position, and the map rows within `radius_m` of each (the eval's definition)."""
    known = np.flatnonzero(np.isfinite(gt_xy).all(axis=1))
    if known.size == 0 or map_xy.shape[0] == 0:
        return known, [np.zeros(0, dtype=np.int64) for _ in known]
    return known, positives_within_radius(map_xy, gt_xy[known], radius_m)


def has_positive(gt_xy: np.ndarray, map_xy: np.ndarray, radius_m: float) -> np.ndarray:
    """(F,) bool: some map place lies within `radius_m` of the frame's GPS position (the frame is evaluable)."""
    out = np.zeros(gt_xy.shape[0], dtype=bool)
    known, positives = _positives(gt_xy, map_xy, radius_m)
    out[known] = [p.size > 0 for p in positives]
    return out


def recall_at(results: ReplayResults, map_xy: np.ndarray, map_ids: np.ndarray, radius_m: float,
              ns: Sequence[int]) -> dict[str, float]:
    """Recall@N over evaluable frames, computed by the evaluation's `recall_at_n` on map place ids."""
    known, positives = _positives(results.gt_xy, map_xy, radius_m)
    ids = np.asarray(map_ids, dtype=np.int64)
    found = recall_at_n(results.cand_place_ids[known], [ids[p] for p in positives], ns)
    if found["queries"] == found["queries_without_positives"]:
        return {str(n): float("nan") for n in ns}
    return {str(n): v for n, v in found["recall_queries_with_positives"].items()}


def compute_metrics(
    results: ReplayResults, map_xy: np.ndarray, map_ids: np.ndarray, radius_m: float, ns: Sequence[int]
) -> dict[str, Any]:
    """The report's numbers: recall, fix precision/availability, position error and latency percentiles."""
    if max(ns) > results.cand_place_ids.shape[1]:
        raise ValueError(f"Recall@{max(ns)} needs {max(ns)} candidates per frame, results keep {results.cand_place_ids.shape[1]}")
    known = np.isfinite(results.gt_xy).all(axis=1)
    evaluable = has_positive(results.gt_xy, map_xy, radius_m)
    fix_error = np.linalg.norm(results.fix_xy - results.gt_xy, axis=1)
    top1_error = np.linalg.norm(results.cand_xy[:, 0, :] - results.gt_xy, axis=1)
    accepted_known = results.accepted & known
    n_acc = int(accepted_known.sum())
    correct_fix = accepted_known & (fix_error <= radius_m)
    return {
        "frames": len(results),
        "frames_with_gps": int(known.sum()),
        "frames_evaluable": int(evaluable.sum()),
        "frames_answered": int(results.answered.sum()),
        "radius_m": float(radius_m),
        "recall": recall_at(results, map_xy, map_ids, radius_m, ns),
        "fix": {
            "accepted": int(results.accepted.sum()),
            "availability": float(results.accepted[known].mean()) if known.any() else float("nan"),
            "precision": float(correct_fix.sum() / n_acc) if n_acc else float("nan"),
            "correct": int(correct_fix.sum()),
            "error_m": _percentiles(fix_error[accepted_known]),
            "sigma_m": _percentiles(results.fix_sigma_m[results.accepted]),
        },
        "top1_error_m": _percentiles(top1_error[known & results.answered]),
        "latency_ms": _percentiles(results.latency_s, scale=1000.0),
    }
