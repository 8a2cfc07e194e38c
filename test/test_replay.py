"""Replay evaluation: metric arithmetic, and offline vs node mode on one real synthetic bag (same recall, report, figures)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from node_assets import drive_map

from dsformer_ros.maps.placemap import PlaceMap
from training.replay.metrics import ReplayResults, compute_metrics
from training.replay.replay import ReplayConfig, run_replay
from training.synth.config import SynthConfig
from training.synth.drive import write_drive

FRAMES = 24


def test_calibration_by_hand() -> None:
    """Coverage of the fix ellipses, first fix, kidnap recovery and fixes off the map on a hand-made drive."""
    from training.replay.calibration import calibration_metrics, find_jump

    r = ReplayResults.empty_like(8, 1)
    r.stamp_ns[:] = np.arange(8) * 1_000_000_000
    r.gt_xy[:] = [[0, 0], [4, 0], [8, 0], [12, 0], [300, 0], [304, 0], [308, 0], [900, 0]]  # jump at 4; 7 off the map
    r.accepted[:] = [False, True, True, True, False, False, True, True]
    r.fix_xy[:] = [[np.nan] * 2, [5, 0], [8, 3], [12, 0.5], [np.nan] * 2, [np.nan] * 2, [309, 0], [890, 0]]
    for i in np.flatnonzero(r.accepted):
        r.fix_cov_xy[i] = np.diag([4.0, 1.0])  # sigma 2 m east, 1 m north
    map_xy = np.column_stack([np.arange(0.0, 400.0, 2.0), np.zeros(200)])
    cal = calibration_metrics(r, map_xy, 25.0)
    # normalised errors: 0.5, 3.0, 0.5, 0.5, 5.0 -> 3 of 5 within 1 sigma and within the 95 % ellipse (2.45)
    assert cal["inside_1sigma"] == pytest.approx(3 / 5) and cal["inside_95"] == pytest.approx(3 / 5)
    assert cal["median_normalised_error"] == pytest.approx(0.5)
    assert cal["first_fix"] == {"frame": 1, "distance_m": 4.0, "time_s": 1.0}
    assert find_jump(r) == 4
    assert cal["kidnap"]["frame"] == 4 and cal["kidnap"]["recovered_after_m"] == pytest.approx(8.0)
    assert cal["fixes_off_map"] == 1 and cal["frames_off_map"] == 1


def test_lateral_sigma_is_fitted_from_fixes_by_hand() -> None:
    """The lateral term replaced by each grid value: fixes 3 m across the road need 0.8 m, pooled drives add up."""
    from training.replay.calibration import (
        LATERAL_GRID_M,
        fit_lateral_sigma,
        lateral_coverage,
        lateral_summary,
        pool_lateral,
    )

    def drive(across: list[float], yaw: float) -> ReplayResults:
        r = ReplayResults.empty_like(len(across), 1)
        r.gt_xy[:] = 0.0
        r.accepted[:] = True
        normal = np.array([-math.sin(yaw), math.cos(yaw)])
        r.fix_xy[:] = np.outer(across, normal)
        r.fix_yaw[:] = yaw
        r.fix_cov_xy[:] = np.eye(2) + 2.8**2 * np.outer(normal, normal)  # 1 m everywhere plus 2.8 m across
        return r

    # 3 m across, 1 m elsewhere: inside the 95 % ellipse once 9 / (1 + l^2) <= 5.991, l >= 0.71 m
    road = lateral_coverage(drive([3.0] * 19 + [40.0], yaw=0.3), lateral_sigma_m=2.8)
    assert road["fixes"] == 20 and road["inside_95_at_configured"] == 19
    assert fit_lateral_sigma(road) == pytest.approx(0.8)
    assert road["inside_95"][LATERAL_GRID_M.index(0.7)] == 0 and road["inside_95"][LATERAL_GRID_M.index(2.8)] == 19
    # a wrong fix 40 m away is beyond any lanes: with two of them no value covers 95 %
    worse = lateral_coverage(drive([3.0] * 18 + [40.0, 40.0], yaw=-2.0), lateral_sigma_m=2.8)
    pooled = pool_lateral([road, worse])
    assert pooled["fixes"] == 40 and fit_lateral_sigma(worse) is None and fit_lateral_sigma(pooled) is None
    assert lateral_summary(pooled)["inside_95_configured"] == pytest.approx(37 / 40)
    # yaw unknown: the lateral term was added on both axes and is replaced on both
    unknown = drive([3.0] * 20, yaw=0.0)
    unknown.fix_yaw[:] = np.nan
    unknown.fix_cov_xy[:] = (1.0 + 2.8**2) * np.eye(2)
    assert fit_lateral_sigma(lateral_coverage(unknown, 2.8)) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="share the grid and the configured"):
        pool_lateral([road, lateral_coverage(drive([3.0], 0.0), lateral_sigma_m=2.5)])


def test_metrics_by_hand() -> None:
    """Recall, fix precision/availability and percentiles on a hand-made 4-frame result."""
    r = ReplayResults.empty_like(4, 3)
    r.gt_xy[:] = [[0, 0], [100, 0], [200, 0], [np.nan, np.nan]]
    r.answered[:] = True
    # map places 10, 11, 12, 13 at x = 0, 100, 200, 400 m; candidates are map places, ids not rows
    map_xy = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0], [400.0, 0.0]])
    map_ids = np.array([10, 11, 12, 13])
    # frame 0: top-1 correct; frame 1: correct at rank 3; frame 2: all wrong; frame 3: no GPS
    r.cand_place_ids[:] = [[10, 11, 12], [10, 12, 11], [10, 11, 13], [10, 11, 12]]
    r.cand_xy[:] = map_xy[r.cand_place_ids - 10]
    r.accepted[:] = [True, True, False, True]
    r.fix_xy[:] = [[3, 4], [150, 0], [np.nan, np.nan], [0, 0]]
    r.fix_sigma_m[:] = [2.0, 3.0, np.nan, 1.0]
    r.latency_s[:] = [0.01, 0.02, 0.03, 0.04]
    m = compute_metrics(r, map_xy, map_ids, radius_m=25.0, ns=[1, 3])
    assert m["frames_with_gps"] == 3 and m["frames_evaluable"] == 3
    assert m["recall"] == {"1": pytest.approx(1 / 3), "3": pytest.approx(2 / 3)}
    assert m["fix"]["accepted"] == 3
    assert m["fix"]["precision"] == pytest.approx(0.5)  # two accepted with GPS: 5 m (ok) and 50 m (wrong)
    assert m["fix"]["availability"] == pytest.approx(2 / 3)
    assert m["fix"]["error_m"]["p50"] == pytest.approx(27.5)
    assert m["latency_ms"]["p50"] == pytest.approx(25.0)
    with pytest.raises(ValueError, match="Recall@5"):
        compute_metrics(r, map_xy, map_ids, 25.0, [5])


@pytest.fixture(scope="module")
def drive_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A day mapping bag and a dusk query bag (other lane) of one route, an untrained small checkpoint, its map."""
    root = tmp_path_factory.mktemp("replay")
    common = dict(blocks_x=3, blocks_y=3, route_seed=2, width=128, height=96, fps=2.0, frames=FRAMES)
    write_drive(SynthConfig(**common, condition="day", drive_seed=1, out=str(root / "mapping")))
    write_drive(SynthConfig(**common, condition="dusk", lane_offset_m=-1.75, drive_seed=2, compressed=True,
                            start_time_s=1_700_001_000.0, out=str(root / "query")))
    return {"root": root, "query": root / "query", **drive_map(root / "mapping", root)}


