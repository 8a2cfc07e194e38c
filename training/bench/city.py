"""A synthetic grid city for the localizer benchmark: places along every street in both lanes, and their looks.

Streets run along x = i * block_m and y = j * block_m; places lie every `spacing_m` along each street in both driving
directions, each lane `lane_m / 2` right of the centre line with the lane's heading, as a map built from drives both
ways. A place's descriptor is a smooth random field (test/test_sequence.py's `World`) of the point it looks at, 8 m
ahead; a share of the blocks are look-alikes: their facades mix those of another block (`LookalikeTown`'s model).
"""
from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting

log = logging.getLogger(__name__)

LOOK_AHEAD_M = 8.0
WAVELENGTH_M = (12.0, 40.0)
DESCRIBE_CHUNK = 65536


@dataclasses.dataclass
class CityConfig:
    """The city's layout and looks."""

    block_m: float = setting(100.0, "distance between parallel streets (m)", low=10.0)
    spacing_m: float = setting(2.0, "distance between consecutive places along a lane (m)", low=0.1)
    lane_m: float = setting(3.5, "distance between the two mapped lanes of a street (m)", low=0.0)
    dim: int = setting(64, "descriptor dimension", low=2)
    lookalike_share: float = setting(0.2, "share of the blocks whose facades resemble another block's", low=0.0,
                                     high=1.0)
    lookalike_alpha: float = setting(0.6, "how much a look-alike block resembles its source (0: not, 1: identical)",
                                     low=0.0, high=1.0)
    seed: int = setting(0, "seed of the appearance fields and the look-alike blocks")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        if self.spacing_m >= self.block_m:
            raise ConfigError(f"spacing_m ({self.spacing_m}) must be below block_m ({self.block_m})")


class Field:
    """A smooth random field: `dim` plane waves of random direction, 12-40 m wavelength and phase."""

    def __init__(self, rng: np.random.Generator, dim: int) -> None:
        angle = rng.uniform(0.0, 2.0 * np.pi, dim)
        wavelength = rng.uniform(*WAVELENGTH_M, dim)
        self.w = np.column_stack([np.cos(angle), np.sin(angle)]) * (2.0 * np.pi / wavelength)[:, None]
        self.phase = rng.uniform(0.0, 2.0 * np.pi, dim)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """(n, dim) values at (n, 2) points."""
        return np.cos(points @ self.w.T + self.phase)


class Appearance:
    """Descriptors of views: the facades looked at, look-alike blocks mixing a source block's, or fog (nothing)."""

    def __init__(self, cfg: CityConfig, nx: int, ny: int) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.facades, self.own, self.fog = Field(rng, cfg.dim), Field(rng, cfg.dim), Field(rng, cfg.dim)
        self.block_m, self.alpha = cfg.block_m, cfg.lookalike_alpha
        # Blocks (ix, iy) for ix in -1..nx, iy in -1..ny (the outer streets' far sides too), row-major by ix.
        self.shape = (nx + 2, ny + 2)
        cells = self.shape[0] * self.shape[1]
        alike = rng.random(cells) < cfg.lookalike_share
        originals = np.flatnonzero(~alike)
        self.source = np.full(cells, -1, dtype=np.int64)
        if originals.size:
            self.source[alike] = rng.choice(originals, size=int(alike.sum()))
        self.lookalike_blocks = int((self.source >= 0).sum())

    def describe(self, xy: np.ndarray, yaw: np.ndarray, noise: float = 0.0, rng: np.random.Generator | None = None,
                 fog: np.ndarray | None = None) -> np.ndarray:
        """(n, dim) L2-normalised float32 descriptors of views from `xy` heading `yaw`; Gaussian `noise` per
        component before normalising; views where `fog` show the fog field instead of the city."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
        look = xy + LOOK_AHEAD_M * np.column_stack([np.cos(yaw), np.sin(yaw)])
        cell = np.floor(look / self.block_m).astype(np.int64) + 1
        inside = (cell >= 0).all(axis=1) & (cell[:, 0] < self.shape[0]) & (cell[:, 1] < self.shape[1])
        source = np.full(len(xy), -1, dtype=np.int64)
        source[inside] = self.source[cell[inside, 0] * self.shape[1] + cell[inside, 1]]
        alike = source >= 0
        shift = np.zeros_like(look)
        shift[alike] = (cell[alike] - np.column_stack(np.divmod(source[alike], self.shape[1]))) * self.block_m
        f = self.facades(look - shift)
        if alike.any():
            f[alike] = self.alpha * f[alike] + math.sqrt(1.0 - self.alpha**2) * self.own(look[alike])
        if fog is not None and np.any(fog):
            f[fog] = self.fog(look[fog])
        if noise:
            f = f + noise * rng.standard_normal(f.shape)
        return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)


@dataclasses.dataclass
class City:
    """Places (positions, headings, descriptors) of an nx x ny block grid and the appearance that made them."""

    xy: np.ndarray
    yaw: np.ndarray
    descriptors: np.ndarray
    nx: int
    ny: int
    config: CityConfig
    appearance: Appearance

    @property
    def places(self) -> int:
        """Number of places."""
        return self.xy.shape[0]

    def window(self, count: int) -> np.ndarray:
        """Rows of the `count` places nearest the city's centre (a square), sorted: a contiguous district."""
        if count >= self.places:
            return np.arange(self.places)
        centre = np.array([self.nx, self.ny]) * self.config.block_m / 2.0
        distance = np.abs(self.xy - centre).max(axis=1)
        return np.sort(np.argpartition(distance, count)[:count])


