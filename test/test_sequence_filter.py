"""The sequence filter's parts one by one: the transition table, off-map tracks, the fix gate, the belief's total
under random updates (Hypothesis), and its cost counted (not timed) on a small and a million-place map."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsformer_ros.localization.sequence import CONVERGED, LOST, SEARCHING, SequenceConfig, SequenceLocalizer
from dsformer_ros.localization.sequence.belief import MAX_SUPPORT
from dsformer_ros.localization.sequence.gate import Concentration, FixGate
from dsformer_ros.localization.sequence.off_map import MAX_TRACKS, TRACK_MAX_SIGMA_M, OffMapTracks
from dsformer_ros.localization.sequence.transitions import (
    ANYWHERE, MATCHED, OFF_MAP_TRACKED, OFF_MAP_UNKNOWN, PARTS, UNMATCHED, transition_table,
)
from test_sequence import NS, Map, World, drive, polyline, sampled, wheel

HAZARDS = dict(kidnap_probability=0.01, stop_matching_probability=0.05, rematch_probability=0.2,
               forget_probability=0.15, return_probability=0.3)


def test_transition_table_moves_each_part_as_its_setting_says() -> None:
    table = transition_table(SequenceConfig(**HAZARDS))
    assert table.shape == (len(PARTS), len(PARTS))
    assert np.allclose(table.sum(axis=1), 1.0) and (table >= 0).all()
    k = HAZARDS["kidnap_probability"]
    expected = {
        MATCHED: {MATCHED: 1 - 0.05 - k, UNMATCHED: 0.05, ANYWHERE: k},
        UNMATCHED: {MATCHED: 0.2, UNMATCHED: 1 - 0.2 - k - 0.15, ANYWHERE: k, OFF_MAP_UNKNOWN: 0.15},
        ANYWHERE: {ANYWHERE: 1.0},
        OFF_MAP_TRACKED: {OFF_MAP_TRACKED: 1 - k, ANYWHERE: k},
        OFF_MAP_UNKNOWN: {OFF_MAP_UNKNOWN: 1 - k - 0.3, ANYWHERE: k + 0.3},
    }
    for source, row in expected.items():
        want = np.zeros(len(PARTS))
        for target, p in row.items():
            want[target] = p
        assert table[source] == pytest.approx(want), PARTS[source]


def test_a_frame_without_motion_applies_the_table_to_the_belief_totals() -> None:
    """Two frames with nothing retrieved and no odometry: what the second frame does to the parts' totals is one
    application of the table (motion moves nothing without a support)."""
    xy, yaw = polyline([(0.0, 0.0), (200.0, 0.0)])
    loc = Map(World(0), xy, yaw).localizer(**HAZARDS)
    empty = np.array([], dtype=np.int64)
    loc.update(0, empty, np.array([]), 0.0)
    before = loc.belief.masses()
    loc.update(NS, empty, np.array([]), 0.0)
    assert loc.belief.masses() == pytest.approx(before @ transition_table(loc.config), rel=1e-9)


def test_off_map_tracks_merge_per_cell_and_heading_and_give_up_what_they_cannot_keep() -> None:
    tracks = OffMapTracks.empty()
    given_up = tracks.add(np.array([[1.0, 1.0], [3.0, 1.0], [1.0, 1.0]]), np.array([0.1, 0.2, math.pi]),
                          np.array([2.0, 2.0, 2.0]), np.array([0.1, 0.3, 0.2]), 0.0)
    assert given_up == 0.0 and tracks.mass.size == 2  # the first two share a 5 m cell and heading bin
    merged = int(np.argmax(tracks.mass))
    assert tracks.mass[merged] == pytest.approx(0.4) and tracks.xy[merged] == pytest.approx([2.5, 1.0])
    assert tracks.sigma[merged] == pytest.approx(math.sqrt(4.0 + 0.75))  # own sigma plus the spread of the merged
    assert tracks.total() == pytest.approx(0.6)
    many = np.column_stack([np.arange(100) * 10.0, np.zeros(100)])
    tracks = OffMapTracks.empty()
    given_up = tracks.add(many, np.zeros(100), np.full(100, 1.0), np.arange(1, 101) / 1000.0, 0.005)
    kept = tracks.mass.size
    assert kept == MAX_TRACKS and tracks.mass.min() >= 0.037  # the largest 64
    assert given_up == pytest.approx(np.arange(1, 37).sum() / 1000.0)
    lost = OffMapTracks.empty()
    assert lost.add(np.zeros((1, 2)), np.zeros(1), np.array([TRACK_MAX_SIGMA_M + 1]), np.array([0.5]), 0.0) == 0.5


def concentration(**changes) -> Concentration:
    base = dict(best_place_id=7, mass=0.95, mass_without_twin=0.95, matched=0.9, look_alike=0.0, unmatched_or_off=0.05,
                off_map=0.01, tracked=0.0, frame_evidence=1.0, best_match_among=True)
    return Concentration(**{**base, **changes})


def test_fix_gate_states_and_reasons() -> None:
    cfg = SequenceConfig()

    def judged(**changes) -> tuple[str, str]:
        return FixGate(cfg, 0.01).judge(concentration(**changes))

    state, reason = judged()
    assert state == CONVERGED and "of place 7" in reason
    state, reason = judged(mass=0.5, mass_without_twin=0.5, unmatched_or_off=0.8, off_map=0.8, tracked=0.7)
    assert state == LOST and "drove off the mapped roads" in reason
    state, reason = judged(mass=0.5, mass_without_twin=0.5, unmatched_or_off=0.8, off_map=0.8, tracked=0.0)
    assert state == LOST and "kidnapped" in reason
    state, reason = judged(mass=0.6, mass_without_twin=0.95, look_alike=0.35)
    assert state == SEARCHING and "looks like these places" in reason
    state, reason = judged(frame_evidence=-2.0)
    assert state == SEARCHING and "no better than unrelated" in reason
    state, reason = judged(matched=0.2)
    assert state == SEARCHING and "matches the frames" in reason
    state, reason = judged(mass=0.3, mass_without_twin=0.3)
    assert state == SEARCHING and "30.0% of the on-map belief" in reason


def test_fix_gate_refuses_a_contradicting_frame_whatever_the_credit() -> None:
    """After strong frames the running agreement carries credit; a frame against the places by 0.85 nats leaves the
    agreement above agreement_evidence, but contradiction_evidence (0.75) refuses the fix; at 20 nats it is given."""
    for limit, want in ((0.75, SEARCHING), (20.0, CONVERGED)):
        gate = FixGate(SequenceConfig(contradiction_evidence=limit, keep_evidence=20.0), 0.001)
        for _ in range(5):
            assert gate.judge(concentration(frame_evidence=4.0))[0] == CONVERGED
        state, _ = gate.judge(concentration(frame_evidence=-0.85, best_match_among=False))
        assert gate.agreement >= gate.cfg.agreement_evidence and state == want


def test_fix_gate_keeps_a_fix_through_a_weak_frame_but_starts_none_on_one() -> None:
    weak = dict(frame_evidence=-0.5, best_match_among=True)
    gate = FixGate(SequenceConfig(agreement_evidence=1.0, keep_evidence=0.0), 0.01)
    assert gate.judge(concentration(frame_evidence=2.0))[0] == CONVERGED
    state, reason = gate.judge(concentration(**weak))
    assert state == CONVERGED and "kept" in reason
    assert FixGate(SequenceConfig(agreement_evidence=1.0), 0.01).judge(concentration(**weak))[0] == SEARCHING
    gate.judge(concentration(frame_evidence=2.0))
    assert gate.judge(concentration(frame_evidence=-0.5, best_match_among=False))[0] == SEARCHING


@pytest.fixture(scope="module")
def corner_map() -> Map:
    xy, yaw = polyline([(0.0, 0.0), (120.0, 0.0), (120.0, 80.0)])
    return Map(World(4), xy, yaw)


frame_strategy = st.fixed_dictionaries({
    "dx": st.floats(-2.0, 15.0), "dy": st.floats(-2.0, 2.0), "dyaw": st.floats(-1.0, 1.0),
    "odometry": st.booleans(), "stamped": st.booleans(), "reset": st.booleans(), "count": st.integers(0, 60),
    "seed": st.integers(0, 2**31), "spread": st.floats(0.0, 0.5), "reference": st.floats(-0.2, 0.2),
})


@given(frames=st.lists(frame_strategy, min_size=1, max_size=25), hazards=st.fixed_dictionaries({
    "kidnap_probability": st.floats(0.0, 0.3), "stop_matching_probability": st.floats(0.0, 0.3),
    "rematch_probability": st.floats(0.0, 0.3), "forget_probability": st.floats(0.0, 0.3),
    "return_probability": st.floats(0.0, 0.5)}))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_the_belief_sums_to_one_and_stays_finite_and_non_negative(corner_map: Map, frames, hazards) -> None:
    loc = corner_map.localizer(**hazards)
    pose = np.zeros(3)
    for k, f in enumerate(frames):
        stamp = k * NS // 2
        if f["reset"] and k % 7 == 3:
            loc.reset()
        if f["odometry"]:
            pose = pose + [f["dx"] * math.cos(pose[2]), f["dx"] * math.sin(pose[2]), f["dyaw"]]
            loc.add_odometry(stamp, *pose)
        rng = np.random.default_rng(f["seed"])
        rows = rng.choice(loc.n, size=min(f["count"], loc.n), replace=False)
        scores = np.sort(rng.uniform(-0.2, 0.2 + f["spread"], rows.size))[::-1]
        decision = loc.update(stamp if f["stamped"] else None, rows, scores, f["reference"])
        belief = loc.belief
        parts = belief.masses()
        assert parts.sum() == pytest.approx(1.0, abs=1e-9) and np.isfinite(parts).all() and (parts >= 0).all()
        s = belief.support
        assert (s.matched >= -1e-15).all() and (s.unmatched >= 0).all() and len(s) <= MAX_SUPPORT
        assert np.isfinite(s.offset).all() and np.isfinite(s.heading).all()
        assert np.allclose(s.speed.sum(axis=1), 1.0) and (s.speed >= 0).all()
        assert (belief.tracks.mass >= 0).all() and belief.anywhere >= 0 and belief.off_map_unknown >= 0
        twin = loc.look_alike
        assert (twin.mass >= -1e-15).all() and twin.level >= 0 and np.isfinite(twin.mass).all()
        assert 0.0 <= decision.concentrated_mass <= 1.0 + 1e-9


def grid_places(x0: float, blocks: int, block_m: float = 100.0, spacing_m: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """Places every `spacing_m` along both directions of every street of a square grid of `blocks` blocks."""
    line = np.arange(0.0, blocks * block_m, spacing_m)
    streets = np.arange(0.0, blocks * block_m + 1, block_m)
    xy, yaw = [], []
    for s in streets:
        for sign, angle in ((1.0, 0.0), (-1.0, math.pi)):
            xy.append(np.column_stack([x0 + line, np.full(line.size, s + 1.75 * sign)]))
            yaw.append(np.full(line.size, angle))
            xy.append(np.column_stack([np.full(line.size, x0 + s - 1.75 * sign), line]))
            yaw.append(np.full(line.size, angle + math.pi / 2.0))
    return np.concatenate(xy), np.concatenate(yaw)


def test_places_touched_per_update_do_not_grow_with_the_map() -> None:
    """The same drive, with the same retrieval, on a 10 km^2 district alone and with a city of a million more places
    far away: the places each update reads or writes are counted (not timed), from the cold start through tracking,
    a relocalization and a drive off the map; the big map touches no more."""
    small_xy, small_yaw = grid_places(0.0, 5)
    district = Map(World(6), small_xy, small_yaw)
    far_xy, far_yaw = grid_places(50_000.0, 250)
    big_xy, big_yaw = np.concatenate([small_xy, far_xy]), np.concatenate([small_yaw, far_yaw])
    assert big_xy.shape[0] >= 1_000_000
    path_xy, path_yaw = drive(*sampled(*polyline([(0.0, 1.75), (300.0, 1.75), (300.0, 600.0)]), 2.0, 4.0), lane=0.0)
    touched = {}
    for name, (xy, yaw) in {"small": (small_xy, small_yaw), "big": (big_xy, big_yaw)}.items():
        loc = SequenceLocalizer(xy, yaw, np.arange(len(xy)), district.model, SequenceConfig(), floor_sigma_m=1.0)
        rng, odometry, counts = np.random.default_rng(2), wheel(), []
        for k in range(len(path_xy)):
            stamp = k * NS // 2
            loc.add_odometry(stamp, *odometry(k, path_xy[k], path_yaw[k]))
            if k == 60:
                loc.reset()
            query = district.world.describe(path_xy[k], path_yaw[k], 0.5, rng)[0]
            scores = district.descriptors @ query
            rows = np.argsort(-scores)[:50]
            loc.update(stamp, rows, scores[rows], float(np.median(district.reference @ query)))
            counts.append(loc.status()["sequence_places_touched"])
        touched[name] = np.array(counts)
    assert touched["small"].max() > 0
    assert touched["big"].max() <= 1.2 * touched["small"].max()
    assert touched["big"].sum() <= 1.2 * touched["small"].sum()
