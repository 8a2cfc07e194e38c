"""Turning ranked place candidates into an accepted position fix with a computed covariance (no ROS needed).

A fix is accepted when the best score reaches a threshold, enough of the top-k candidates lie within a radius of the
best one, and (optionally) the best position agrees with most of the recent frames. Its covariance is the
score-weighted spatial spread of the agreeing candidates plus a floor from the map's keyframe spacing, so it grows
when candidates disagree and never collapses below the map's resolution.

Headings: the map stores compass bearings (degrees clockwise from north, NaN when unknown); ROS poses use ENU yaw
(radians counter-clockwise from east): yaw = pi/2 - radians(heading).
"""
from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from dsformer_ros.common.geometry import heading_to_yaw

# Variance (m^2) reported for z, roll and pitch: VPR says nothing about them.
UNKNOWN_VARIANCE = 1.0e6
# Yaw variance (rad^2) when no agreeing candidate has a heading: larger than a uniform angle's (pi^2 / 3).
UNKNOWN_YAW_VARIANCE = math.pi**2
# Smallest yaw variance (rad^2): a map heading is never better than a few degrees.
YAW_VARIANCE_FLOOR = math.radians(5.0) ** 2


@dataclass
class Candidates:
    """Top-k places of one query in rank order (index 0 is the best): ids, scores, UTM positions, headings."""

    place_id: np.ndarray
    score: np.ndarray
    easting: np.ndarray
    northing: np.ndarray
    heading_deg: np.ndarray

    def __len__(self) -> int:
        return int(np.asarray(self.place_id).shape[0])

    @property
    def yaw(self) -> np.ndarray:
        """ENU yaw of each candidate in radians (NaN where the heading is unknown)."""
        return heading_to_yaw(self.heading_deg)

    @property
    def xy(self) -> np.ndarray:
        """(k, 2) UTM easting, northing."""
        return np.column_stack([np.asarray(self.easting, np.float64), np.asarray(self.northing, np.float64)])


@dataclass
class Fix:
    """An accepted position: UTM easting/northing (m), ENU yaw (rad), 6x6 covariance (x, y, z, roll, pitch, yaw)."""

    easting: float
    northing: float
    yaw: float
    yaw_known: bool
    covariance: np.ndarray
    place_id: int
    score: float
    agreeing: int


@dataclass
class Decision:
    """The outcome for one frame: the fix when accepted, otherwise None, and a reason either way."""

    fix: Fix | None
    reason: str

    @property
    def accepted(self) -> bool:
        """True when a fix was accepted."""
        return self.fix is not None


class TemporalFilter:
    """Recent best-candidate positions; a new one is consistent when at least half of them lie within a radius.

    It keeps the best position of every frame that passed the score and agreement tests (accepted or not), so after
    a jump (kidnapping, a wrong early fix) the new place wins the vote within about window/2 frames. `reset()`
    forgets the history (the node's `~/relocalize`). Thread-safe.
    """

    def __init__(self, window: int, radius_m: float) -> None:
        if window < 0:
            raise ValueError(f"temporal_window must be >= 0, got {window}")
        if not radius_m > 0:
            raise ValueError(f"temporal_radius_m must be > 0, got {radius_m}")
        self.window = window
        self.radius_m = radius_m
        self._history: deque[tuple[float, float]] = deque(maxlen=max(window, 1))
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """False when window is 0 (every fix counts as consistent)."""
        return self.window > 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._history)

    def check_and_add(self, easting: float, northing: float) -> tuple[bool, str]:
        """Vote the position against the history, then remember it; returns (consistent, reason)."""
        if not self.enabled:
            return True, "temporal filter disabled"
        with self._lock:
            history = np.asarray(self._history, dtype=np.float64).reshape(-1, 2)
            self._history.append((float(easting), float(northing)))
        if history.shape[0] == 0:
            return True, "first frame after a reset"
        distances = np.hypot(history[:, 0] - easting, history[:, 1] - northing)
        agreeing = int((distances <= self.radius_m).sum())
        needed = math.ceil(history.shape[0] / 2)
        if agreeing >= needed:
            return True, f"{agreeing} of the last {history.shape[0]} frames within temporal_radius_m"
        return False, (
            f"temporally inconsistent: only {agreeing} of the last {history.shape[0]} frames lie within "
            f"temporal_radius_m={self.radius_m:g} of the best candidate (need {needed})"
        )

    def reset(self) -> None:
        """Forget all recent positions (relocalization)."""
        with self._lock:
            self._history.clear()


