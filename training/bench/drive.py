"""A drive through the benchmark city: a route along streets with turns, drifting wheel odometry and its events.

The car starts cold on a random walk through the grid (straight twice as likely as each turn, no U-turn), drives
`lost_m` through fog (views that match nothing, on the map), has its localizer reset (`~/relocalize`), is then
carried to a far street (the odometry does not see it) and drives straight north out of the city, beyond its edge.
It drives in the lane `query_offset_m` right of the mapped lane of its direction.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

from dsformer_ros.common.geometry import NS_PER_S, angle_difference
from dsformer_ros.common.params import check_fields, setting
from training.bench.city import City

# Random walk: weights of going straight, turning left and turning right at a crossing.
TURN_WEIGHTS = {0: 2.0, 1: 1.0, -1: 1.0}
DIRECTIONS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])  # east, north, west, south: index + 1 turns left


@dataclasses.dataclass
class DriveConfig:
    """The drive: frame rate, lane, view noise, odometry errors and how far each part of it goes."""

    frame_step_m: float = setting(3.0, "distance between frames (m)", low=0.1)
    speed_mps: float = setting(10.0, "driving speed (m/s): frame stamps", low=0.1)
    query_offset_m: float = setting(3.5, "the car drives this far right of the mapped lane (m)", low=0.0)
    query_noise: float = setting(1.0, "Gaussian noise per descriptor component of the car's views", low=0.0)
    odometry_scale: float = setting(1.04, "wheel odometry's distance scale error", low=0.5, high=2.0)
    odometry_drift_deg_per_m: float = setting(0.05, "wheel odometry's heading drift (deg per m driven)")
    cold_start_m: float = setting(600.0, "first part, from a cold start (m)", low=1.0)
    lost_m: float = setting(60.0, "then through fog: views that match nothing (m, 0: none)", low=0.0)
    tracking_m: float = setting(300.0, "then on, seeing the city again (m)", low=0.0)
    relocalize_m: float = setting(300.0, "then the localizer is reset and the car drives on (m)", low=1.0)
    kidnap_min_m: float = setting(1000.0, "then the car is carried at least this far (or half the city's size) (m)",
                                  low=0.0)
    after_kidnap_m: float = setting(500.0, "then drives straight north on the city's streets (m)", low=1.0)
    off_map_m: float = setting(150.0, "and on beyond the city's north edge, off the map (m, 0: none)", low=0.0)
    seed: int = setting(1, "seed of the route and the view noise")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)


@dataclasses.dataclass
class Drive:
    """Per frame: the true pose, the wheel odometry pose, the stamp, the distance driven, fog and how far beyond
    the map; the frames where the localizer is reset and where the car was carried off."""

    xy: np.ndarray
    yaw: np.ndarray
    odometry: np.ndarray
    stamp_ns: np.ndarray
    distance_m: np.ndarray
    fog: np.ndarray
    beyond_m: np.ndarray
    reset_at: int
    kidnap_at: int

    @property
    def frames(self) -> int:
        """Number of frames."""
        return self.xy.shape[0]


def random_walk(city: City, node: np.ndarray, heading: int, length_m: float, rng: np.random.Generator) -> list:
    """Crossings (grid nodes) of a walk of at least `length_m` from `node` heading `heading` (index in DIRECTIONS)."""
    nodes = [node]
    for _ in range(int(math.ceil(length_m / city.config.block_m)) + 1):
        choices = []
        for turn, weight in TURN_WEIGHTS.items():
            d = (heading + turn) % 4
            step = nodes[-1] + DIRECTIONS[d]
            if 0 <= step[0] <= city.nx and 0 <= step[1] <= city.ny:
                choices.append((d, weight))
        if not choices:  # a dead end of a one-block-wide city: turn round
            choices = [((heading + 2) % 4, 1.0)]
        weights = np.array([w for _, w in choices])
        heading = choices[int(rng.choice(len(choices), p=weights / weights.sum()))][0]
        nodes.append(nodes[-1] + DIRECTIONS[heading])
    return nodes


def lane_path(nodes: list, block_m: float, offset_m: float) -> np.ndarray:
    """Corner points (m) of the path through the crossings `nodes`, `offset_m` right of the street's centre."""
    points = np.asarray(nodes, dtype=np.float64) * block_m
    legs = np.diff(points, axis=0)
    unit = legs / np.linalg.norm(legs, axis=1, keepdims=True)
    right = np.column_stack([unit[:, 1], -unit[:, 0]]) * offset_m
    out = [points[0] + right[0]]
    for k in range(1, len(points) - 1):
        a, b = right[k - 1], right[k]
        # Straight on: one offset; a turn: where the two offset lines cross; a U-turn: both sides.
        if np.allclose(a, b):
            out.append(points[k] + a)
        elif np.allclose(a, -b):
            out.extend([points[k] + a, points[k] + b])
        else:
            out.append(points[k] + a + b)
    out.append(points[-1] + right[-1])
    return np.array(out)


