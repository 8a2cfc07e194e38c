"""The fix of concentrated belief mass: its mean, its spread plus the map's resolution, the places' own position
noise and the lateral term, its yaw."""
from __future__ import annotations

import math

import numpy as np

from dsformer_ros.localization.pose_estimate import Fix, pose_covariance


def concentrated_fix(xy: np.ndarray, mass: np.ndarray, yaw: np.ndarray, floor_sigma_m: float, position_sigma_m: float,
                     lateral_sigma_m: float, place_id: int, score: float, agreeing: int) -> Fix:
    """Fix of mass (N,) at positions xy (N, 2) (places plus carried offsets) with place yaws (N,).

    The places' independent position noise enters the mean of N places as sigma^2 sum(w^2); the lateral term lies
    across the heading (isotropic when the heading is unknown)."""
    mean, cov, heading, yaw_known = pose_covariance(xy, mass, yaw, floor_sigma_m)
    w = mass / max(float(mass.sum()), 1e-300)
    cov[:2, :2] += position_sigma_m**2 * float((w**2).sum()) * np.eye(2)
    if yaw_known:
        normal = np.array([-math.sin(heading), math.cos(heading)])
        cov[:2, :2] += lateral_sigma_m**2 * np.outer(normal, normal)
    else:
        cov[:2, :2] += lateral_sigma_m**2 * np.eye(2)
    return Fix(easting=float(mean[0]), northing=float(mean[1]), yaw=heading, yaw_known=yaw_known, covariance=cov,
               place_id=place_id, score=score, agreeing=agreeing)