def _config(setup: dict[str, Path], mode: str) -> ReplayConfig:
    return ReplayConfig(bag=str(setup["query"]), map=str(setup["map"]), checkpoint=str(setup["checkpoint"]),
                        image_topic="/camera/image_raw/compressed", mode=mode, recall_ns=[1, 5], device="cpu",
                        out=str(setup["root"] / f"report_{mode}"), threads=1, localizer="sequence",
                        odometry_topic="/odom/wheel")


@pytest.mark.slow
def test_offline_and_node_agree(drive_setup: dict[str, Path]) -> None:
    """The node on the ROS graph (sim time, CompressedImage) gives offline mode's candidates, fixes and recall."""
    offline = run_replay(_config(drive_setup, "offline"))
    node = run_replay(_config(drive_setup, "node"))
    assert offline["metrics"]["frames"] == node["metrics"]["frames"] == FRAMES
    assert node["metrics"]["frames_answered"] == FRAMES and node["node"]["timeouts"] == 0
    assert node["node"]["exit_code"] == 0
    assert offline["metrics"]["recall"] == node["metrics"]["recall"]
    assert offline["metrics"]["fix"]["accepted"] == node["metrics"]["fix"]["accepted"]
    a = ReplayResults.load_npz(drive_setup["root"] / "report_offline" / "frames.npz")
    b = ReplayResults.load_npz(drive_setup["root"] / "report_node" / "frames.npz")
    np.testing.assert_array_equal(a.stamp_ns, b.stamp_ns)
    np.testing.assert_array_equal(a.cand_place_ids, b.cand_place_ids)
    np.testing.assert_array_equal(a.accepted, b.accepted)
    np.testing.assert_allclose(a.cand_scores, b.cand_scores, atol=1e-5)
    np.testing.assert_allclose(a.fix_xy, b.fix_xy, atol=1e-6)
    assert np.isfinite(b.latency_s).all() and (b.latency_s > 0).all()
    assert node["node"]["diagnostics"]["frames_dropped"] == "0"


