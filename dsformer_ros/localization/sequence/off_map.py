"""Off the map: the dead-reckoned tracks of mass that drove off the mapped roads, and the look-alike twin.

A track is mass that left the map at a known pose; the odometry moves it like the robot, and it comes back only
where its pose meets mapped places ahead of or beside it that head its way (the robot drove back onto a mapped
road), not uniformly over the map where a look-alike street would pick it up.

The look-alike twin is kept beside the belief, not in it: "off the map, on an unmapped street that looks like place
i". Every frame the tracked off-map mass feeds it the map's alias rate, uniformly; it moves and is weighed like the
belief at the same places, and fades over LOOK_ALIKE_LENGTH_M of driving (a street resembles a mapped road for a
stretch, not for ever). A sequence of agreeing views after the belief drove off the map is thus weighed against
an unmapped street that keeps looking like the map, not against independent per-frame aliases.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dsformer_ros.common.geometry import angle_difference
from dsformer_ros.localization.odometry import Motion
from dsformer_ros.localization.sequence.motion import COMPATIBLE_SIGMAS, PlaceGraph
from dsformer_ros.localization.sequence.sparse import Support, largest, positions_in

# Tracks are merged within this cell (m) and heading bin; at most MAX_TRACKS are kept, and one whose position is
# no better known than TRACK_MAX_SIGMA_M joins the off-map mass of unknown position.
TRACK_CELL_M = 5.0
TRACK_HEADING_BINS = 8
MAX_TRACKS = 64
TRACK_MAX_SIGMA_M = 60.0
# Off-map mass below this share of the belief changes no decision: a smaller track joins the off-map mass of unknown
# position (while tracking, the tail of the prediction beyond a road's end leaks a little every frame), a smaller
# look-alike excess the twin's uniform level.
OFF_MAP_MIN_SHARE = 1e-6
# The look-alike twin fades with the distance driven on this scale (m).
LOOK_ALIKE_LENGTH_M = 50.0


@dataclass
class OffMapTracks:
    """Mass off the map at dead-reckoned poses."""

    xy: np.ndarray  # (M, 2) UTM
    yaw: np.ndarray  # (M,) ENU heading (rad)
    sigma: np.ndarray  # (M,) position sigma (m)
    mass: np.ndarray  # (M,)

    @classmethod
    def empty(cls) -> "OffMapTracks":
        """No track."""
        return cls(np.zeros((0, 2)), np.zeros(0), np.zeros(0), np.zeros(0))

    def total(self) -> float:
        """Mass of all tracks."""
        return float(self.mass.sum())

    def move(self, motion: Motion, noise_m: float, noise_fraction: float) -> None:
        """Dead-reckon every track by the motion (robot frame); its sigma grows by `noise_fraction` of the distance
        and `noise_m` per step."""
        c, s = np.cos(self.yaw), np.sin(self.yaw)
        self.xy = self.xy + np.column_stack([c * motion.dx - s * motion.dy, s * motion.dx + c * motion.dy])
        self.yaw = self.yaw + motion.dyaw
        self.sigma = np.hypot(self.sigma + noise_fraction * motion.distance, noise_m)

    def add(self, xy: np.ndarray, yaw: np.ndarray, sigma: np.ndarray, mass: np.ndarray, min_mass: float) -> float:
        """Add tracks, merge those sharing a cell and heading bin, keep the largest; returns the mass given up (too
        many tracks, below `min_mass`, or positions no longer known) for the off-map mass of unknown position."""
        xy, yaw = np.vstack([self.xy, xy]), np.concatenate([self.yaw, yaw])
        sigma, mass = np.concatenate([self.sigma, sigma]), np.concatenate([self.mass, mass])
        keep = mass > 0
        xy, yaw, sigma, mass = xy[keep], yaw[keep], sigma[keep], mass[keep]
        if mass.size == 0:
            self.xy, self.yaw, self.sigma, self.mass = xy, yaw, sigma, mass
            return 0.0
        bins = np.floor(np.mod(yaw, 2.0 * math.pi) / (2.0 * math.pi) * TRACK_HEADING_BINS).astype(np.int64)
        keys = np.column_stack([np.floor(xy / TRACK_CELL_M).astype(np.int64), bins])
        _, group = np.unique(keys, axis=0, return_inverse=True)
        group = group.reshape(-1)
        total = np.bincount(group, weights=mass)
        mean = np.column_stack([np.bincount(group, weights=mass * xy[:, k]) / total for k in (0, 1)])
        heading = np.arctan2(np.bincount(group, weights=mass * np.sin(yaw)),
                             np.bincount(group, weights=mass * np.cos(yaw)))
        spread = np.sum((xy - mean[group]) ** 2, axis=1)
        var = np.bincount(group, weights=mass * (sigma**2 + spread)) / total
        order = np.argsort(-total)
        keep = np.zeros(total.size, dtype=bool)
        keep[order[:MAX_TRACKS]] = True
        keep &= (np.sqrt(var) <= TRACK_MAX_SIGMA_M) & (total >= min_mass)
        self.xy, self.yaw, self.sigma, self.mass = mean[keep], heading[keep], np.sqrt(var[keep]), total[keep]
        return float(total[~keep].sum())

    def returning(self, graph: PlaceGraph, heading_sigma: float, speed: np.ndarray) -> tuple[Support, int]:
        """Take the mass that meets mapped places ahead of or beside a track and heading its way (in the share of
        its position likelihood at the best of them): as matched mass on those places, with its heading relative
        to theirs and the robot's `speed` distribution, and the pairs looked at. Places behind a track are the road it drove off:
        the share still on that road never left."""
        if self.mass.size == 0:
            return Support.empty(speed.size), 0
        width = np.hypot(self.sigma, graph.spacing_m)
        src, tgt = graph.near(self.xy, 3.0 * width)
        offset = graph.xy[tgt] - self.xy[src]
        miss = np.linalg.norm(offset, axis=1)
        ahead = offset[:, 0] * np.cos(self.yaw[src]) + offset[:, 1] * np.sin(self.yaw[src])
        yaw_t = graph.yaw[tgt]
        relative = np.where(np.isfinite(yaw_t), angle_difference(self.yaw[src], yaw_t), 0.0)
        heading_ok = np.abs(relative) <= COMPATIBLE_SIGMAS * heading_sigma
        w = np.exp(-0.5 * (miss / width[src]) ** 2) * heading_ok * (ahead >= -graph.spacing_m / 2.0)
        share = np.zeros(self.mass.size)
        np.maximum.at(share, src, w)
        norm = np.bincount(src, weights=w, minlength=self.mass.size)
        give = self.mass * share
        weight = w / np.where(norm[src] > 0, norm[src], 1.0) * give[src]
        self.mass = self.mass - give
        zero = np.zeros(tgt.size)
        back = Support.gather(tgt, weight, zero, np.zeros((tgt.size, 2)), relative, np.tile(speed, (tgt.size, 1)))
        return back, int(tgt.size)


@dataclass
class LookAlike:
    """The look-alike twin: a uniform level per place plus a sparse excess on some places (sorted rows)."""

    rows: np.ndarray
    mass: np.ndarray
    level: float = 0.0

    @classmethod
    def empty(cls) -> "LookAlike":
        """No twin."""
        return cls(np.zeros(0, dtype=np.int64), np.zeros(0))

    def pruned(self, places: int, floor: float, cap: int) -> "LookAlike":
        """The twin with excesses below `floor` folded into its level (over `places` places), at most `cap` places
        kept."""
        keep = largest(self.mass, floor, cap)
        if keep.size == self.mass.size:
            return self
        dropped = float(self.mass.sum() - self.mass[keep].sum())
        return LookAlike(self.rows[keep], self.mass[keep], self.level + dropped / places)

    def with_rows(self, rows: np.ndarray) -> "LookAlike":
        """The twin with `rows` added (no excess) where missing."""
        new = np.setdiff1d(rows, self.rows)
        if new.size == 0:
            return self
        merged = np.concatenate([self.rows, new])
        order = np.argsort(merged, kind="stable")
        return LookAlike(merged[order], np.concatenate([self.mass, np.zeros(new.size)])[order], self.level)

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Twin mass at each of `rows`."""
        at = positions_in(self.rows, rows)
        out = np.full(rows.size, self.level)
        out[at >= 0] += self.mass[at[at >= 0]]
        return out