def _weights(scores: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 from similarity scores (negative scores count as nearly zero)."""
    w = np.clip(np.asarray(scores, dtype=np.float64), 1e-6, None)
    return w / w.sum()


def _yaw_estimate(yaw: np.ndarray, weights: np.ndarray) -> tuple[float, float, bool]:
    """Weighted circular mean and variance of the known yaws; (0, UNKNOWN_YAW_VARIANCE, False) when none is known."""
    known = np.isfinite(yaw)
    if not known.any():
        return 0.0, UNKNOWN_YAW_VARIANCE, False
    w = weights[known] / weights[known].sum()
    c = float((w * np.cos(yaw[known])).sum())
    s = float((w * np.sin(yaw[known])).sum())
    resultant = math.hypot(c, s)
    variance = -2.0 * math.log(resultant) if resultant > 1e-12 else UNKNOWN_YAW_VARIANCE
    variance = min(max(variance, YAW_VARIANCE_FLOOR), UNKNOWN_YAW_VARIANCE)
    return math.atan2(s, c), variance, True


def pose_covariance(
    xy: np.ndarray, scores: np.ndarray, yaw: np.ndarray, floor_sigma_m: float
) -> tuple[np.ndarray, np.ndarray, float, bool]:
    """Score-weighted mean position and 6x6 covariance of candidates (xy (n, 2), scores (n,), ENU yaw (n,)).

    The x/y block is the weighted spatial covariance plus floor_sigma_m^2 on the diagonal (positive definite, never
    below the map's resolution); z, roll and pitch get UNKNOWN_VARIANCE; yaw comes from the circular spread of the
    known headings, or UNKNOWN_YAW_VARIANCE when none is known. Returns (mean_xy, covariance, yaw, yaw_known).
    """
    if not floor_sigma_m > 0:
        raise ValueError(f"floor_sigma_m must be > 0, got {floor_sigma_m}")
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if xy.shape[0] == 0:
        raise ValueError("pose_covariance needs at least one candidate")
    w = _weights(scores)
    mean = (w[:, None] * xy).sum(axis=0)
    centred = xy - mean
    spread = (w[:, None, None] * (centred[:, :, None] * centred[:, None, :])).sum(axis=0)
    mean_yaw, yaw_variance, yaw_known = _yaw_estimate(np.asarray(yaw, dtype=np.float64), w)
    cov = np.zeros((6, 6), dtype=np.float64)
    cov[:2, :2] = spread + np.eye(2) * floor_sigma_m**2
    cov[2, 2] = cov[3, 3] = cov[4, 4] = UNKNOWN_VARIANCE
    cov[5, 5] = yaw_variance
    return mean, cov, mean_yaw, yaw_known


def decide(
    candidates: Candidates,
    *,
    score_threshold: float,
    agreement_radius_m: float,
    min_agreeing: int,
    floor_sigma_m: float,
    temporal: TemporalFilter | None = None,
) -> Decision:
    """Accept or reject the best candidate (threshold, top-k agreement, temporal vote) and compute its fix."""
    if len(candidates) == 0:
        return Decision(None, "no candidates")
    scores = np.asarray(candidates.score, dtype=np.float64)
    best_score = float(scores[0])
    if not best_score >= score_threshold:
        return Decision(None, f"best score {best_score:.3f} is below score_threshold={score_threshold:g}")
    xy = candidates.xy
    near = np.hypot(xy[:, 0] - xy[0, 0], xy[:, 1] - xy[0, 1]) <= agreement_radius_m
    agreeing = int(near.sum())
    if agreeing < min_agreeing:
        return Decision(
            None,
            f"only {agreeing} of the top {len(candidates)} candidates lie within agreement_radius_m="
            f"{agreement_radius_m:g} of the best (min_agreeing={min_agreeing})",
        )
    if temporal is not None:
        consistent, reason = temporal.check_and_add(float(xy[0, 0]), float(xy[0, 1]))
        if not consistent:
            return Decision(None, reason)
    mean, cov, yaw, yaw_known = pose_covariance(xy[near], scores[near], candidates.yaw[near], floor_sigma_m)
    fix = Fix(
        easting=float(mean[0]),
        northing=float(mean[1]),
        yaw=yaw,
        yaw_known=yaw_known,
        covariance=cov,
        place_id=int(candidates.place_id[0]),
        score=best_score,
        agreeing=agreeing,
    )
    return Decision(fix, f"accepted: score {best_score:.3f}, {agreeing} agreeing candidates")
