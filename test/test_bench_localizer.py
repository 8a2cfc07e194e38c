"""`dsformer-vpr bench-localizer` on a small city: its city, its drive, and the rows it prints and writes."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from training.bench.city import CityConfig, build_city, grid_for, places_in_grid
from training.bench.drive import DriveConfig, make_drive
from training.bench.localizer import STATES
from training.cli import main

SHORT_DRIVE = ["drive.cold_start_m=150", "drive.lost_m=30", "drive.tracking_m=60", "drive.relocalize_m=120",
               "drive.kidnap_min_m=200", "drive.after_kidnap_m=200", "drive.off_map_m=60"]


@pytest.fixture(scope="module")
def city():
    return build_city(3000, CityConfig())


def test_city_has_both_lanes_of_every_street_and_about_the_places_asked_for(city) -> None:
    assert city.places == places_in_grid(city.nx, city.ny, CityConfig())
    assert abs(city.places - 3000) < 0.25 * 3000 and grid_for(city.places, CityConfig()) == (city.nx, city.ny)
    assert city.descriptors.dtype == np.float32 and city.descriptors.shape == (city.places, 64)
    assert np.allclose(np.linalg.norm(city.descriptors, axis=1), 1.0, atol=1e-5)
    east = np.isclose(city.yaw, 0.0)
    west = np.isclose(np.abs(city.yaw), math.pi)
    assert east.sum() == west.sum() > 0, "every street is mapped in both directions"
    # The eastbound lane of street y = 100 m lies 1.75 m south of its centre line, the westbound lane 1.75 m north.
    on_street = np.abs(city.xy[:, 1] - 100.0) < 5.0
    assert np.allclose(city.xy[on_street & east, 1], 98.25) and np.allclose(city.xy[on_street & west, 1], 101.75)
    assert np.allclose(np.diff(np.sort(city.xy[on_street & east, 0])), 2.0)


def test_look_alike_blocks_resemble_their_source_block(city) -> None:
    """Views of a look-alike block and of its source at the same spot in the block score near the mix share alpha;
    views of the same spot in an unrelated block score near 0."""
    look = city.appearance
    alike = np.flatnonzero(look.source >= 0)
    originals = np.flatnonzero(look.source < 0)
    assert alike.size > 0
    cell = np.array(np.divmod(alike[0], look.shape[1])) - 1
    source = np.array(np.divmod(look.source[alike[0]], look.shape[1])) - 1
    other = np.array(np.divmod(originals[originals != look.source[alike[0]]][0], look.shape[1])) - 1
    spots = np.random.default_rng(0).uniform(10.0, 90.0, (200, 2))
    yaw = np.zeros(200)

    def looks_at(block: np.ndarray) -> np.ndarray:  # views from 8 m west of the spots, heading east
        return look.describe(block * 100.0 + spots - [8.0, 0.0], yaw)

    here, there, unrelated = looks_at(cell), looks_at(source), looks_at(other)
    assert np.median((here * there).sum(axis=1)) == pytest.approx(0.6, abs=0.15)
    assert abs(np.median((here * unrelated).sum(axis=1))) < 0.2


def test_drive_turns_gets_carried_off_unseen_by_odometry_and_leaves_the_map(city) -> None:
    cfg = DriveConfig(cold_start_m=150, lost_m=30, tracking_m=60, relocalize_m=120, kidnap_min_m=200,
                      after_kidnap_m=200, off_map_m=60)
    drive = make_drive(city, cfg)
    k = drive.kidnap_at
    assert 0 < drive.reset_at < k < drive.frames
    assert np.hypot(*(drive.xy[k] - drive.xy[k - 1])) >= 200.0, "carried at least kidnap_min_m"
    odometry_step = np.hypot(*(drive.odometry[1:, :2] - drive.odometry[:-1, :2]).T)
    assert odometry_step[k - 1] == pytest.approx(cfg.frame_step_m * cfg.odometry_scale)
    assert odometry_step.max() < 1.1 * cfg.frame_step_m * cfg.odometry_scale, "the odometry never jumps"
    assert len(np.unique(np.round(drive.yaw[:k], 3))) >= 2, "the route before the kidnap turns"
    assert drive.fog.sum() == pytest.approx(30 / cfg.frame_step_m, abs=1)
    assert drive.beyond_m[-1] > 50.0 and drive.xy[-1, 1] > city.ny * 100.0 + 50.0
    assert np.all(drive.beyond_m[:k] == 0.0) and np.all(np.diff(drive.stamp_ns) > 0)
    # The car drives 3.5 m right of its mapped lane: 5.25 m right of the street's centre line.
    assert np.min(np.abs(drive.xy[k:, 0] / 100.0 - np.round(drive.xy[k:, 0] / 100.0))) * 100.0 == pytest.approx(5.25)


def test_bench_localizer_prints_and_writes_a_row_per_state_with_the_drive_figures(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    overrides = [arg for item in SHORT_DRIVE for arg in ("--set", item)]
    assert main(["bench-localizer", "--places", "3000", "--json", str(out), *overrides]) == 0
    rows = json.loads(out.read_text())
    assert [r["state"] for r in rows] == [*STATES, "all"]
    frames = sum(r["frames"] for r in rows[:-1])
    assert rows[-1]["frames"] == frames == rows[0]["drive_frames"] > 100
    for r in rows:
        assert 2500 <= r["places"] <= 3500 and r["places_requested"] == 3000
        assert 0.0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
        assert 0 < r["places_touched"] <= r["places_touched_max"]
        assert 0 < r["held_bytes_per_place"] <= r["bytes_per_place"]
    drive = rows[0]
    assert drive["first_fix_m"] is not None and drive["first_fix_m"] <= 150.0, "a fix from a cold start"
    assert drive["reconverged_m"] is not None and drive["reconverged_m"] <= 200.0, "a fix on the straight north"
    assert drive["relocalized_m"] is not None
    assert 0 <= drive["wrong_fixes"] <= 0.05 * drive["fixes"] and drive["off_map_fixes"] == 0
    assert 0.0 < drive["tracking_fix_share"] <= 1.0
    assert 0.0 <= drive["inside_95"] <= 1.0 and 0 <= drive["outside_999"] <= drive["fixes"]
    printed = capsys.readouterr().out
    assert all(state in printed for state in STATES) and "kidnap->fix m" in printed


def test_bench_localizer_refuses_a_city_smaller_than_one_block(capsys) -> None:
    assert main(["bench-localizer", "--places", "10"]) == 2
    assert "smallest city" in capsys.readouterr().err