def resample(path: np.ndarray, step_m: float, length_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Poses every `step_m` along the polyline `path` for `length_m` (or its length): positions and headings."""
    legs = np.diff(path, axis=0)
    leg_m = np.hypot(legs[:, 0], legs[:, 1])
    keep = leg_m > 0
    legs, leg_m, starts = legs[keep], leg_m[keep], path[:-1][keep]
    cumulative = np.concatenate([[0.0], np.cumsum(leg_m)])
    s = np.arange(0.0, min(length_m, cumulative[-1]), step_m)
    leg = np.clip(np.searchsorted(cumulative, s, side="right") - 1, 0, len(leg_m) - 1)
    xy = starts[leg] + legs[leg] * ((s - cumulative[leg]) / leg_m[leg])[:, None]
    return xy, np.arctan2(legs[leg, 1], legs[leg, 0])


def wheel_odometry(xy: np.ndarray, yaw: np.ndarray, carried: int, cfg: DriveConfig) -> np.ndarray:
    """(F, 3) odometry poses in their own frame: scaled distance, heading with drift; across frame `carried` the
    car was carried, so the odometry sees one ordinary straight step."""
    poses = np.zeros((len(xy), 3))
    drift = math.radians(cfg.odometry_drift_deg_per_m)
    for k in range(1, len(xy)):
        if k == carried:
            step, turn = cfg.frame_step_m * cfg.odometry_scale, 0.0
        else:
            step = math.hypot(*(xy[k] - xy[k - 1])) * cfg.odometry_scale
            turn = angle_difference(yaw[k], yaw[k - 1])
        heading = poses[k - 1, 2] + turn + drift * step
        poses[k] = poses[k - 1, 0] + step * math.cos(heading), poses[k - 1, 1] + step * math.sin(heading), heading
    return poses


def _kidnap_start(city: City, here: np.ndarray, cfg: DriveConfig, rng: np.random.Generator) -> np.ndarray:
    """The crossing the car is carried to: `after_kidnap_m` south of the north edge, on a column far from `here`."""
    b = city.config.block_m
    row = max(0, city.ny - int(round(cfg.after_kidnap_m / b)))
    columns = np.arange(city.nx + 1)
    distance = np.hypot(columns * b - here[0], row * b - here[1])
    far = np.flatnonzero(distance >= min(cfg.kidnap_min_m, 0.5 * max(city.nx, city.ny) * b))
    column = int(rng.choice(far)) if far.size else int(np.argmax(distance))
    return np.array([column, row])


def make_drive(city: City, cfg: DriveConfig) -> Drive:
    """The benchmark's drive through `city` (see the module docstring)."""
    rng = np.random.default_rng(cfg.seed)
    b = city.config.block_m
    offset = city.config.lane_m / 2.0 + cfg.query_offset_m
    first_m = cfg.cold_start_m + cfg.lost_m + cfg.tracking_m + cfg.relocalize_m
    start = np.array([rng.integers(city.nx + 1), rng.integers(city.ny + 1)])
    walk = random_walk(city, start, int(rng.integers(4)), first_m, rng)
    xy1, yaw1 = resample(lane_path(walk, b, offset), cfg.frame_step_m, first_m)
    kidnap = _kidnap_start(city, xy1[-1], cfg, rng)
    north_m = (city.ny - kidnap[1]) * b + cfg.off_map_m
    straight = [kidnap, np.array([kidnap[0], city.ny + cfg.off_map_m / b + 1.0])]
    xy2, yaw2 = resample(lane_path(straight, b, offset), cfg.frame_step_m, north_m + cfg.frame_step_m / 2)
    xy, yaw = np.concatenate([xy1, xy2]), np.concatenate([yaw1, yaw2])
    carried = len(xy1)
    steps = np.hypot(*np.diff(xy, axis=0).T)
    steps[carried - 1] = 0.0
    distance = np.concatenate([[0.0], np.cumsum(steps)])
    fog = np.zeros(len(xy), dtype=bool)
    fog[:carried] = (distance[:carried] >= cfg.cold_start_m) & (distance[:carried] < cfg.cold_start_m + cfg.lost_m)
    reset_at = int(np.searchsorted(distance[:carried], first_m - cfg.relocalize_m))
    beyond = np.zeros(len(xy))
    beyond[carried:] = np.maximum(xy2[:, 1] - city.ny * b - city.config.lane_m / 2.0, 0.0)
    stamp = (np.arange(len(xy)) * (cfg.frame_step_m / cfg.speed_mps) * NS_PER_S).astype(np.int64)
    return Drive(xy, yaw, wheel_odometry(xy, yaw, carried, cfg), stamp, distance, fog, beyond, reset_at, carried)