def _pixels_near(image_bgr: np.ndarray, rgb: tuple[int, int, int], tol: int = 8) -> int:
    """How many pixels of a figure have (about) the colour `rgb`."""
    return int(_mask(image_bgr, rgb, tol).sum())


def _blobs(image_bgr: np.ndarray, rgb: tuple[int, int, int], tol: int = 8) -> int:
    """How many separate marks of (about) the colour `rgb` a figure holds."""
    return cv2.connectedComponents(_mask(image_bgr, rgb, tol).astype(np.uint8))[0] - 1


def _mask(image_bgr: np.ndarray, rgb: tuple[int, int, int], tol: int) -> np.ndarray:
    return np.abs(image_bgr[:, :, ::-1].astype(int) - np.array(rgb)).max(axis=2) <= tol


def _blend(rgb: tuple[int, int, int], alpha: float) -> tuple[int, int, int]:
    """`rgb` drawn with `alpha` over a white figure background."""
    return tuple(round(alpha * c + (1 - alpha) * 255) for c in rgb)


TAB_BLUE, TAB_ORANGE, TAB_GREEN, TAB_RED = (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)


def test_report_and_figures(drive_setup: dict[str, Path]) -> None:
    """report.json's numbers follow from frames.npz, the map and the bag's true track; the figures show them."""
    cfg = dataclasses.replace(_config(drive_setup, "offline"), out=str(drive_setup["root"] / "report_figs"),
                              max_frames=10)
    run_replay(cfg)
    out = Path(cfg.out)
    report = json.loads((out / "report.json").read_text())
    m = report["metrics"]
    r = ReplayResults.load_npz(out / "frames.npz")
    place_map = PlaceMap.load(drive_setup["map"])
    md = place_map.metadata
    map_xy = np.column_stack([np.asarray(md.easting), np.asarray(md.northing)])
    assert m["frames"] == len(r) == 10 and m["frames_with_gps"] == 10 and r.answered.all()
    assert report["map_places"] == len(place_map)
    # frames are the bag's first ten images, and the GPS ground truth lies on the drive's true track
    truth = _odometry(drive_setup["query"])
    assert r.stamp_ns.tolist() == sorted(truth)[:10]
    true_xy = np.array([truth[int(t)] for t in r.stamp_ns])
    assert np.hypot(*(r.gt_xy - true_xy).T).max() < 6.0  # 1.5 m GPS noise
    # each candidate is a map place at that place's position, best first
    row = {int(p): i for i, p in enumerate(md.place_id)}
    for f in range(len(r)):
        ids = r.cand_place_ids[f]
        assert (ids >= 0).all() and len(set(ids.tolist())) == len(ids)
        np.testing.assert_array_equal(r.cand_xy[f], map_xy[[row[int(p)] for p in ids]])
        assert (np.diff(r.cand_scores[f]) <= 1e-6).all()
    # recall recomputed by hand: one of the first N candidates within the radius of the GPS position
    radius = m["radius_m"]
    near = np.hypot(r.cand_xy[..., 0] - r.gt_xy[:, None, 0], r.cand_xy[..., 1] - r.gt_xy[:, None, 1]) <= radius
    to_map = np.hypot(map_xy[None, :, 0] - r.gt_xy[:, None, 0], map_xy[None, :, 1] - r.gt_xy[:, None, 1])
    evaluable = to_map.min(axis=1) <= radius
    assert m["frames_evaluable"] == int(evaluable.sum()) > 0
    for n in range(1, 6):
        expected = float(near[evaluable, :n].any(axis=1).mean())
        assert report["recall_curve"][str(n)] == pytest.approx(expected), n
        if str(n) in m["recall"]:
            assert m["recall"][str(n)] == pytest.approx(expected), n
    assert m["fix"]["accepted"] == int(r.accepted.sum())
    assert m["latency_ms"]["p50"] == pytest.approx(1000.0 * float(np.median(r.latency_s)))
    # figures: PNGs of the expected size whose marks match the numbers
    assert report["localizer"]["mode"] == "sequence"
    cal = m["calibration"]
    assert set(cal) >= {"inside_1sigma", "inside_95", "median_normalised_error", "fixes_off_map", "first_fix"}
    assert report["figures"] == ["trajectory.png", "recall.png", "errors.png", "error_vs_sigma.png"]
    images = {name: cv2.imread(str(out / name)) for name in report["figures"]}
    for name, image in images.items():
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image is not None, name
        assert image.std() > 5, f"{name} looks blank"
    # figure sizes in inches at 110 dpi, trimmed to the drawing (the trajectory keeps metres square)
    full_size = {"trajectory.png": (825, 770), "recall.png": (660, 440), "errors.png": (660, 462)}
    for name, (width, height) in full_size.items():
        h, w = images[name].shape[:2]
        assert 0.4 * height <= h <= height + 40 and 0.2 * width <= w <= width + 40, (name, w, h)
    top1 = near[:, 0]
    trajectory = images["trajectory.png"]
    # one dot per frame in green (top-1 correct) or red (wrong), plus one in the legend where the group exists
    correct, wrong = int((evaluable & top1).sum()), int((evaluable & ~top1).sum())
    assert _blobs(trajectory, TAB_GREEN) == correct + (correct > 0)
    assert _blobs(trajectory, TAB_RED) == wrong + (wrong > 0)
    assert (_pixels_near(trajectory, TAB_BLUE) > 0) == bool(r.accepted.any())
    assert _pixels_near(trajectory, (178, 178, 178)) > 0  # map places in grey (0.7)
    assert _pixels_near(images["recall.png"], TAB_BLUE) > 50  # the recall curve
    assert _pixels_near(images["errors.png"], _blend(TAB_ORANGE, 0.5), tol=6) > 200  # top-1 error histogram bars
    assert (_pixels_near(images["errors.png"], _blend(TAB_BLUE, 0.7), tol=6) > 0) == bool(r.accepted.any())


