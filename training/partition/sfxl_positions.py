"""SF-XL-like panorama positions: a street grid driven many times, each drive with its own lateral offset.

Used to test and time the partitions at SF-XL scale (about 3.4 M positions) without the data set. The grid side is
chosen so that the street density (positions per metre of street) stays the same whatever the number of positions,
as in SF-XL where more data means a larger city, not denser streets.
"""
from __future__ import annotations

import numpy as np


def sfxl_like_positions(
    n: int,
    seed: int = 0,
    block_m: float = 100.0,
    spacing_m: float = 8.0,
    per_metre: float = 1.0,
    lane_sigma_m: float = 1.5,
    gps_sigma_m: float = 0.5,
    street_jitter_m: float = 20.0,
    rotation_deg: float = 0.0,
    origin: tuple[float, float] = (543_000.0, 4_176_000.0),
) -> np.ndarray:
    """(n, 2) float64 UTM east/north: streets every `block_m` metres both ways, driven with samples every `spacing_m`.

    Each drive runs the full length of one street with a random start phase and a lateral lane offset drawn from
    N(0, lane_sigma_m), plus per-sample GPS noise N(0, gps_sigma_m); each street is shifted sideways by up to
    `street_jitter_m` so that streets do not line up with partition strips; `per_metre` positions per metre of street
    overall sets the grid side. Deterministic for a given seed.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if block_m <= 0 or spacing_m <= 0 or per_metre <= 0:
        raise ValueError("block_m, spacing_m and per_metre must be positive")
    if lane_sigma_m < 0 or gps_sigma_m < 0 or street_jitter_m < 0:
        raise ValueError("lane_sigma_m, gps_sigma_m and street_jitter_m must not be negative")
    rng = np.random.default_rng(seed)
    streets_per_axis = max(1, int(round(np.sqrt(n / (2.0 * per_metre * block_m)))))
    side = streets_per_axis * block_m
    per_drive = max(1, int(side // spacing_m))
    shift = rng.uniform(-street_jitter_m, street_jitter_m, size=(2, streets_per_axis))
    drives = -(-n // per_drive)
    axis = rng.integers(0, 2, size=drives)
    street = rng.integers(0, streets_per_axis, size=drives)
    phase = rng.uniform(0.0, spacing_m, size=drives)
    lane = rng.normal(0.0, lane_sigma_m, size=drives)
    drive = np.arange(n) // per_drive
    along = phase[drive] + (np.arange(n) % per_drive) * spacing_m
    across = street[drive] * block_m + block_m / 2 + shift[axis, street][drive] + lane[drive]
    across = across + rng.normal(0.0, gps_sigma_m, size=n)
    along = along + rng.normal(0.0, gps_sigma_m, size=n)
    horizontal = axis[drive] == 0
    local = np.empty((n, 2))
    local[:, 0] = np.where(horizontal, along, across)
    local[:, 1] = np.where(horizontal, across, along)
    theta = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return local @ rot.T + np.asarray(origin, dtype=np.float64)
