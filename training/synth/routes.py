"""Routes along the town's streets and the camera trajectory driven on them (lane offset, smooth lateral and yaw jitter).

A route is a list of street intersections (i, j) = (xs[i], ys[j]); corners are rounded with quadratic Bezier arcs.
Yaw is in radians counter-clockwise from east; the lane offset is metres to the right of the street centreline.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from training.synth.render import Pose
from training.synth.town import Town

ROUTE_KINDS = ("random", "serpentine")


@dataclass(frozen=True)
class Trajectory:
    """A route's driving line sampled densely: arc length s (m), position (m) and heading (unwrapped radians)."""

    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray

    @property
    def length(self) -> float:
        """Length of the driving line in metres."""
        return float(self.s[-1])


def _neighbours(node: tuple[int, int], nx: int, ny: int) -> list[tuple[int, int]]:
    i, j = node
    cand = [(i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)]
    return [(a, b) for a, b in cand if 0 <= a < nx and 0 <= b < ny]


def _node_xy(town: Town, node: tuple[int, int]) -> np.ndarray:
    return np.array([town.xs[node[0]], town.ys[node[1]]])


def random_route(town: Town, seed: int, min_length_m: float) -> list[tuple[int, int]]:
    """A random walk over intersections (no U-turns) at least `min_length_m` long; same seed, same route."""
    nx, ny = len(town.xs), len(town.ys)
    rng = np.random.default_rng([town.spec.seed, 11, seed])
    nodes = [(int(rng.integers(nx)), int(rng.integers(ny)))]
    length = 0.0
    while length < min_length_m:
        options = [n for n in _neighbours(nodes[-1], nx, ny) if len(nodes) < 2 or n != nodes[-2]]
        nxt = options[int(rng.integers(len(options)))]
        length += float(np.linalg.norm(_node_xy(town, nxt) - _node_xy(town, nodes[-1])))
        nodes.append(nxt)
    return nodes


def serpentine_route(town: Town) -> list[tuple[int, int]]:
    """Every east-west street in a serpentine, then every north-south street back: covers all streets."""
    nx, ny = len(town.xs), len(town.ys)
    nodes: list[tuple[int, int]] = []
    for j in range(ny):
        row = [(i, j) for i in range(nx)]
        nodes += row if j % 2 == 0 else row[::-1]
    i_end = nodes[-1][0]
    order = range(nx) if i_end == 0 else range(nx - 1, -1, -1)
    for k, i in enumerate(order):
        col = [(i, j) for j in range(ny - 1, -1, -1)] if k % 2 == 0 else [(i, j) for j in range(ny)]
        if nodes[-1] != col[0]:
            nodes.append(col[0])
        nodes += col[1:]
    return nodes


def build_trajectory(town: Town, nodes: list[tuple[int, int]], lane_offset_m: float, corner_radius_m: float = 9.0) -> Trajectory:
    """The driving line through `nodes`, corners rounded, shifted `lane_offset_m` to the right of travel."""
    if len(nodes) < 2:
        raise ValueError("a route needs at least two intersections")
    pts = np.array([_node_xy(town, n) for n in nodes])
    step = 0.25
    out = [pts[0:1]]
    for k in range(len(pts) - 1):
        a, b = pts[k], pts[k + 1]
        seg = np.linalg.norm(b - a)
        d = (b - a) / seg
        start = a + d * (min(corner_radius_m, seg / 2) if k > 0 else 0.0)
        end = b - d * (min(corner_radius_m, seg / 2) if k < len(pts) - 2 else 0.0)
        n = max(2, int(np.linalg.norm(end - start) / step))
        out.append(start + np.outer(np.linspace(0, 1, n), end - start))
        if k < len(pts) - 2:
            c = pts[k + 2]
            d2 = (c - b) / np.linalg.norm(c - b)
            p2 = b + d2 * min(corner_radius_m, np.linalg.norm(c - b) / 2)
            t = np.linspace(0, 1, 24)[1:-1, None]
            out.append((1 - t) ** 2 * end + 2 * (1 - t) * t * b + t**2 * p2)
    line = np.concatenate(out)
    keep = np.concatenate([[True], np.linalg.norm(np.diff(line, axis=0), axis=1) > 1e-6])
    line = line[keep]
    tangent = np.gradient(line, axis=0)
    heading = np.unwrap(np.arctan2(tangent[:, 1], tangent[:, 0]))
    right = np.stack([np.sin(heading), -np.cos(heading)], axis=1)
    line = line + lane_offset_m * right
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(line, axis=0), axis=1))])
    return Trajectory(s=s, x=line[:, 0], y=line[:, 1], heading=heading)