def _odometry(bag: Path) -> dict[int, tuple[float, float]]:
    """Stamp (ns) -> true (easting, northing) of a synthetic drive, from its /odom/ground_truth topic."""
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic == "/odom/ground_truth"]
        out = {}
        for conn, stamp, raw in reader.messages(connections=conns):
            pose = reader.deserialize(raw, conn.msgtype).pose.pose.position
            out[int(stamp)] = (pose.x, pose.y)
    return out


def test_bad_inputs_are_named(drive_setup: dict[str, Path], tmp_path: Path) -> None:
    """A missing map or a topic that is not in the bag fails with a message naming it."""
    cfg = dataclasses.replace(_config(drive_setup, "offline"), map=str(tmp_path / "nomap"))
    with pytest.raises(FileNotFoundError, match="map"):
        run_replay(cfg)
    cfg = dataclasses.replace(_config(drive_setup, "offline"), image_topic="/nope", out=str(tmp_path / "o"))
    with pytest.raises(ValueError, match="/nope"):
        run_replay(cfg)


def _with_bad_frames(source: Path, target: Path, bad: set[int]) -> None:
    """A copy of the bag `source` in which the image messages numbered in `bad` carry undecodable JPEG bytes."""
    from rosbags.highlevel import AnyReader
    from rosbags.typesys import Stores, get_typestore

    from training.io.bag_writer import DriveLogWriter

    store = get_typestore(Stores.ROS2_KILTED)
    with AnyReader([source], default_typestore=store) as reader, DriveLogWriter(target, "mcap") as writer:
        image = 0
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.msgtype.endswith("CompressedImage"):
                if image in bad:
                    msg.data = np.frombuffer(b"\xff\xd8\xff\xe0 sensor glitch", dtype=np.uint8)
                image += 1
            writer.write_raw(conn.topic, conn.msgtype, t, msg)


@pytest.mark.slow
def test_bad_frames_are_counted_and_skipped_in_both_modes(drive_setup: dict[str, Path]) -> None:
    """Offline replay used to abort on the first bad frame and node replay to wait frame_timeout_s for each."""
    bag = drive_setup["root"] / "query_bad_frames"
    if not bag.exists():
        _with_bad_frames(drive_setup["query"], bag, {3, 7, FRAMES - 1})
    reports = {}
    for mode in ("offline", "node"):
        cfg = dataclasses.replace(_config(drive_setup, mode), bag=str(bag), frame_timeout_s=30.0,
                                  out=str(drive_setup["root"] / f"report_bad_{mode}"))
        reports[mode] = run_replay(cfg)
    offline, node = reports["offline"], reports["node"]
    assert offline["frames_bad"] == node["frames_bad"] == 3
    assert node["node"]["timeouts"] == 0 and node["timing"]["replay_s"] < 3 * 30.0
    assert offline["metrics"]["frames_answered"] == node["metrics"]["frames_answered"] == FRAMES - 3
    assert offline["metrics"]["recall"] == node["metrics"]["recall"]