def _along(length_m: float, spacing_m: float) -> int:
    """Places along a lane of `length_m`, both ends included."""
    return int(math.floor(length_m / spacing_m + 1e-9)) + 1


def places_in_grid(nx: int, ny: int, cfg: CityConfig) -> int:
    """Places of an nx x ny block grid: every street, both lanes."""
    b = cfg.block_m
    return 2 * ((ny + 1) * _along(nx * b, cfg.spacing_m) + (nx + 1) * _along(ny * b, cfg.spacing_m))


def grid_for(places: int, cfg: CityConfig) -> tuple[int, int]:
    """The (nx, ny) grid, ny = nx or nx + 1, whose place count is nearest `places`."""
    if places < places_in_grid(1, 1, cfg):
        raise ConfigError(f"places: {places} is below the smallest city (one block: {places_in_grid(1, 1, cfg)})")
    best, nx = (1, 1), 1
    while places_in_grid(nx, nx, cfg) <= 2 * places:
        for grid in ((nx, nx), (nx, nx + 1)):
            if abs(places_in_grid(*grid, cfg) - places) < abs(places_in_grid(*best, cfg) - places):
                best = grid
        nx += 1
    return best


def _lanes(start: np.ndarray, direction: np.ndarray, count: int, cfg: CityConfig) -> tuple[np.ndarray, np.ndarray]:
    """Places of one street from `start` along unit `direction` (`count` per lane): forward lane, then backward."""
    t = np.arange(count) * cfg.spacing_m
    centre = start + t[:, None] * direction
    right = np.array([direction[1], -direction[0]]) * cfg.lane_m / 2.0
    heading = math.atan2(direction[1], direction[0])
    xy = np.concatenate([centre + right, centre - right])
    yaw = np.concatenate([np.full(count, heading), np.full(count, math.atan2(-direction[1], -direction[0]))])
    return xy, yaw


def build_city(places: int, cfg: CityConfig) -> City:
    """The grid city with about `places` places; descriptors made in chunks, float32."""
    nx, ny = grid_for(places, cfg)
    b = cfg.block_m
    streets = [_lanes(np.array([0.0, j * b]), np.array([1.0, 0.0]), _along(nx * b, cfg.spacing_m), cfg)
               for j in range(ny + 1)]
    streets += [_lanes(np.array([i * b, 0.0]), np.array([0.0, 1.0]), _along(ny * b, cfg.spacing_m), cfg)
                for i in range(nx + 1)]
    xy = np.concatenate([s[0] for s in streets])
    yaw = np.concatenate([s[1] for s in streets])
    del streets
    appearance = Appearance(cfg, nx, ny)
    descriptors = np.empty((xy.shape[0], cfg.dim), dtype=np.float32)
    for start in range(0, xy.shape[0], DESCRIBE_CHUNK):
        part = slice(start, start + DESCRIBE_CHUNK)
        descriptors[part] = appearance.describe(xy[part], yaw[part])
    return City(xy, yaw, descriptors, nx, ny, cfg, appearance)
