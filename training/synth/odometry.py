"""Drifting wheel odometry for synthetic drives: the true motion, scaled, turning slowly and noisy, integrated.

Like real wheel odometry it lives in its own frame (`odom`, starting at the origin with yaw 0) and drifts away from
the ground truth without bound; only its motion between two stamps is meaningful. A teleport of the car (a kidnapped
drive) is not seen: the step across the jump is replaced by the car's step just before it, so the odometry carries on
as if the car had kept driving.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dsformer_ros.common.geometry import wrap_angle
from training.synth.render import Pose


@dataclass(frozen=True)
class WheelOdometryModel:
    """Errors of the simulated odometry: distance scale, heading drift per metre, per-step noise; seeded."""

    scale_error: float = 0.03
    heading_drift_deg_per_m: float = 0.05
    distance_noise: float = 0.01  # relative 1-sigma noise of each step's distance
    yaw_noise_deg: float = 0.05  # 1-sigma noise of each step's heading change
    seed: int = 0


def wheel_odometry(poses: list[Pose], times_s: np.ndarray, model: WheelOdometryModel,
                   max_speed_mps: float) -> np.ndarray:
    """(T, 3) odometry x, y, yaw in the odom frame for the true `poses` at `times_s`; jumps above max speed hidden."""
    x = np.array([p.x for p in poses])
    y = np.array([p.y for p in poses])
    yaw = np.array([p.yaw for p in poses])
    rng = np.random.default_rng([model.seed, 41])
    out = np.zeros((len(poses), 3))
    if len(poses) < 2:
        return out
    c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    dx_w, dy_w = np.diff(x), np.diff(y)
    forward = c * dx_w + s * dy_w
    left = -s * dx_w + c * dy_w
    turn = wrap_angle(np.diff(yaw))
    dt = np.diff(np.asarray(times_s, dtype=np.float64))
    jumped = np.hypot(forward, left) > max_speed_mps * np.maximum(dt, 1e-9)
    for k in np.flatnonzero(jumped):
        j = k - 1 if k > 0 else k + 1
        forward[k], left[k], turn[k] = (forward[j], left[j], turn[j]) if 0 <= j < len(forward) else (0.0, 0.0, 0.0)
    distance = np.hypot(forward, left)
    scale = (1.0 + model.scale_error) * (1.0 + model.distance_noise * rng.standard_normal(forward.shape))
    turn = turn + math.radians(model.heading_drift_deg_per_m) * distance \
        + math.radians(model.yaw_noise_deg) * rng.standard_normal(turn.shape)
    heading = 0.0
    for k in range(len(forward)):
        ch, sh = math.cos(heading), math.sin(heading)
        out[k + 1, 0] = out[k, 0] + scale[k] * (ch * forward[k] - sh * left[k])
        out[k + 1, 1] = out[k, 1] + scale[k] * (sh * forward[k] + ch * left[k])
        heading = wrap_angle(heading + float(turn[k]))
        out[k + 1, 2] = heading
    return out