def _smooth_noise(rng: np.random.Generator, t: np.ndarray, period_s: tuple[float, float]) -> np.ndarray:
    """Zero-mean smooth noise with unit standard deviation: a sum of sinusoids with random periods and phases."""
    k = 4
    periods = rng.uniform(*period_s, size=k)
    phases = rng.uniform(0, 2 * np.pi, size=k)
    return np.sum(np.sin(2 * np.pi * t[:, None] / periods + phases), axis=1) * math.sqrt(2.0 / k)


def poses_at(
    traj: Trajectory,
    times_s: np.ndarray,
    speed_mps: float,
    seed: int,
    lateral_jitter_m: float = 0.2,
    yaw_jitter_deg: float = 1.5,
) -> list[Pose]:
    """Camera poses at `times_s` driving `traj` at constant speed, with smooth lateral and yaw wobble."""
    s = np.asarray(times_s, dtype=np.float64) * speed_mps
    if s.size and s[-1] > traj.length + 1e-6:
        raise ValueError(f"the drive needs {s[-1]:.0f} m but the route is only {traj.length:.0f} m long")
    rng = np.random.default_rng([seed, 23])
    x = np.interp(s, traj.s, traj.x)
    y = np.interp(s, traj.s, traj.y)
    heading = np.interp(s, traj.s, traj.heading)
    lateral = lateral_jitter_m * _smooth_noise(rng, times_s, (6.0, 20.0))
    yaw = heading + math.radians(yaw_jitter_deg) * _smooth_noise(rng, times_s, (2.0, 9.0))
    x = x + lateral * np.sin(heading)
    y = y - lateral * np.cos(heading)
    return [Pose(float(a), float(b), float(c)) for a, b, c in zip(x, y, yaw)]


def _edge(a: tuple[int, int], b: tuple[int, int]) -> frozenset:
    return frozenset((a, b))


def detour_route(
    town: Town, nodes: list[tuple[int, int]], after_m: float, min_length_m: float, seed: int
) -> list[tuple[int, int]]:
    """`nodes` for the first `after_m` metres, then a random walk (no U-turns) over streets `nodes` never uses.

    The drive leaves the mapped route for streets with no map places (an off-map stretch); where every way on
    lies on the route, it takes one anyway and leaves again at the next intersection.
    """
    used = {_edge(a, b) for a, b in zip(nodes[:-1], nodes[1:])}
    out = [nodes[0]]
    length = 0.0
    for node in nodes[1:]:
        if length >= after_m:
            break
        length += float(np.linalg.norm(_node_xy(town, node) - _node_xy(town, out[-1])))
        out.append(node)
    rng = np.random.default_rng([town.spec.seed, 13, seed])
    nx, ny = len(town.xs), len(town.ys)
    while length < min_length_m:
        options = [n for n in _neighbours(out[-1], nx, ny) if len(out) < 2 or n != out[-2]]
        fresh = [n for n in options if _edge(out[-1], n) not in used]
        pick = fresh or options
        nxt = pick[int(rng.integers(len(pick)))]
        length += float(np.linalg.norm(_node_xy(town, nxt) - _node_xy(town, out[-1])))
        out.append(nxt)
    return out


def make_route(town: Town, kind: str, seed: int, min_length_m: float) -> list[tuple[int, int]]:
    """The intersections of route `kind` ('random' walk with `seed`, or 'serpentine' over all streets)."""
    if kind == "random":
        return random_route(town, seed, min_length_m)
    if kind == "serpentine":
        return serpentine_route(town)
    raise ValueError(f"route kind must be one of {', '.join(ROUTE_KINDS)}, got {kind!r}")
