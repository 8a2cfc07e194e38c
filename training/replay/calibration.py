"""Whether the fixes can be trusted: covariance calibration, first fix, kidnap recovery and fixes off the map.

A fix's covariance is honest when its errors fall inside its ellipses as often as a Gaussian says: for the x/y
block, the normalised (Mahalanobis) error d = sqrt(e' C^-1 e) is at most 1 for 39.3 % of the fixes, at most
sqrt(5.991) for 95 % of them, and its median is sqrt(2 ln 2) = 1.18. A kidnap is found in the ground truth as a
jump between two frames far larger than the drive's usual step; a frame is off the map when no map place lies within
the replay's radius of its ground truth.

The sequence localizer's lateral term (`lateral_sigma_m`: where the robot is across the road relative to the mapping
drive) is the one part of a fix's covariance the map cannot tell; `lateral_coverage` counts, for a grid of values,
the fixes that would fall inside their 95 % ellipse with that value in place of the configured one, so drives pool
by adding counts and `fit_lateral_sigma` picks the smallest value that covers 95 % of them.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from dsformer_ros.common.geometry import NS_PER_S
from training.replay.metrics import ReplayResults, has_positive

CHI2_2D_95 = 5.991
IDEAL = {"inside_1sigma": 1.0 - math.exp(-0.5), "inside_95": 0.95, "median_normalised_error": math.sqrt(2 * math.log(2))}
JUMP_FACTOR = 5.0
JUMP_MIN_M = 30.0
LATERAL_GRID_M = tuple(round(0.1 * k, 1) for k in range(101))  # 0 to 10 m


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
                            "time_s": float((results.stamp_ns[first[0]] - results.stamp_ns[0]) / NS_PER_S)}
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


def lateral_coverage(results: ReplayResults, lateral_sigma_m: float) -> dict[str, Any]:
    """How many fixes lie inside their 95 % ellipse with the configured lateral term and with each value of
    LATERAL_GRID_M in its place (across the fix's yaw; on both axes where its yaw is unknown); counts add over
    drives."""
    e = results.fix_xy - results.gt_xy
    keep = results.accepted & np.isfinite(e).all(axis=1) & np.isfinite(results.fix_cov_xy).all(axis=(1, 2))
    e, cov, yaw = e[keep], results.fix_cov_xy[keep], results.fix_yaw[keep]
    normal = np.column_stack([-np.sin(yaw), np.cos(yaw)])
    across = np.where(np.isfinite(yaw)[:, None, None], normal[:, :, None] * normal[:, None, :], np.eye(2))
    base = cov - lateral_sigma_m**2 * across
    values = np.asarray([*LATERAL_GRID_M, lateral_sigma_m])
    c = base[None] + values[:, None, None, None] ** 2 * across[None]  # (G + 1, F, 2, 2)
    det = c[..., 0, 0] * c[..., 1, 1] - c[..., 0, 1] * c[..., 1, 0]
    quad = (c[..., 1, 1] * e[:, 0] ** 2 - 2.0 * c[..., 0, 1] * e[:, 0] * e[:, 1] + c[..., 0, 0] * e[:, 1] ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = ((det > 0) & (quad / det <= CHI2_2D_95)).sum(axis=1).astype(int).tolist()
    return {"lateral_sigma_m": lateral_sigma_m, "grid_m": list(LATERAL_GRID_M), "fixes": int(keep.sum()),
            "inside_95": inside[:-1], "inside_95_at_configured": inside[-1]}


def pool_lateral(coverages: list[dict[str, Any]]) -> dict[str, Any]:
    """The counts of several drives' `lateral_coverage` (same configured value and grid) added up."""
    if not coverages:
        raise ValueError("pool_lateral needs at least one drive's lateral coverage")
    first = coverages[0]
    for c in coverages[1:]:
        if c["grid_m"] != first["grid_m"] or c["lateral_sigma_m"] != first["lateral_sigma_m"]:
            raise ValueError("lateral coverages to pool must share the grid and the configured lateral_sigma_m")
    return {"lateral_sigma_m": first["lateral_sigma_m"], "grid_m": first["grid_m"],
            "fixes": sum(c["fixes"] for c in coverages),
            "inside_95": np.sum([c["inside_95"] for c in coverages], axis=0).astype(int).tolist(),
            "inside_95_at_configured": sum(c["inside_95_at_configured"] for c in coverages)}


def fit_lateral_sigma(coverage: dict[str, Any], target: float = 0.95) -> float | None:
    """The smallest grid value at which `target` of the fixes lie inside their 95 % ellipse; None when no value
    does (wrong fixes beyond any lanes) or there are no fixes."""
    if coverage["fixes"] == 0:
        return None
    share = np.asarray(coverage["inside_95"]) / coverage["fixes"]
    reached = np.flatnonzero(share >= target)
    return float(coverage["grid_m"][reached[0]]) if reached.size else None


def lateral_summary(coverage: dict[str, Any]) -> dict[str, Any]:
    """Pooled lateral coverage with its fitted value and the share inside the 95 % ellipse at the configured value."""
    fixes = coverage["fixes"]
    return {**coverage, "fitted_m": fit_lateral_sigma(coverage),
            "inside_95_configured": coverage["inside_95_at_configured"] / fixes if fixes else None}
