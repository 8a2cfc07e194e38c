"""Whether the fixes can be trusted: covariance calibration, first fix, kidnap recovery and fixes off the map.

A fix's covariance is honest when its errors fall inside its ellipses as often as a Gaussian says: for the x/y
block, the normalised (Mahalanobis) error d = sqrt(e' C^-1 e) is at most 1 for 39.3 % of the fixes, at most
sqrt(5.991) for 95 % of them, and its median is sqrt(2 ln 2) = 1.18. A kidnap is found in the ground truth as a
jump between two frames far larger than the drive's usual step; a frame is off the map when no map place lies within
the replay's radius of its ground truth.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from training.replay.metrics import ReplayResults, has_positive

CHI2_2D_95 = 5.991
IDEAL = {"inside_1sigma": 1.0 - math.exp(-0.5), "inside_95": 0.95, "median_normalised_error": math.sqrt(2 * math.log(2))}
JUMP_FACTOR = 5.0
JUMP_MIN_M = 30.0


def normalised_errors(results: ReplayResults) -> np.ndarray:
    """(F,) Mahalanobis x/y error of each accepted fix against its own covariance; NaN elsewhere."""
    out = np.full(len(results), np.nan)
    e = results.fix_xy - results.gt_xy
    for i in np.flatnonzero(results.accepted & np.isfinite(e).all(axis=1)):
        cov = results.fix_cov_xy[i]
        if np.isfinite(cov).all() and np.linalg.det(cov) > 0:
            out[i] = float(np.sqrt(e[i] @ np.linalg.solve(cov, e[i])))
    return out


def travelled_m(results: ReplayResults, jump: int | None = None) -> np.ndarray:
    """(F,) distance driven (m) since the first frame along the ground truth, the kidnap's jump left out."""
    step = np.linalg.norm(np.diff(results.gt_xy, axis=0), axis=1)
    step = np.where(np.isfinite(step), step, 0.0)
    if jump is not None and 0 < jump < len(results):
        step[jump - 1] = float(np.median(step)) if step.size else 0.0
    return np.concatenate([[0.0], np.cumsum(step)])


def find_jump(results: ReplayResults) -> int | None:
    """The first frame after a teleport in the ground truth (a step > 5x the median and > 30 m), None without one."""
    step = np.linalg.norm(np.diff(results.gt_xy, axis=0), axis=1)
    if step.size == 0 or not np.isfinite(step).any():
        return None
    typical = float(np.nanmedian(step))
    big = np.flatnonzero(np.isfinite(step) & (step > max(JUMP_FACTOR * typical, JUMP_MIN_M)))
    return int(big[0] + 1) if big.size else None


def calibration_metrics(results: ReplayResults, map_xy: np.ndarray, radius_m: float) -> dict[str, Any]:
    """Coverage of the fix ellipses, time/distance to the first fix, kidnap recovery and fixes off the map."""
    d = normalised_errors(results)
    known = np.isfinite(d)
    error = np.linalg.norm(results.fix_xy - results.gt_xy, axis=1)
    on_map = has_positive(results.gt_xy, map_xy, radius_m)
    gt_known = np.isfinite(results.gt_xy).all(axis=1)
    jump = find_jump(results)
    along = travelled_m(results, jump)
    out: dict[str, Any] = {
        "fixes_with_covariance": int(known.sum()),
        "inside_1sigma": float((d[known] <= 1.0).mean()) if known.any() else None,
        "inside_95": float((d[known] ** 2 <= CHI2_2D_95).mean()) if known.any() else None,
        "median_normalised_error": float(np.median(d[known])) if known.any() else None,
        "ideal": IDEAL,
        "max_error_m": float(np.nanmax(error[results.accepted])) if results.accepted.any() else None,
        "fixes_off_map": int((results.accepted & gt_known & ~on_map).sum()),
        "frames_off_map": int((gt_known & ~on_map).sum()),
    }
    first = np.flatnonzero(results.accepted)
    if first.size:
        out["first_fix"] = {"frame": int(first[0]), "distance_m": float(along[first[0]]),
                            "time_s": float((results.stamp_ns[first[0]] - results.stamp_ns[0]) / 1e9)}
    else:
        out["first_fix"] = None
    if jump is not None:
        after = np.arange(len(results)) >= jump
        good = np.flatnonzero(after & results.accepted & (error <= radius_m))
        out["kidnap"] = {
            "frame": jump,
            "fixes_after": int((after & results.accepted).sum()),
            "max_error_after_m": float(np.nanmax(error[after & results.accepted]))
            if (after & results.accepted).any() else None,
            "recovered_after_m": float(along[good[0]] - along[jump]) if good.size else None,
        }
    return out
