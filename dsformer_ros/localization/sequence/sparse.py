"""Mass over the map's places held sparsely: a uniform level for every place plus an excess on sorted rows."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def positions_in(sorted_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Position of each of `rows` in `sorted_rows`, -1 where it is not there."""
    at = np.searchsorted(sorted_rows, rows)
    found = at < sorted_rows.size
    found[found] = sorted_rows[at[found]] == rows[found]
    return np.where(found, at, -1)


def weigh_excess(level: float, excess: np.ndarray, log_ratio: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    """Multiply the mass level + excess of some places by exp(log_ratio), every other place's by exp(floor): the
    new excess of those places over the new level, and the new level."""
    new_level = level * float(np.exp(floor))
    return (level + excess) * np.exp(log_ratio) - new_level, new_level


def largest(excess: np.ndarray, floor: float, cap: int) -> np.ndarray:
    """Sorted indices of the excesses above `floor`, at most the `cap` largest."""
    keep = np.flatnonzero(excess > floor)
    if keep.size > cap:
        keep = np.sort(keep[np.argpartition(-excess[keep], cap)[:cap]])
    return keep


@dataclass
class Support:
    """Places holding mass above a uniform level, sorted by row, with what each one carries."""

    rows: np.ndarray  # (S,) int64, sorted
    matched: np.ndarray  # (S,) excess mass whose views match
    unmatched: np.ndarray  # (S,) mass whose views match nothing
    offset: np.ndarray  # (S, 2) where the mass lies relative to the place (m, UTM)
    heading: np.ndarray  # (S,) robot heading minus the place's heading (rad)
    speed: np.ndarray  # (S, B) the robot's speed: probability of each of motion.speed_bins

    @classmethod
    def empty(cls, bins: int) -> "Support":
        """No place (`bins` speed bins)."""
        z = np.zeros(0)
        return cls(np.zeros(0, dtype=np.int64), z, z, np.zeros((0, 2)), z, np.zeros((0, bins)))

    @classmethod
    def gather(cls, rows: np.ndarray, matched: np.ndarray, unmatched: np.ndarray, offset: np.ndarray,
               heading: np.ndarray, speed: np.ndarray) -> "Support":
        """Entries that may name a row several times, merged per row: masses add, the rest is mass-weighted (the
        heading as a circular mean)."""
        targets, slot = np.unique(rows, return_inverse=True)

        def total(values: np.ndarray) -> np.ndarray:
            return np.bincount(slot, weights=values, minlength=targets.size)

        weight = np.maximum(matched + unmatched, 0.0)
        safe = np.maximum(total(weight), 1e-300)
        speeds = np.column_stack([total(weight * speed[:, b]) for b in range(speed.shape[1])])
        norm = speeds.sum(axis=1, keepdims=True)
        speeds = np.where(norm > 0, speeds / np.where(norm > 0, norm, 1.0), 1.0 / speed.shape[1])
        return cls(
            rows=targets, matched=total(matched), unmatched=total(unmatched),
            offset=np.column_stack([total(weight * offset[:, c]) / safe for c in (0, 1)]),
            heading=np.arctan2(total(weight * np.sin(heading)), total(weight * np.cos(heading))),
            speed=speeds,
        )

    def __len__(self) -> int:
        return int(self.rows.size)

    def take(self, keep: np.ndarray | slice) -> "Support":
        """The entries selected by `keep`."""
        return Support(self.rows[keep], self.matched[keep], self.unmatched[keep], self.offset[keep],
                       self.heading[keep], self.speed[keep])

    def concat(self, other: "Support") -> "Support":
        """Both supports' entries (rows may repeat: gather them)."""
        return Support(*(np.concatenate([getattr(self, f), getattr(other, f)])
                         for f in ("rows", "matched", "unmatched", "offset", "heading", "speed")))

    def index(self, rows: np.ndarray) -> np.ndarray:
        """Position of each row in the support, -1 where it is not there."""
        return positions_in(self.rows, rows)

    def with_rows(self, rows: np.ndarray, speed: np.ndarray) -> "Support":
        """The support with `rows` added where missing (no excess, nothing carried, the speed distribution given)."""
        new = np.setdiff1d(rows, self.rows)
        if new.size == 0:
            return self
        z = np.zeros(new.size)
        added = Support(new, z, z, np.zeros((new.size, 2)), z, np.tile(speed, (new.size, 1)))
        merged = self.concat(added)
        return merged.take(np.argsort(merged.rows, kind="stable"))
