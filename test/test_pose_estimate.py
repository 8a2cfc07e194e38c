"""Acceptance rules, computed covariance and temporal filter of dsformer_ros.localization.pose_estimate."""
from __future__ import annotations

import math

import numpy as np
import pytest

from dsformer_ros.common.geometry import heading_to_yaw
from dsformer_ros.localization.pose_estimate import (
    UNKNOWN_YAW_VARIANCE,
    YAW_VARIANCE_FLOOR,
    Candidates,
    TemporalFilter,
    decide,
    pose_covariance,
)

E0, N0 = 500_000.0, 5_000_000.0


def candidates(
    offsets_m: list[tuple[float, float]], scores: list[float], headings: list[float] | None = None
) -> Candidates:
    """Candidates at UTM (E0, N0) + offsets, best first."""
    n = len(offsets_m)
    xy = np.asarray(offsets_m, dtype=np.float64)
    return Candidates(
        place_id=np.arange(n, dtype=np.int64) + 100,
        score=np.asarray(scores, dtype=np.float32),
        easting=E0 + xy[:, 0],
        northing=N0 + xy[:, 1],
        heading_deg=np.full(n, np.nan) if headings is None else np.asarray(headings, dtype=np.float64),
    )


def accept(c: Candidates, temporal: TemporalFilter | None = None, **kw: float):
    """decide() with the test's default thresholds."""
    args = dict(score_threshold=0.5, agreement_radius_m=10.0, min_agreeing=2, floor_sigma_m=1.0)
    args.update(kw)
    return decide(c, temporal=temporal, **args)


def test_heading_to_yaw_converts_compass_to_enu() -> None:
    yaw = heading_to_yaw([90.0, 0.0, 180.0, 270.0, 450.0])
    np.testing.assert_allclose(yaw[:3], [0.0, math.pi / 2, -math.pi / 2], atol=1e-12)
    assert abs(abs(yaw[3]) - math.pi) < 1e-12 and abs(yaw[4]) < 1e-12
    assert np.isnan(heading_to_yaw(np.nan))


def test_accepted_fix_has_positive_definite_covariance_at_weighted_mean() -> None:
    decision = accept(candidates([(0, 0), (2, 0), (0, 2), (50, 50)], [0.9, 0.8, 0.7, 0.6]))
    fix = decision.fix
    assert decision.accepted and fix.agreeing == 3 and fix.place_id == 100
    assert fix.covariance.shape == (6, 6)
    np.testing.assert_allclose(fix.covariance, fix.covariance.T)
    assert np.linalg.eigvalsh(fix.covariance).min() > 0
    w = np.array([0.9, 0.8, 0.7]) / 2.4
    assert fix.easting == pytest.approx(E0 + w @ [0, 2, 0])
    assert fix.northing == pytest.approx(N0 + w @ [0, 0, 2])
    assert fix.covariance[2, 2] > 1e3 and fix.covariance[3, 3] > 1e3 and fix.covariance[4, 4] > 1e3


def test_covariance_grows_when_candidates_disagree() -> None:
    tight = accept(candidates([(0, 0), (1, 0), (0, 1)], [0.9, 0.9, 0.9])).fix
    loose = accept(candidates([(0, 0), (8, 0), (0, 8)], [0.9, 0.9, 0.9])).fix
    assert loose.covariance[0, 0] > tight.covariance[0, 0]
    assert loose.covariance[1, 1] > tight.covariance[1, 1]
    assert np.linalg.det(loose.covariance[:2, :2]) > np.linalg.det(tight.covariance[:2, :2])


def test_floor_from_keyframe_spacing_applies_when_candidates_coincide() -> None:
    fix = accept(candidates([(0, 0), (0, 0)], [0.9, 0.8]), floor_sigma_m=2.5).fix
    np.testing.assert_allclose(fix.covariance[:2, :2], np.eye(2) * 2.5**2)
    with pytest.raises(ValueError, match="floor_sigma_m"):
        pose_covariance(np.zeros((1, 2)), np.ones(1), np.zeros(1), 0.0)


def test_yaw_variance_is_large_when_headings_are_unknown_and_small_when_they_agree() -> None:
    unknown = accept(candidates([(0, 0), (1, 0)], [0.9, 0.8])).fix
    assert not unknown.yaw_known and unknown.covariance[5, 5] == UNKNOWN_YAW_VARIANCE
    agree = accept(candidates([(0, 0), (1, 0)], [0.9, 0.8], [90.0, 90.0])).fix
    assert agree.yaw_known and agree.yaw == pytest.approx(0.0)
    assert agree.covariance[5, 5] == pytest.approx(YAW_VARIANCE_FLOOR)
    spread = accept(candidates([(0, 0), (1, 0)], [0.9, 0.9], [60.0, 120.0])).fix
    assert spread.yaw == pytest.approx(0.0, abs=1e-9) and spread.covariance[5, 5] > agree.covariance[5, 5]
    wrap = accept(candidates([(0, 0), (1, 0)], [0.9, 0.9], [265.0, 275.0])).fix  # around west: yaw +-pi
    assert abs(abs(wrap.yaw) - math.pi) < 1e-9


def test_rejections_say_why() -> None:
    low = accept(candidates([(0, 0), (1, 0)], [0.4, 0.3]))
    assert not low.accepted and "score_threshold" in low.reason
    alone = accept(candidates([(0, 0), (30, 0), (0, 40)], [0.9, 0.8, 0.7]))
    assert not alone.accepted and "agreement_radius_m" in alone.reason and "min_agreeing=2" in alone.reason
    assert accept(candidates([(0, 0), (30, 0)], [0.9, 0.8]), min_agreeing=1).accepted
    empty = Candidates(*(np.zeros(0),) * 5)
    assert not accept(empty).accepted and accept(empty).reason == "no candidates"


def test_temporal_filter_needs_most_recent_frames_to_agree_and_recovers_after_a_jump() -> None:
    temporal = TemporalFilter(window=3, radius_m=10.0)
    here = candidates([(0, 0), (1, 0)], [0.9, 0.8])
    there = candidates([(500, 0), (501, 0)], [0.9, 0.8])
    assert accept(here, temporal).accepted  # empty history
    assert accept(here, temporal).accepted
    jump = accept(there, temporal)
    assert not jump.accepted and "temporally inconsistent" in jump.reason
    assert not accept(there, temporal).accepted  # history here, here, there: 1 of 3 agree, need 2
    assert accept(there, temporal).accepted  # history here, there, there
    temporal.reset()
    assert len(temporal) == 0 and accept(here, temporal).accepted


def test_temporal_filter_disabled_and_invalid() -> None:
    off = TemporalFilter(window=0, radius_m=1.0)
    assert not off.enabled
    assert all(off.check_and_add(float(x), 0.0)[0] for x in (0, 1000, -1000))
    with pytest.raises(ValueError, match="temporal_window"):
        TemporalFilter(window=-1, radius_m=1.0)
    with pytest.raises(ValueError, match="temporal_radius_m"):
        TemporalFilter(window=2, radius_m=0.0)
