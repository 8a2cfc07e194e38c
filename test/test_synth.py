"""Synthetic drives: town determinism, street-like frames, conditions, real rosbag2 logs and the '@' export."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from rosbags.highlevel import AnyReader
from rosbags.typesys import Stores, get_typestore

from dsformer_ros.common.atomic import OutputPathError
from dsformer_ros.common.geometry import yaw_to_heading
from dsformer_ros.common.utm import latlon_to_utm
from training.io.at_names import list_images, parse_at_name
from training.io.bag_writer import BagExistsError, DriveLogWriter
from training.synth.config import SynthConfig
from training.synth.drive import GeoOrigin, write_drive
from training.synth.render import CONDITIONS, FACADE, GROUND, SKY, Camera, Pose, Renderer
from training.synth.routes import build_trajectory, poses_at, random_route, serpentine_route
from training.synth.town import TownSpec, build_town

CAM = Camera(width=160, height=120)


@pytest.fixture(scope="module")
def town():
    return build_town(TownSpec(seed=3, blocks_x=2, blocks_y=2))


@pytest.fixture(scope="module")
def street_pose(town):
    return Pose(float(town.xs[1]) + 1.75, float(town.ys[0]) + 20.0, math.pi / 2)


def small_cfg(tmp_path: Path, **kw) -> SynthConfig:
    base = dict(seed=3, blocks_x=2, blocks_y=2, frames=12, width=160, height=120, fps=10.0, gps_hz=5.0)
    base.update(kw)
    return SynthConfig(**base)


def test_town_and_frames_are_deterministic_per_seed(town, street_pose):
    again = build_town(TownSpec(seed=3, blocks_x=2, blocks_y=2))
    assert np.array_equal(town.atlas, again.atlas) and np.array_equal(town.ground, again.ground)
    a = Renderer(town, CAM, CONDITIONS["day"]).render(street_pose, 0)
    b = Renderer(again, CAM, CONDITIONS["day"]).render(street_pose, 0)
    assert a.tobytes() == b.tobytes()
    other = build_town(TownSpec(seed=4, blocks_x=2, blocks_y=2))
    assert not np.array_equal(town.atlas[:, :1000], other.atlas[:, :1000])
    pose = Pose(float(other.xs[1]) + 1.75, float(other.ys[0]) + 20.0, math.pi / 2)
    c = Renderer(other, CAM, CONDITIONS["day"]).render(pose, 0)
    assert np.abs(a.astype(int) - c.astype(int)).mean() > 5


def test_frames_look_like_streets(town, street_pose):
    day = Renderer(town, CAM, CONDITIONS["day"])
    img = day.render(street_pose)
    layout = day.layout(street_pose)
    assert img.shape == (120, 160, 3) and img.dtype == np.uint8
    assert (layout[0] == SKY).mean() > 0.1  # sky visible down the street
    assert (layout[-1] == GROUND).all()  # road at the bottom
    assert (layout == FACADE).mean() > 0.25  # facades on both sides
    assert (layout[:, :20] == FACADE).mean() > 0.5 and (layout[:, -20:] == FACADE).mean() > 0.5
    facade = img[layout == FACADE]
    assert facade.std(axis=0).mean() > 15  # windows, colours, doors: not a flat wall
    night = Renderer(town, CAM, CONDITIONS["night"]).render(street_pose)
    sky = layout == SKY
    assert img[sky].mean() > 120 > night[sky].mean() + 60
    # lit windows: night facades hold some bright pixels although they are dark overall
    night_facade = night[layout == FACADE].mean(axis=1)
    assert night_facade.mean() < facade.mean() / 2 and (night_facade > 150).mean() > 0.005


def test_conditions_change_pixels_but_keep_geometry(town, street_pose):
    frames, layouts = {}, {}
    for name, cond in CONDITIONS.items():
        r = Renderer(town, CAM, cond)
        frames[name], layouts[name] = r.render(street_pose), r.layout(street_pose)
    for name in CONDITIONS:
        assert np.array_equal(layouts[name], layouts["day"])
        if name != "day":
            assert np.abs(frames[name].astype(int) - frames["day"].astype(int)).mean() > 8, name
    # fog washes out the far street centre more than the near road
    fog, day = frames["fog"].astype(int), frames["day"].astype(int)
    centre = (slice(55, 60), slice(75, 85))
    assert fog[centre].std() < day[centre].std() + 1


def test_routes_and_poses_stay_on_streets(town):
    nodes = random_route(town, seed=1, min_length_m=300.0)
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1 for a, b in zip(nodes, nodes[1:]))
    traj = build_trajectory(town, nodes, lane_offset_m=1.75)
    assert traj.length > 250.0
    poses = poses_at(traj, np.arange(0, 20, 0.1), 8.0, seed=0)
    renderer = Renderer(town, CAM, CONDITIONS["day"])
    for p in poses[::20]:
        renderer.render(p)  # raises if the camera left the streets
    steps = np.hypot(np.diff([p.x for p in poses]), np.diff([p.y for p in poses]))
    assert np.allclose(steps, 0.8, atol=0.1)
    serp = serpentine_route(town)
    assert len(set(serp)) == len(town.xs) * len(town.ys)
    assert yaw_to_heading(math.pi / 2) == 0.0 and yaw_to_heading(0.0) == 90.0


@pytest.mark.parametrize("storage,compressed", [("mcap", False), ("sqlite3", True)])
def test_drive_bag_reads_back(tmp_path, storage, compressed):
    cfg = small_cfg(tmp_path, storage=storage, compressed=compressed, out=str(tmp_path / "bag"), gps_no_fix_fraction=0.2)
    summary = write_drive(cfg)
    assert summary.frames == 12
    ts = get_typestore(Stores.ROS2_KILTED)
    origin = GeoOrigin.from_latlon(cfg.origin_lat, cfg.origin_lon)
    with AnyReader([tmp_path / "bag"], default_typestore=ts) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        types = {c.topic: c.msgtype for c in reader.connections}
        image_topic = "/camera/image_raw/compressed" if compressed else "/camera/image_raw"
        assert counts == {image_topic: 12, "/camera/camera_info": 12, "/odom/ground_truth": 12, "/gps/fix": 6,
                          "/odom/wheel": 23}
        assert types[image_topic] == ("sensor_msgs/msg/CompressedImage" if compressed else "sensor_msgs/msg/Image")
        odom, fixes, stamps = [], [], []
        for conn, t, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            assert stamp == t
            stamps.append(t)
            if conn.topic == image_topic and not compressed:
                assert (msg.width, msg.height, msg.encoding, msg.step) == (160, 120, "rgb8", 480)
            if conn.topic == image_topic and compressed:
                assert msg.format == "jpeg" and bytes(msg.data[:2]) == b"\xff\xd8"
            if conn.topic == "/camera/camera_info":
                assert msg.k[0] == pytest.approx(80.0) and msg.k[2] == pytest.approx(80.0)
            if conn.topic == "/odom/ground_truth":
                assert msg.header.frame_id == "utm"
                odom.append((msg.pose.pose.position.x, msg.pose.pose.position.y))
            if conn.topic == "/gps/fix":
                assert msg.position_covariance_type == 2
                assert msg.position_covariance[0] == pytest.approx(1.5**2)
                fixes.append((msg.status.status, msg.latitude, msg.longitude))
    assert stamps == sorted(stamps) and stamps[0] == int(cfg.start_time_s * 1e9)
    odom = np.array(odom)
    steps = np.hypot(*np.diff(odom, axis=0).T)
    assert np.allclose(steps, cfg.speed_mps / cfg.fps, atol=0.1)
    assert np.all(np.abs(odom[:, 0] - origin.easting) < 500) and np.all(np.abs(odom[:, 1] - origin.northing) < 500)
    ok = [(la, lo) for s, la, lo in fixes if s == 0]
    assert ok and any(s == -1 and math.isnan(la) for s, la, _ in fixes)
    e, n, _, _ = latlon_to_utm(np.array([p[0] for p in ok]), np.array([p[1] for p in ok]))
    d = np.hypot(e[:, None] - odom[None, :, 0], n[:, None] - odom[None, :, 1]).min(axis=1)
    assert np.all(d < 8.0)  # 1.5 m sigma noise around the true track


def test_at_export_parses_back_to_ground_truth(tmp_path):
    cfg = small_cfg(tmp_path, export_at=str(tmp_path / "at"), out=str(tmp_path / "bag"), condition="night", lane_offset_m=-1.75)
    write_drive(cfg)
    files = sorted(list_images(tmp_path / "at"), key=lambda f: parse_at_name(f).pano_id)
    assert len(files) == 12
    with AnyReader([tmp_path / "bag"], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic == "/odom/ground_truth"]
        truth = []
        for conn, _, raw in reader.messages(connections=conns):
            m = reader.deserialize(raw, conn.msgtype)
            q = m.pose.pose.orientation
            truth.append((m.pose.pose.position.x, m.pose.pose.position.y, 2 * math.atan2(q.z, q.w)))
    for f, (x, y, yaw) in zip(files, truth):
        name = parse_at_name(f)
        assert (name.zone_number, name.zone_letter) == (32, "U")
        assert name.easting == pytest.approx(x, abs=0.01) and name.northing == pytest.approx(y, abs=0.01)
        assert name.heading_deg == pytest.approx(float(yaw_to_heading(yaw)), abs=0.01)
        e, n, _, _ = latlon_to_utm(name.lat, name.lon)
        assert float(e) == pytest.approx(x, abs=0.05) and float(n) == pytest.approx(y, abs=0.05)
    with pytest.raises(OutputPathError, match="exists already; choose a new path"):
        write_drive(cfg)


def test_writer_refuses_existing_path_and_bad_images(tmp_path):
    (tmp_path / "exists").mkdir()
    with pytest.raises(BagExistsError, match="exists already"):
        DriveLogWriter(tmp_path / "exists")
    with pytest.raises(ValueError, match="storage"):
        DriveLogWriter(tmp_path / "x", storage="bag")
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        with DriveLogWriter(tmp_path / "failed") as w:
            w.write_image(1, np.zeros((4, 4), np.uint8))
    assert not (tmp_path / "failed").exists()  # a failed bag leaves nothing behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def _odometry(bag: Path, topic: str) -> np.ndarray:
    """(T, 4) stamp s, x, y, yaw of an odometry topic."""
    with AnyReader([bag], default_typestore=get_typestore(Stores.ROS2_KILTED)) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        rows = []
        for conn, t, raw in reader.messages(connections=conns):
            m = reader.deserialize(raw, conn.msgtype)
            q = m.pose.pose.orientation
            rows.append((t / 1e9, m.pose.pose.position.x, m.pose.pose.position.y, 2 * math.atan2(q.z, q.w)))
    return np.array(rows)


def test_wheel_odometry_drifts_in_its_own_frame(tmp_path):
    cfg = small_cfg(tmp_path, frames=40, fps=4.0, out=str(tmp_path / "bag"), odometry_scale_error=0.05,
                    odometry_heading_drift_deg_per_m=0.5)
    write_drive(cfg)
    wheel = _odometry(tmp_path / "bag", "/odom/wheel")
    truth = _odometry(tmp_path / "bag", "/odom/ground_truth")
    assert wheel[0, 1:3].tolist() == [0.0, 0.0] and wheel[0, 3] == 0.0
    wheel_length = np.hypot(*np.diff(wheel[:, 1:3], axis=0).T).sum()
    true_length = np.hypot(*np.diff(truth[:, 1:3], axis=0).T).sum()
    assert wheel_length == pytest.approx(true_length * 1.05, rel=0.02)
    true_turn = np.unwrap(truth[:, 3])[-1] - truth[0, 3]
    wheel_turn = np.unwrap(wheel[:, 3])[-1]
    assert wheel_turn - true_turn == pytest.approx(math.radians(0.5) * wheel_length, abs=0.1)
    again = tmp_path / "again"
    write_drive(small_cfg(tmp_path, frames=40, fps=4.0, out=str(again), odometry_scale_error=0.05,
                          odometry_heading_drift_deg_per_m=0.5))
    assert np.array_equal(_odometry(again, "/odom/wheel"), wheel)


def test_kidnapped_drive_jumps_but_its_odometry_does_not(tmp_path):
    cfg = small_cfg(tmp_path, frames=20, fps=2.0, out=str(tmp_path / "bag"), kidnap_at_m=40.0, kidnap_skip_m=150.0)
    write_drive(cfg)
    truth = _odometry(tmp_path / "bag", "/odom/ground_truth")
    wheel = _odometry(tmp_path / "bag", "/odom/wheel")
    true_steps = np.hypot(*np.diff(truth[:, 1:3], axis=0).T)
    assert (true_steps > 20.0).sum() == 1 and int(np.argmax(true_steps)) == 9  # 40 m at 4 m per frame
    wheel_steps = np.hypot(*np.diff(wheel[:, 1:3], axis=0).T)
    assert wheel_steps.max() < 1.0  # 20 Hz at 8 m/s: 0.4 m per step, never the jump


def test_off_map_drive_leaves_the_route_for_unused_streets(tmp_path):
    from training.synth.drive import plan_drive, town_of
    from training.synth.routes import detour_route, make_route

    cfg = small_cfg(tmp_path, blocks_x=4, blocks_y=4, route_seed=2, length_m=600.0, frames=0)
    town = town_of(cfg)
    route = make_route(town, "random", 2, 600.0)
    detour = detour_route(town, route, 100.0, 600.0, seed=0)
    used = {frozenset(e) for e in zip(route[:-1], route[1:])}
    prefix = 0
    while detour[prefix + 1] == route[prefix + 1]:
        prefix += 1
    assert prefix >= 1
    later = [frozenset(e) for e in zip(detour[prefix:-1], detour[prefix + 1:])]
    assert sum(e not in used for e in later) > len(later) / 2
    mapped, _ = plan_drive(cfg, town)
    off, _ = plan_drive(small_cfg(tmp_path, blocks_x=4, blocks_y=4, route_seed=2, length_m=600.0, frames=0,
                                  off_map_after_m=100.0), town)
    from scipy.spatial import cKDTree

    d, _ = cKDTree(np.column_stack([mapped.x, mapped.y])).query(np.column_stack([off.x, off.y]))
    assert d[off.s < 90.0].max() < 1.0 and d.max() > 40.0
