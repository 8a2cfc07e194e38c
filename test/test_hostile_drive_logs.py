"""Hostile and broken drive logs: GPS fixes the vehicle cannot have reached are rejected and counted, damaged bag
storage is one BagError naming the bag, and image stamps that are all 0 are refused."""
from __future__ import annotations

import math
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dsformer_ros.common.geometry import NS_PER_S
from dsformer_ros.common.utm import utm_to_latlon
from training.io.bag_reader import BagError, DriveLogReader, GpsFix
from training.io.bag_writer import DriveLogWriter
from training.maps.track import (
    TRACK_JUMP,
    MotionGate,
    TrackError,
    check_frame_stamps,
    gate_motion,
    position_frames,
    track_from_fixes,
)

FUZZ = settings(max_examples=100, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
ZONE = 32
E0, N0 = 500_000.0, 5_000_000.0


def _drive(seconds: float, hz: float, speed: float, noise: float, seed: int = 0, turn_deg_s: float = 0.0):
    """True (easting, northing) of a vehicle at `speed` m/s, and noisy GPS fixes of it at `hz`."""
    rng = np.random.default_rng(seed)
    t = np.arange(0.0, seconds, 1.0 / hz)
    heading = np.radians(turn_deg_s * t)
    e = E0 + np.cumsum(np.sin(heading) * speed / hz)
    n = N0 + np.cumsum(np.cos(heading) * speed / hz)
    return t, e, n, e + rng.normal(0, noise, t.size), n + rng.normal(0, noise, t.size)


def _fixes(t: np.ndarray, e: np.ndarray, n: np.ndarray, std: float = 1.5) -> list[GpsFix]:
    lat, lon = utm_to_latlon(e, n, ZONE, "T")
    return [GpsFix(int(round(ti * NS_PER_S)) + NS_PER_S, 0, float(la), float(lo), 0.0, std) for ti, la, lo in zip(t, lat, lon)]


def _position_error(track, t: np.ndarray, e: np.ndarray, n: np.ndarray) -> float:
    stamps = (np.round(t * NS_PER_S) + NS_PER_S).astype(np.int64)
    est_e = np.interp(stamps, track.stamp_ns, track.easting)
    est_n = np.interp(stamps, track.stamp_ns, track.northing)
    return float(np.max(np.hypot(est_e - e, est_n - n)))


def test_glitches_to_zero_zero_and_multipath_jumps_are_rejected_and_counted() -> None:
    t, e, n, ge, gn = _drive(120, 1.0, 12.0, 1.5, turn_deg_s=1.0)
    fixes = _fixes(t, ge, gn)
    for i in (10, 11, 70):  # GPS glitches to (0, 0) with a valid status
        fixes[i] = GpsFix(fixes[i].stamp_ns, 0, 0.0, 0.0, 0.0, 1.5)
    for i in (30, 50, 51, 52, 90):  # 300 m multipath jumps
        lat, lon = utm_to_latlon(np.array([ge[i] + 300.0]), np.array([gn[i]]), ZONE, "T")
        fixes[i] = GpsFix(fixes[i].stamp_ns, 0, float(lat[0]), float(lon[0]), 0.0, 1.5)
    ungated = track_from_fixes(fixes, 5.0, 2.0, MotionGate(max_speed_mps=1e9, max_accel_mps2=1e9, noise_m=1e9))
    assert _position_error(ungated, t, e, n) > 200  # what the issue saw: places hundreds of metres (or km) off
    track = track_from_fixes(fixes, 5.0, 2.0)
    assert track.zone_number == ZONE
    assert track.counts["fix_rejected_outlier"] + track.counts["fix_rejected_speed"] == 8
    assert track.counts["fixes_used"] == len(fixes) - 8
    assert _position_error(track, t, e, n) < 8.0


def test_a_long_glitch_at_the_start_makes_the_gate_start_over() -> None:
    t, e, n, ge, gn = _drive(60, 1.0, 10.0, 1.0)
    fixes = _fixes(t, ge, gn)
    track = track_from_fixes(fixes[:1] + fixes[5:], 5.0, 2.0)  # a 50 m gap in time is reachable: nothing rejected
    assert track.counts["fix_rejected_speed"] == 0 and track.counts["fix_rejected_outlier"] == 0
    far = _fixes(t[:3], ge[:3] + 5000.0, gn[:3])  # the first three fixes 5 km away
    track = track_from_fixes(far + fixes[3:], 5.0, 2.0, MotionGate(max_rejected_run=5))
    assert _position_error(track, t[10:], e[10:], n[10:]) < 6.0


def test_a_real_jump_keeps_the_new_track_and_no_frame_is_placed_between_the_two() -> None:
    t, e, n, ge, gn = _drive(60, 10.0, 10.0, 0.0)
    ge = np.where(t >= 3.0, ge + 150.0, ge)  # teleported 150 m east at 3 s; the GPS follows at once
    track = track_from_fixes(_fixes(t, ge, gn), 5.0, 2.0)
    assert track.counts["track_restarts"] == 1
    assert track.counts["fix_rejected_speed"] == 0  # the fixes after the jump were rejected, then taken back
    assert track.counts["fixes_used"] == len(t)
    frames = (np.array([2.95, 3.05, 4.0]) * NS_PER_S + NS_PER_S).astype(np.int64)
    pos = position_frames(track, frames, 1.5)
    assert pos.reason[0] == TRACK_JUMP  # between the last fix before the jump and the first after it
    assert pos.reason[1] == "" and pos.reason[2] == ""
    assert abs(pos.easting[2] - np.interp(4.0, t, ge)) < 0.01  # on the new track
    turn = np.abs((track.heading_deg + 180.0) % 360.0 - 180.0)
    assert turn.max() < 5.0  # the drive heads north on both sides; the jump east is no direction of travel


@FUZZ
@given(speed=st.floats(0.0, 55.0), hz=st.sampled_from([1.0, 5.0, 10.0]), noise=st.floats(0.0, 1.5),
       turn=st.floats(-20.0, 20.0), seed=st.integers(0, 1000))
def test_real_drives_within_the_limits_keep_every_fix(speed, hz, noise, turn, seed) -> None:
    t, e, n, ge, gn = _drive(40, hz, speed, noise, seed, turn)
    keep, counts, _ = gate_motion((t * NS_PER_S).astype(np.int64), ge, gn, MotionGate(), np.full(t.size, 1.5))
    assert keep.all(), counts


@FUZZ
@given(speed=st.floats(0.0, 30.0), noise=st.floats(0.0, 1.5), seed=st.integers(0, 1000),
       jumps=st.lists(st.tuples(st.integers(5, 74), st.floats(150.0, 1e7), st.floats(0, 2 * math.pi)),
                      min_size=1, max_size=6, unique_by=lambda j: j[0]))
def test_isolated_jumps_are_always_rejected(speed, noise, seed, jumps) -> None:
    t, e, n, ge, gn = _drive(80, 1.0, speed, noise, seed)
    bad = np.zeros(t.size, dtype=bool)
    for i, size, angle in jumps:
        if bad[max(0, i - 2) : i + 3].sum() >= 2:  # keep glitches isolated (at most 2 in any 5 fixes)
            continue
        ge[i] += size * math.sin(angle)
        gn[i] += size * math.cos(angle)
        bad[i] = True
    keep, counts, _ = gate_motion((t * NS_PER_S).astype(np.int64), ge, gn, MotionGate(), np.full(t.size, 1.5))
    assert not keep[bad].any(), counts
    assert keep[~bad].mean() > 0.95, counts


def test_gate_settings_are_validated() -> None:
    with pytest.raises(TrackError, match="max_speed_mps: must be > 0"):
        track_from_fixes(_fixes(np.arange(5.0), np.full(5, E0), np.full(5, N0)), 5.0, 2.0,
                         MotionGate(max_speed_mps=0.0))


def test_image_stamps_all_zero_are_refused() -> None:
    with pytest.raises(TrackError, match="all 40 image header stamps of /cam in bag are 0: the camera driver"):
        check_frame_stamps(np.zeros(40, dtype=np.int64), "/cam in bag")
    check_frame_stamps(np.arange(40) * NS_PER_S, "/cam in bag")


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bags")
    out = {}
    for storage in ("sqlite3", "mcap"):
        path = root / storage
        with DriveLogWriter(path, storage, compressed=True) as writer:
            for i in range(40):
                writer.write_image(NS_PER_S + i * NS_PER_S // 10, np.full((24, 32, 3), i * 5, np.uint8))
                writer.write_navsatfix(NS_PER_S + i * NS_PER_S // 10, 45.0 + i * 1e-5, 9.0, 100.0, (1.0, 1.0, 4.0), 0)
        out[storage] = path
    return out


def _read_everything(path: Path) -> tuple[int, int]:
    with DriveLogReader(path) as reader:
        frames = sum(1 for _ in reader.image_frames("/camera/image_raw"))
        fixes = sum(1 for _ in reader.gps_fixes("/gps/fix"))
    return frames, fixes


@FUZZ
@given(storage=st.sampled_from(["sqlite3", "mcap"]), page=st.integers(0, 1 << 12),
       how=st.sampled_from(["zero", "junk", "flip", "cut"]), seed=st.integers(0, 1 << 16))
def test_damaged_bag_storage_reads_or_is_one_bag_error_naming_it(bags, storage, page, how, seed) -> None:
    source = bags[storage]
    work = Path(tempfile.mkdtemp(prefix="hostile_bag_")) / storage
    shutil.copytree(source, work)
    data_file = next(p for p in work.iterdir() if p.suffix in (".db3", ".mcap"))
    data = bytearray(data_file.read_bytes())
    size = 4096 if storage == "sqlite3" else 512
    start = (page * size) % len(data)
    rng = random.Random(seed)
    if how == "zero":
        data[start : start + size] = bytes(len(data[start : start + size]))
    elif how == "junk":
        data[start : start + size] = rng.randbytes(len(data[start : start + size]))
    elif how == "flip":
        for _ in range(8):
            data[(start + rng.randrange(size)) % len(data)] ^= 0xFF
    else:
        del data[start:]
    data_file.write_bytes(bytes(data))
    try:
        _read_everything(work)
        event("read")
    except BagError as exc:  # TopicNotFoundError is one too: a damaged table of topics
        assert str(work) in str(exc) and "\n" not in str(exc)
        event(f"refused: {type(exc).__name__}")
    shutil.rmtree(work.parent)


def test_corrupt_sqlite_page_names_the_bag(bags, tmp_path: Path) -> None:
    work = tmp_path / "bag"
    shutil.copytree(bags["sqlite3"], work)
    db = next(work.glob("*.db3"))
    data = bytearray(db.read_bytes())
    data[100:4096] = os.urandom(3996)  # the schema page
    db.write_bytes(bytes(data))
    with pytest.raises(BagError, match=f"drive log {work}.*(malformed|not a database|damaged)"):
        _read_everything(work)


def _drive_bag(path: Path, frames: int = 40, broken: tuple[int, ...] = (), glitches: tuple[int, ...] = (),
               zero_stamps: bool = False, covariances: dict[int, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A compressed-image bag of a vehicle driving north at 5 m/s (10 Hz camera and GPS); frames in `broken` carry
    undecodable JPEG bytes, fixes in `glitches` jump to (0, 0), fix i has horizontal variance covariances[i] (m^2;
    1.0 elsewhere). Returns the true (easting, northing) per frame."""
    import cv2

    east = np.full(frames, E0)
    north = N0 + 0.5 * np.arange(frames)
    lat, lon = utm_to_latlon(east, north, ZONE, "T")
    with DriveLogWriter(path, "mcap", compressed=True) as writer:
        types = writer.typestore.types
        for i in range(frames):
            t = NS_PER_S + i * NS_PER_S // 10
            image = np.zeros((24, 32, 3), np.uint8)
            image[:, :, 0] = (np.arange(32) * (i + 1)) % 256
            image[:, :, 1] = (np.arange(24)[:, None] * (7 * i + 3)) % 256
            data = cv2.imencode(".jpg", image)[1].reshape(-1)
            if i in broken:
                data = np.frombuffer(b"\xff\xd8\xff\xe0 broken sensor data", np.uint8)
            stamp = types["builtin_interfaces/msg/Time"](sec=0 if zero_stamps else t // NS_PER_S,
                                                         nanosec=0 if zero_stamps else t % NS_PER_S)
            msg = types["sensor_msgs/msg/CompressedImage"](
                header=types["std_msgs/msg/Header"](stamp=stamp, frame_id="camera"), format="jpeg", data=data)
            writer.write_raw("/camera/image_raw", "sensor_msgs/msg/CompressedImage", t, msg)
            fix_lat, fix_lon = (0.0, 0.0) if i in glitches else (float(lat[i]), float(lon[i]))
            variance = (covariances or {}).get(i, 1.0)
            writer.write_navsatfix(t, fix_lat, fix_lon, 100.0, (variance, variance, 4.0))
    return east, north


def _build(bag: Path, out: Path, **kwargs):
    from training.maps.build_map import BuildMapConfig, build_map

    return build_map(BuildMapConfig(input=str(bag), out=str(out), method="raw_pixels", spacing_m=2.0,
                                    heading_change_deg=0.0, **kwargs))


def test_a_keyframe_that_fails_to_decode_is_replaced_by_the_next_decodable_frame(tmp_path: Path) -> None:
    from dsformer_ros.maps.placemap import PlaceMap

    _drive_bag(tmp_path / "good")
    _drive_bag(tmp_path / "broken", broken=(8, 16, 17, 24, 25, 26, 27))  # keyframes every 4 frames (2 m at 0.5 m)
    good = _build(tmp_path / "good", tmp_path / "good_map")
    broken = _build(tmp_path / "broken", tmp_path / "broken_map")
    assert good["places"] == 10 and broken["places"] == 9  # 8 and 16 stand in; 24..27 all broken: a hole
    assert broken["keyframes_replaced"] == 2 and broken["dropped"]["image_decode_error"] == 1
    a, b = PlaceMap.load(tmp_path / "good_map").metadata, PlaceMap.load(tmp_path / "broken_map").metadata
    north_a = dict(zip(a.place_id.tolist(), np.asarray(a.northing).tolist()))
    moved = {int(p): round(n - north_a[int(p)], 3) for p, n in zip(b.place_id, np.asarray(b.northing))}
    assert 6 not in moved and moved[2] == 0.5 and moved[4] == 1.0  # frame 8 -> 9, frame 16 -> 18 (17 is broken too)
    assert all(v == 0.0 for k, v in moved.items() if k not in (2, 4))
    stamps = dict(zip(b.place_id.tolist(), np.asarray(b.stamp_ns).tolist()))
    assert stamps[2] == NS_PER_S + 9 * NS_PER_S // 10 and b.source[2].endswith(f"@{NS_PER_S + 9 * NS_PER_S // 10}")


def test_gps_glitches_in_a_bag_do_not_move_places(tmp_path: Path) -> None:
    from dsformer_ros.maps.placemap import PlaceMap

    east, north = _drive_bag(tmp_path / "bag", glitches=(3, 4, 20, 33))
    summary = _build(tmp_path / "bag", tmp_path / "map")
    assert summary["fixes"]["fix_rejected_outlier"] + summary["fixes"]["fix_rejected_speed"] == 4
    meta = PlaceMap.load(tmp_path / "map").metadata
    assert np.abs(np.asarray(meta.easting) - E0).max() < 1.0
    assert np.asarray(meta.northing).min() >= N0 - 1.0 and np.asarray(meta.northing).max() <= north[-1] + 1.0


def test_a_bag_whose_image_stamps_are_all_zero_is_refused(tmp_path: Path) -> None:
    _drive_bag(tmp_path / "bag", zero_stamps=True)
    with pytest.raises(TrackError, match="all 40 image header stamps of /camera/image_raw in .* are 0"):
        _build(tmp_path / "bag", tmp_path / "map")
    assert not (tmp_path / "map").exists()


def test_negative_and_nan_gps_covariances_are_refused_and_counted(tmp_path: Path, caplog) -> None:
    """A negative variance used to become a sigma of 0 (an exact fix), a NaN one 'unknown': both are refused."""
    _drive_bag(tmp_path / "bag", covariances={5: -4.0, 12: math.nan, 13: -0.0})
    with DriveLogReader(tmp_path / "bag") as reader:
        fixes = list(reader.gps_fixes("/gps/fix"))
    assert [f.covariance_error for f in fixes[5:6] + fixes[12:13]] == ["negative variance (-4.0, -4.0)",
                                                                        "NaN variance (nan, nan)"]
    assert fixes[13].covariance_error == "" and fixes[13].horizontal_std_m == 0.0  # -0.0 is zero, not negative
    with caplog.at_level("WARNING"):
        track = track_from_fixes(fixes, 10.0, 5.0)
    assert track.counts["fix_rejected_bad_covariance"] == 2 and track.counts["fixes_used"] == 38
    assert "refused 2 of 40 GPS fixes whose covariance is unusable (first at stamp 1500000000 ns: negative variance" \
        in caplog.text
    _drive_bag(tmp_path / "all_bad", covariances={i: -1.0 for i in range(40)})
    with pytest.raises(TrackError, match="no usable GPS fix among 40 .*fix_rejected_bad_covariance: 40"):
        _build(tmp_path / "all_bad", tmp_path / "map")


def test_negative_and_nan_odometry_covariances_are_refused_and_counted(tmp_path: Path) -> None:
    from training.maps.track import track_from_odometry

    with DriveLogWriter(tmp_path / "bag", "mcap") as writer:
        for i in range(20):
            variance = {3: -2.0, 7: math.nan}.get(i, 0.25)
            writer.write_odometry(NS_PER_S + i * NS_PER_S // 10, "utm", "base_link", E0, N0 + 0.5 * i, 0.0, 0.0,
                                  (variance, variance, 1.0, 0.1, 0.1, 0.1))
    with DriveLogReader(tmp_path / "bag") as reader:
        poses = list(reader.odometry("/odom/ground_truth"))
    assert [p.covariance_error for p in (poses[3], poses[7])] == ["negative variance (-2.0, -2.0)",
                                                                  "NaN variance (nan, nan)"]
    track = track_from_odometry(poses, "32T", 10.0, 5.0)
    assert track.counts["fix_rejected_bad_covariance"] == 2 and track.counts["fixes_used"] == 18
