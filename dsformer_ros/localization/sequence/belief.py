"""The belief: where the robot is, as five parts (transitions.PARTS) held sparsely.

On the map, each place's mass is the uniform `anywhere` level plus, for the places in the support (the places
evidence or motion put mass on), a matched and an unmatched excess; each support place also carries where within
its cell its mass lies, the robot's heading relative to the place's, and the robot's speed (a distribution).
Off the map: dead-reckoned tracks (off_map.OffMapTracks) and one number for "position unknown". Nothing here is
proportional to the map's size: the support is capped, the rest of the map is one number.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsformer_ros.localization.sequence.off_map import OffMapTracks
from dsformer_ros.localization.sequence.sparse import Support, largest
from dsformer_ros.localization.sequence.transitions import (
    ANYWHERE, MATCHED, OFF_MAP_TRACKED, OFF_MAP_UNKNOWN, UNMATCHED,
)

# The support keeps at most this many places; the smallest excesses join `anywhere` (spreading mass lowers the
# concentration a fix needs: it can delay a fix, never create one).
MAX_SUPPORT = 2048
# An excess below this share of the whole belief changes no decision (a fix needs fix_mass of it in one place); it
# joins `anywhere`. A share, not a multiple of the `anywhere` level, so that the support does not grow with the map.
PRUNE_SHARE = 1e-6


@dataclass
class Belief:
    """The five parts over a map of `n` places; `anywhere` is per place."""

    n: int
    support: Support
    anywhere: float = 0.0
    tracks: OffMapTracks = field(default_factory=OffMapTracks.empty)
    off_map_unknown: float = 0.0

    @classmethod
    def unknown(cls, n: int, speed_bins: int) -> "Belief":
        """Nothing known: half anywhere on the map, half off it."""
        return cls(n=n, support=Support.empty(speed_bins), anywhere=0.5 / n, off_map_unknown=0.5)

    def masses(self) -> np.ndarray:
        """(5,) total mass of each part, in transitions.PARTS order."""
        out = np.zeros(5)
        out[MATCHED] = self.support.matched.sum()
        out[UNMATCHED] = self.support.unmatched.sum()
        out[ANYWHERE] = self.anywhere * self.n
        out[OFF_MAP_TRACKED] = self.tracks.total()
        out[OFF_MAP_UNKNOWN] = self.off_map_unknown
        return out

    @property
    def off_map(self) -> float:
        """Mass off the map: tracked or of unknown position."""
        return self.tracks.total() + self.off_map_unknown

    @property
    def unmatched_or_off(self) -> float:
        """Mass whose views match no map place: unmatched at a place, or off the map."""
        return float(self.support.unmatched.sum()) + self.off_map

    def on_map(self) -> float:
        """Mass on the map (matched, unmatched, anywhere)."""
        return float(self.support.matched.sum() + self.support.unmatched.sum()) + self.anywhere * self.n

    def at(self, rows: np.ndarray) -> np.ndarray:
        """Mass (matched + unmatched + anywhere) at each of `rows`."""
        where = self.support.index(rows)
        inside = where >= 0
        out = np.full(rows.size, self.anywhere)
        out[inside] += self.support.matched[where[inside]] + self.support.unmatched[where[inside]]
        return out

    def scale(self, factor: float) -> None:
        """Multiply every part by `factor`."""
        s = self.support
        s.matched = s.matched * factor
        s.unmatched = s.unmatched * factor
        self.anywhere *= factor
        self.tracks.mass = self.tracks.mass * factor
        self.off_map_unknown *= factor

    def prune(self) -> None:
        """Fold excesses below PRUNE_SHARE of the belief into `anywhere` and keep at most MAX_SUPPORT places (the
        largest)."""
        s = self.support
        excess = s.matched + s.unmatched
        keep = largest(excess, PRUNE_SHARE * float(self.masses().sum()), MAX_SUPPORT)
        if keep.size == excess.size:
            return
        dropped = float(excess.sum() - excess[keep].sum())
        self.support = s.take(keep)
        self.anywhere += dropped / self.n

    def ranked(self, k: int) -> np.ndarray:
        """The k rows holding the most on-map mass (support first; then the lowest other rows, all alike)."""
        s = self.support
        order = s.rows[np.argsort(-(s.matched + s.unmatched), kind="stable")][:k]
        if order.size >= k:
            return order
        rest = np.setdiff1d(np.arange(min(self.n, k + order.size)), order)[: k - order.size]
        return np.concatenate([order, rest])
