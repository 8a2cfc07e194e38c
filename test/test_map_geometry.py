"""The map's place geometry measured from its own GPS positions: each place's drive heading and the position noise."""
from __future__ import annotations

import math

import numpy as np

from dsformer_ros.maps.similarity import drive_yaw, position_noise_m


def _l_shaped_drive(spacing_m: float, noise_m: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keyframes every `spacing_m` west for 150 m, a 10 m radius left turn, then north for 150 m, with GPS noise;
    (noisy positions, true ENU yaws, distance of each place from the turn)."""
    west = np.arange(0.0, 150.0, spacing_m)
    arc = np.arange(0.0, 0.5 * math.pi * 10.0, spacing_m)
    north = np.arange(0.0, 150.0, spacing_m)
    turn_angle = arc / 10.0
    xy = np.concatenate([
        np.column_stack([-west, np.zeros_like(west)]),
        np.column_stack([-150.0 - 10.0 * np.sin(turn_angle), -10.0 + 10.0 * np.cos(turn_angle)]),
        np.column_stack([np.full_like(north, -160.0), -10.0 - north]),
    ])
    yaw = np.concatenate([np.full(west.size, math.pi), math.pi + turn_angle, np.full(north.size, -math.pi / 2.0)])
    from_turn = np.concatenate([150.0 - west, np.zeros(arc.size), north])
    rng = np.random.default_rng(seed)
    return xy + rng.normal(0.0, noise_m, xy.shape), yaw, from_turn


def test_drive_heading_is_good_to_degrees_under_metre_level_gps_noise() -> None:
    """1.5 m GPS noise on 1.7 m keyframes: the window reaches 8 m each way in a straight line (the zig-zagging path
    length reads ~1.7x long; a window cut by it spanned a few metres and gave headings tens of degrees off)."""
    xy, truth, from_turn = _l_shaped_drive(1.7, 1.5, seed=3)
    yaw = drive_yaw(xy, np.arange(xy.shape[0]) * 250_000_000, np.zeros(xy.shape[0]))
    error = np.degrees(np.abs(np.arctan2(np.sin(yaw - truth), np.cos(yaw - truth))))
    straight = from_turn > 12.0  # the drive's two ends included: there the other side makes up the 16 m
    assert np.median(error[straight]) < 6.0, np.median(error[straight])
    assert error[straight].max() < 25.0, error[straight].max()
    assert error.max() < 60.0, error.max()  # at the turn: between the two legs' directions


def test_drive_heading_follows_each_drive_and_keeps_a_lone_place() -> None:
    """Two drives far apart in opposite directions get their own directions; a place alone keeps its stored yaw."""
    east = np.column_stack([np.arange(0.0, 60.0, 2.0), np.zeros(30)])
    west = np.column_stack([np.arange(60.0, 0.0, -2.0), np.full(30, 500.0)])
    lone = np.array([[2000.0, 2000.0]])
    xy = np.concatenate([east, west, lone])
    stamps = np.arange(xy.shape[0]) * 250_000_000
    yaw = drive_yaw(xy, stamps, np.full(xy.shape[0], 0.3))
    assert np.allclose(yaw[:30], 0.0, atol=1e-9)
    assert np.allclose(np.abs(yaw[30:60]), math.pi, atol=1e-9)
    assert yaw[60] == 0.3


def test_position_noise_is_measured_from_the_places() -> None:
    xy, _, _ = _l_shaped_drive(4.0, 0.5, seed=5)
    noise = position_noise_m(xy, np.arange(xy.shape[0]))
    assert 0.4 < noise < 0.6, noise
