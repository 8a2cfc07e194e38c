"""Motion model: where the mass of some places goes between two frames.

A place is a view: its heading (the direction of its mapping drive) is the robot's, up to the relative heading the
mass carries. With odometry, the mass moves by the odometry's motion from where it lies (the place plus its carried
offset) along the robot's heading; without it, along the heading by the robot's speed, which each place carries as a
Gaussian estimate and updates from the steps that took the mass there (a velocity state: no speed to configure).
The prediction spreads over the places near where it lands (Gaussian in position, weighted by heading agreement);
the share that lands beyond the end of the mapped road ahead, or where no place heads the robot's way (a turn into
an unmapped street), drove off the map and is returned as leaked. Cost: K_NEIGHBOURS places per source.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree
from scipy.special import ndtr as norm_cdf

from dsformer_ros.common.geometry import angle_difference
from dsformer_ros.localization.odometry import Motion
from dsformer_ros.localization.sequence.config import SequenceConfig
from dsformer_ros.localization.sequence.sparse import Support

# Places a prediction may land on: the nearest this many within 3 sigma (more than a 3-sigma disc of a two-lane
# road at the usual keyframe spacing holds).
K_NEIGHBOURS = 32
# A place heads the robot's way when its heading lies within this many heading sigmas of the robot's.
COMPATIBLE_SIGMAS = 2.0
COMPATIBLE_H = math.exp(-0.5 * COMPATIBLE_SIGMAS**2)
# A car drives along its road: the heading it carries relative to a place's relaxes towards the road's over this
# distance (m), which also bounds what odometry heading drift can add to it.
HEADING_RELAX_M = 50.0
# Without odometry the robot's speed is a state: one of these (m/s; m per frame for unstamped frames) up to
# max_speed_mps (SeqSLAM's search over speeds, as a filter), changing to a neighbouring one with
# SPEED_CHANGE_PROBABILITY per frame. Hypotheses holding less than SPEED_SHARE_MIN of a place's mass are not moved.
SPEEDS_MPS = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 11.0, 15.0, 20.0, 27.0, 36.0, 50.0, 70.0, 100.0)
SPEED_CHANGE_PROBABILITY = 0.1
SPEED_SHARE_MIN = 1e-3


def speed_bins(cfg: SequenceConfig) -> np.ndarray:
    """The speeds the filter considers (m/s), up to max_speed_mps."""
    return np.array([v for v in SPEEDS_MPS if v <= cfg.max_speed_mps] or [0.0])


class PlaceGraph:
    """The map's places as the motion model sees them: positions, headings (NaN: unknown), keyframe spacing."""

    def __init__(self, xy: np.ndarray, yaw: np.ndarray, spacing_m: float, extent_sigma_m: float) -> None:
        self.xy = xy
        self.yaw = yaw
        self.n = xy.shape[0]
        self.tree = cKDTree(xy, balanced_tree=False, compact_nodes=False)
        self.spacing_m = spacing_m
        self.extent_sigma_m = extent_sigma_m

    def near(self, centres: np.ndarray, radii: np.ndarray, k: int = K_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
        """(source index, place row) of the nearest k places within radii[s] of centres[s]."""
        if centres.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        k = min(k, self.n)
        dist, rows = self.tree.query(centres, k=k, distance_upper_bound=float(np.max(radii)))
        dist, rows = dist.reshape(len(centres), k), rows.reshape(len(centres), k)
        ok = (rows < self.n) & (dist <= radii[:, None])
        src = np.broadcast_to(np.arange(len(centres))[:, None], rows.shape)[ok]
        return src.astype(np.int64), rows[ok].astype(np.int64)

    def within(self, centre: np.ndarray, radius: float) -> np.ndarray:
        """Rows of every place within `radius` of `centre` (sorted)."""
        return np.sort(np.asarray(self.tree.query_ball_point(centre, radius), dtype=np.int64))


@dataclass
class Step:
    """What moved the robot since the last frame: odometry, or only the elapsed time `tau` (s; 1 per frame when
    the frames carry no stamps)."""

    motion: Motion | None
    tau: float


@dataclass
class Moved:
    """Where the sources' mass went (a support of target places) and, per source, the mass (matched, unmatched)
    that drove off the map with the pose it left with (with odometry; without, nothing is dead-reckoned: NaN yaw)."""

    support: Support
    leaked: np.ndarray  # (S, 2)
    centre: np.ndarray  # (S, 2) where the sources' mass was predicted
    yaw: np.ndarray  # (S,) the robot's heading there (NaN: unknown)
    sigma: np.ndarray  # (S,) the prediction's position sigma
    pairs: int  # places looked at


def uniform_speed(bins: int) -> np.ndarray:
    """Speed distribution of mass that arrives with no motion history."""
    return np.full(bins, 1.0 / bins)


def odometry_speed(speeds: np.ndarray, step: Step) -> np.ndarray:
    """Speed distribution of mass the odometry moved: the speed nearest the odometry's."""
    out = np.zeros(speeds.size)
    out[int(np.argmin(np.abs(speeds - step.motion.distance / step.tau)))] = 1.0
    return out


def predict(graph: PlaceGraph, cfg: SequenceConfig, step: Step, sources: Support, speeds: np.ndarray) -> Moved:
    """Move the mass of the source places (with their carried offset, relative heading and speed) by `step`.

    With odometry each source moves once, by the odometry; without, once per speed of `speeds` it holds (the speed
    is part of the state: a hypothesis whose steps the views confirm gathers the mass)."""
    if step.motion is not None:
        count = len(sources)
        return _move(graph, cfg, step, sources.rows, sources.offset, sources.heading,
                     np.full(count, step.motion.distance), 0.0, np.column_stack([sources.matched, sources.unmatched]),
                     np.tile(odometry_speed(speeds, step), (count, 1)))
    share = sources.speed * (sources.speed >= SPEED_SHARE_MIN)
    share /= np.maximum(share.sum(axis=1, keepdims=True), 1e-300)
    origin, bin_ = np.nonzero(share)
    mass = np.column_stack([sources.matched[origin], sources.unmatched[origin]]) * share[origin, bin_, None]
    moved = _move(graph, cfg, step, sources.rows[origin], sources.offset[origin], sources.heading[origin],
                  speeds[bin_] * step.tau, _bin_width(speeds)[bin_] * step.tau, mass, np.eye(speeds.size)[bin_])
    moved.support.speed = _speed_change(moved.support.speed)
    leaked = np.zeros((len(sources), 2))
    np.add.at(leaked, origin, moved.leaked)
    return Moved(moved.support, leaked, graph.xy[sources.rows], np.full(len(sources), np.nan),
                 np.zeros(len(sources)), moved.pairs)


def _bin_width(speeds: np.ndarray) -> np.ndarray:
    """Half the gap from each speed to its neighbours (1 sigma of a step within the bin)."""
    gaps = np.diff(speeds)
    if gaps.size == 0:
        return np.zeros(1)
    return np.concatenate([gaps[:1], np.maximum(gaps[:-1], gaps[1:]), gaps[-1:]]) / 2.0


def _speed_change(dist: np.ndarray) -> np.ndarray:
    """Each speed moves to a neighbouring one with SPEED_CHANGE_PROBABILITY (reflected at the ends)."""
    if dist.shape[1] < 2:
        return dist
    up = np.concatenate([dist[:, :1], dist[:, :-1]], axis=1)
    down = np.concatenate([dist[:, 1:], dist[:, -1:]], axis=1)
    return (1.0 - SPEED_CHANGE_PROBABILITY) * dist + SPEED_CHANGE_PROBABILITY / 2.0 * (up + down)


def _move(graph: PlaceGraph, cfg: SequenceConfig, step: Step, rows: np.ndarray, offset: np.ndarray,
          heading: np.ndarray, step_m: np.ndarray, step_sigma: np.ndarray | float, mass: np.ndarray,
          arrived_speed: np.ndarray) -> Moved:
    """Move mass (P, 2) of P (place, speed) hypotheses `step_m` along the robot's heading (by the odometry's motion
    where there is one); arrivals carry `arrived_speed` (P, B)."""
    xy_s, yaw_s = graph.xy[rows], graph.yaw[rows]
    known = np.isfinite(yaw_s)
    robot = np.where(known, yaw_s + heading, 0.0)  # the robot's heading (0 where the place's is unknown)
    unit = np.column_stack([np.cos(robot), np.sin(robot)])
    start = xy_s + offset
    heading_sigma = math.radians(cfg.heading_tolerance_deg)
    base = cfg.odometry_noise_m + graph.spacing_m
    if step.motion is not None:
        m = step.motion
        forward = np.column_stack([unit[:, 0] * m.dx - unit[:, 1] * m.dy, unit[:, 1] * m.dx + unit[:, 0] * m.dy])
        # A robot off a place's line (another lane) by up to the place's extent moves differently in a turn.
        sigma = np.full(rows.size, base + cfg.odometry_noise_fraction * m.distance
                        + graph.extent_sigma_m * abs(m.dyaw))
        turn, turn_sigma = m.dyaw, heading_sigma
    else:
        forward = unit * step_m[:, None]
        sigma = np.hypot(base, step_sigma)
        turn, turn_sigma = 0.0, 2.0 * heading_sigma
    centre = np.where(known[:, None], start + forward, start)
    # where the place's heading is unknown the step blurs the position in every direction
    sigma = np.hypot(sigma, np.where(known, 0.0, step_m))
    src, tgt = graph.near(centre, 3.0 * sigma + graph.spacing_m)
    xy_t, yaw_t = graph.xy[tgt], graph.yaw[tgt]
    g = np.exp(-0.5 * (np.linalg.norm(xy_t - centre[src], axis=1) / sigma[src]) ** 2)
    new_heading = robot + turn
    turn_err = angle_difference(yaw_t, new_heading[src])
    both = known[src] & np.isfinite(yaw_t)
    h = np.where(both, np.exp(-0.5 * (turn_err / turn_sigma) ** 2), 1.0)
    w = g * h
    norm = np.bincount(src, weights=w, minlength=rows.size)
    retained = _on_road(graph, xy_s, unit, known, centre, sigma, src, xy_t, g, h)
    if step.motion is not None:
        retained = retained * _heading_compatible(rows.size, src, g, h, known)
    carried = mass * np.where(norm > 0, retained, 0.0)[:, None]
    arriving = (w / np.where(norm[src] > 0, norm[src], 1.0))[:, None] * carried[src]
    # with odometry the mass lies where the motion put it (sub-place offsets); without, on the places
    landed = np.where(known[src, None], centre[src] - xy_t, 0.0) if step.motion is not None \
        else np.zeros((tgt.size, 2))
    targets = Support.gather(tgt, arriving[:, 0], arriving[:, 1], landed, np.where(both, -turn_err, 0.0),
                             arrived_speed[src])
    if step.motion is not None:  # on its road, drift and lane changes relax the carried heading
        along = np.abs(targets.heading) <= COMPATIBLE_SIGMAS * heading_sigma
        targets.heading = np.where(along, targets.heading * math.exp(-step.motion.distance / HEADING_RELAX_M),
                                   targets.heading)
    length = np.linalg.norm(targets.offset, axis=1)
    targets.offset *= np.minimum(1.0, graph.spacing_m / np.maximum(length, 1e-12))[:, None]
    return Moved(targets, mass - carried, centre, np.where(known, new_heading, np.nan), sigma,
                 int(tgt.size) + int(rows.size))


def _on_road(graph: PlaceGraph, origin: np.ndarray, unit: np.ndarray, known: np.ndarray, centre: np.ndarray,
             sigma: np.ndarray, src: np.ndarray, xy_t: np.ndarray, g: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(S,) share of each source's prediction still on mapped road: with a heading, the road goes on as far as its
    farthest place ahead of the source (any place heading: corners are noisy), and the share of the prediction
    beyond that (plus half a keyframe spacing) drove past the end of the mapped streets; without a heading, on the
    map when a heading-compatible place lies within 3 sigma."""
    count = origin.shape[0]
    near = np.zeros(count)
    np.maximum.at(near, src, ((h >= COMPATIBLE_H) & (g > math.exp(-4.5))).astype(np.float64))
    offset = xy_t - origin[src]
    ahead = (offset * unit[src]).sum(axis=1) > 0.0
    farthest = np.full(count, -np.inf)
    np.maximum.at(farthest, src[ahead], np.linalg.norm(offset[ahead], axis=1))
    predicted = np.linalg.norm(centre - origin, axis=1)
    on_road = norm_cdf((farthest - predicted + graph.spacing_m / 2.0) / sigma)
    return np.where(known, on_road, near)


def _heading_compatible(count: int, src: np.ndarray, g: np.ndarray, h: np.ndarray, known: np.ndarray) -> np.ndarray:
    """(S,) share of each source's mass that turned as the map's roads do: the best position weight among places
    heading the robot's way over the best among all (a turn into an unmapped street finds only places heading
    elsewhere: the mass leaves the map instead of being pushed onto them)."""
    best = np.zeros(count)
    best_compatible = np.zeros(count)
    np.maximum.at(best, src, g)
    np.maximum.at(best_compatible, src, g * (h >= COMPATIBLE_H))
    share = np.where(best > 0, best_compatible / np.maximum(best, 1e-300), 0.0)
    return np.where(known, share, 1.0)
