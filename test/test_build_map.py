"""build-map / merge-maps on real bags (MCAP, sqlite3, ROS 1; raw and JPEG images) of synthetic street frames."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dsformer_ros.common.geometry import NS_PER_S
from dsformer_ros.common.utm import latlon_to_utm, utm_to_latlon
from dsformer_ros.inference.extractor import DescriptorExtractor
from dsformer_ros.inference.image_codec import decode_compressed
from dsformer_ros.maps.placemap import PlaceMap
from dsformer_ros.model.checkpoint import save_checkpoint
from dsformer_ros.model.dsformer import preset
from dsformer_ros.model.loading import load_model
from training.io.at_names import AtName, format_at_name
from training.io.bag_reader import BagError, TopicNotFoundError
from training.io.bag_writer import STATUS_NO_FIX, DriveLogWriter
from training.maps.build_map import BuildError, BuildMapConfig, build_map, shard_output_path
from training.maps.merge_maps import MergeError, MergeMapsConfig, merge_maps

FRAME_NS = NS_PER_S // 10  # 10 Hz camera
GPS_NS = NS_PER_S // 4  # 4 Hz GPS
SPEED = 10.0  # m/s east: 1 m per frame
LAT0, LON0 = 48.137, 11.575  # zone 32U
E0, N0, _, _ = latlon_to_utm(LAT0, LON0)
E0, N0 = float(E0), float(N0)
NO_FIX_WINDOW = (3 * NS_PER_S // 2, 3 * NS_PER_S)  # fixes strictly inside are NO_FIX: frames 1.6-1.9 s and 2.6-2.9 s lack a fix
MAX_GAP_S = 1.0
SMALL_INPUT = (96, 128)  # a small model input keeps the tests fast on a busy 2-core machine


def _true_east(stamp_ns: int) -> float:
    return E0 + SPEED * stamp_ns / NS_PER_S


def _write_bag(path: Path, images: list[np.ndarray], storage: str, compressed: bool, corrupt_first: bool) -> dict:
    """A straight drive east with GPS at 4 Hz, a NO_FIX stretch, a NaN fix, a bad-covariance fix and (optionally)
    a corrupt first image; returns the numbers of bad fixes written."""
    bad = {"no_fix": 0, "nan": 0, "covariance": 0}
    end = len(images) * FRAME_NS
    with DriveLogWriter(path, storage=storage, compressed=compressed) as w:
        for t in range(0, end + GPS_NS, GPS_NS):
            lat, lon = utm_to_latlon(_true_east(t), N0, 32, "U")
            if NO_FIX_WINDOW[0] < t < NO_FIX_WINDOW[1]:
                w.write_navsatfix(t, 0.0, 0.0, 0.0, (1.0, 1.0, 4.0), status=STATUS_NO_FIX)
                bad["no_fix"] += 1
            else:
                w.write_navsatfix(t, float(lat), float(lon), 500.0, (1.0, 1.0, 4.0))
        for t in (NS_PER_S + NS_PER_S // 8, 3 * NS_PER_S + NS_PER_S // 8):
            w.write_navsatfix(t, float("nan"), LON0, 500.0, (1.0, 1.0, 4.0))
            bad["nan"] += 1
            lat, lon = utm_to_latlon(_true_east(t) + 80.0, N0 + 80.0, 32, "U")
            w.write_navsatfix(t + 1, float(lat), float(lon), 500.0, (900.0, 900.0, 900.0))
            bad["covariance"] += 1
        for k, rgb in enumerate(images):
            if k == 0 and corrupt_first:
                types = w.typestore.types
                header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=0, nanosec=0),
                                                      frame_id="camera")
                if compressed:
                    msg = types["sensor_msgs/msg/CompressedImage"](header=header, format="jpeg",
                                                                   data=np.frombuffer(b"\xff\xd8garbage", np.uint8))
                    w.write_raw(w.image_topic, "sensor_msgs/msg/CompressedImage", 0, msg)
                else:
                    msg = types["sensor_msgs/msg/Image"](header=header, height=120, width=160, encoding="rgb8",
                                                         is_bigendian=0, step=480, data=np.zeros(100, np.uint8))
                    w.write_raw(w.image_topic, "sensor_msgs/msg/Image", 0, msg)
            else:
                w.write_image(k * FRAME_NS, rgb)
    return bad


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The untrained efficientnet_lite0 model (ImageNet backbone) at a small input size, as a checkpoint file."""
    path = tmp_path_factory.mktemp("model") / "small.pt"
    model = load_model(config=dataclasses.replace(preset("efficientnet_lite0"), image_size=SMALL_INPUT), device="cpu")
    save_checkpoint(path, model, {"source": "test"})
    return path


@pytest.fixture
def _config(checkpoint):
    def make(bag: Path, out: Path, **kw) -> BuildMapConfig:
        kw = {"max_fix_gap_s": MAX_GAP_S, "chunk_size": 4, **kw}
        return BuildMapConfig(input=str(bag), out=str(out), device="cpu", batch_size=8, checkpoint=str(checkpoint), **kw)

    return make


@pytest.fixture(scope="module")
def images(street_frames: list[np.ndarray]) -> list[np.ndarray]:
    """40 consecutive 160x120 frames of one synthetic drive (1 m apart)."""
    return street_frames[:40]


@pytest.fixture(scope="module")
def extractor(checkpoint) -> DescriptorExtractor:
    return DescriptorExtractor(load_model(checkpoint, device="cpu"), batch_size=8)


@pytest.fixture(scope="module")
def mcap_raw(images, tmp_path_factory) -> tuple[Path, dict]:
    bag = tmp_path_factory.mktemp("bags") / "drive_mcap_raw"
    return bag, _write_bag(bag, images, "mcap", compressed=False, corrupt_first=True)


@pytest.fixture(scope="module")
def mcap_raw_map(mcap_raw, tmp_path_factory, checkpoint) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("maps") / "map"
    cfg = BuildMapConfig(input=str(mcap_raw[0]), out=str(out), device="cpu", batch_size=8, chunk_size=4,
                         max_fix_gap_s=MAX_GAP_S, checkpoint=str(checkpoint))
    return out, build_map(cfg)


def _check_places(place_map: PlaceMap, first_stamp_ns: int, first_id: int = 0, from_row: int = 0) -> None:
    md = place_map.metadata.take(np.arange(from_row, len(place_map)))
    assert np.array_equal(md.place_id, first_id + np.arange(len(md)))
    assert (np.diff(md.stamp_ns) > 0).all()
    truth = np.array([_true_east(int(s)) for s in md.stamp_ns])
    np.testing.assert_allclose(md.easting, truth, atol=0.01)
    np.testing.assert_allclose(md.northing, N0, atol=0.01)
    np.testing.assert_allclose(md.lat, LAT0, atol=1e-4)
    assert set(md.zone_number.tolist()) == {32} and set(md.zone_letter.tolist()) == {"U"}
    np.testing.assert_allclose(md.heading_deg, 90.0, atol=1.0)  # driving east, heading from the track
    spacing = np.diff(md.easting)
    assert spacing.min() >= 2.0 - 1e-3
    assert np.median(spacing) == pytest.approx(2.0, abs=1e-3)
    assert int(md.stamp_ns[0]) == first_stamp_ns
    assert place_map.keyframe_spacing_m() == pytest.approx(2.0, abs=1e-3)


def test_mcap_raw_map_places_positions_and_counts(mcap_raw, mcap_raw_map, images) -> None:
    """Fix filtering, frames without a fix near, the corrupt frame, spacing and UTM positions of a 40-frame drive."""
    bag, bad = mcap_raw
    out, summary = mcap_raw_map
    assert out.is_dir() and not Path(str(out) + ".partial").exists()
    place_map = PlaceMap.load(out)
    assert summary["frames_read"] == len(images)
    assert summary["fixes"]["fix_rejected_no_fix_status"] == bad["no_fix"]
    assert summary["fixes"]["fix_rejected_nan"] == bad["nan"]
    assert summary["fixes"]["fix_rejected_covariance"] == bad["covariance"]
    assert summary["dropped"]["no_fix_near_in_time"] == 8  # frames at 1.6-1.9 s and 2.6-2.9 s
    # the corrupt first frame is the first keyframe: frame 1 (1 m on, within the 2 m spacing) stands in for it
    assert "image_decode_error" not in summary["dropped"] and summary["keyframes_replaced"] == 1
    assert summary["places"] == len(place_map) == summary["keyframes"] == 16
    assert summary["images_per_s"] > 0
    first = place_map.metadata.take(np.array([0]))
    assert int(first.place_id[0]) == 0 and int(first.stamp_ns[0]) == FRAME_NS
    assert float(first.easting[0]) == pytest.approx(_true_east(FRAME_NS), abs=0.01)
    assert first.source[0] == f"bag:{bag.resolve()}#/camera/image_raw@{FRAME_NS}"
    _check_places(place_map, 2 * FRAME_NS, first_id=1, from_row=1)
    assert place_map.manifest.build["zone"] == "32U"


def test_map_image_queries_return_own_place(mcap_raw_map, images, extractor) -> None:
    place_map = PlaceMap.load(mcap_raw_map[0])
    frames = (place_map.metadata.stamp_ns // FRAME_NS).astype(int)
    queries = extractor.describe([images[k] for k in frames])
    result = place_map.search(queries, k=3)
    assert np.array_equal(result.place_ids[:, 0], place_map.metadata.place_id)
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-4)


def test_sqlite3_compressed_bag(images, tmp_path, extractor, _config) -> None:
    bag = tmp_path / "drive_sqlite_jpeg"
    _write_bag(bag, images[:16], "sqlite3", compressed=True, corrupt_first=False)
    summary = build_map(_config(bag, tmp_path / "map", spacing_m=4.0))
    place_map = PlaceMap.load(tmp_path / "map")
    assert summary["frames_read"] == 16 and "image_decode_error" not in summary["dropped"] and len(place_map) == 4
    east = np.asarray(place_map.metadata.easting)
    assert np.diff(east).min() >= 4.0 - 1e-3 and np.median(np.diff(east)) == pytest.approx(4.0)
    frames = (place_map.metadata.stamp_ns // FRAME_NS).astype(int)
    jpeg = [cv2.imencode(".jpg", cv2.cvtColor(images[k], cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]
            for k in frames]
    queries = extractor.describe([decode_compressed("jpeg", buf) for buf in jpeg])
    assert np.array_equal(place_map.search(queries, k=1).place_ids[:, 0], place_map.metadata.place_id)


def test_ros1_bag(images, tmp_path, _config) -> None:
    from rosbags.rosbag1 import Writer
    from rosbags.typesys import Stores, get_typestore

    ts = get_typestore(Stores.ROS1_NOETIC)
    t = ts.types
    bag = tmp_path / "drive.bag"
    with Writer(bag) as w:
        cam = w.add_connection("/cam", "sensor_msgs/msg/Image", typestore=ts)
        gps = w.add_connection("/fix", "sensor_msgs/msg/NavSatFix", typestore=ts)
        for k in range(0, 13):
            stamp = k * FRAME_NS
            header = t["std_msgs/msg/Header"](seq=k, stamp=t["builtin_interfaces/msg/Time"](sec=stamp // NS_PER_S,
                                              nanosec=stamp % NS_PER_S), frame_id="gps")
            lat, lon = utm_to_latlon(_true_east(stamp), N0, 32, "U")
            status = t["sensor_msgs/msg/NavSatStatus"](status=0, service=1)
            fix = t["sensor_msgs/msg/NavSatFix"](header=header, status=status, latitude=float(lat),
                                                 longitude=float(lon), altitude=0.0,
                                                 position_covariance=np.array([1.0, 0, 0, 0, 1.0, 0, 0, 0, 4.0]),
                                                 position_covariance_type=2)
            w.write(gps, stamp, ts.serialize_ros1(fix, "sensor_msgs/msg/NavSatFix"))
            if k < 12:
                bgr = np.ascontiguousarray(images[k][:, :, ::-1])
                img = t["sensor_msgs/msg/Image"](header=header, height=120, width=160, encoding="bgr8",
                                                 is_bigendian=0, step=480, data=bgr.reshape(-1))
                w.write(cam, stamp, ts.serialize_ros1(img, "sensor_msgs/msg/Image"))
    summary = build_map(_config(bag, tmp_path / "map", image_topic="/cam", gps_topic="/fix"))
    place_map = PlaceMap.load(tmp_path / "map")
    assert summary["frames_read"] == 12 and len(place_map) == 6
    _check_places(place_map, 0)


def test_odometry_in_utm_with_heading(images, tmp_path, _config) -> None:
    bag = tmp_path / "drive_odom"
    with DriveLogWriter(bag, storage="sqlite3") as w:
        for k in range(12):  # north at 1 m/frame, yaw 90 deg (ENU) = compass 0
            w.write_odometry(k * FRAME_NS, "utm", "base_link", E0, N0 + k, 0.0, np.pi / 2)
            w.write_image(k * FRAME_NS, images[k])
    summary = build_map(_config(bag, tmp_path / "map", odom_topic="/odom/ground_truth", odom_utm_zone="32U"))
    md = PlaceMap.load(tmp_path / "map").metadata
    assert summary["heading_source"] == "odometry" and len(md) == 6
    np.testing.assert_allclose(md.northing, N0 + 2 * np.arange(6), atol=1e-6)
    np.testing.assert_allclose(md.heading_deg, 0.0, atol=1e-6)


def test_stop_and_turn_keyframes() -> None:
    from training.maps.track import select_keyframes

    east = np.concatenate([np.arange(0, 10.0, 0.5), np.full(50, 9.5), np.full(5, 9.5)])
    north = np.concatenate([np.zeros(20), np.zeros(50), np.arange(1, 6) * 0.3])
    heading = np.concatenate([np.full(70, 90.0), np.full(5, 0.0)])
    keys = select_keyframes(east, north, heading, 2.0, 30.0)
    # every 2 m while driving, nothing while standing, one keyframe at the turn
    assert keys.tolist() == [0, 4, 8, 12, 16, 70]


@pytest.mark.slow
def test_resume_after_kill(mcap_raw, mcap_raw_map, tmp_path, repo_root, checkpoint, _config) -> None:
    bag = mcap_raw[0]
    out = tmp_path / "map"
    work = Path(str(out) + ".partial")
    cmd = [sys.executable, "-m", "training.cli", "build-map", str(bag), "--out", str(out), "--device", "cpu",
           "--batch-size", "1", "--chunk-size", "2", "--checkpoint", str(checkpoint), "--set", f"max_fix_gap_s={MAX_GAP_S}"]
    proc = subprocess.Popen(cmd, cwd=repo_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while not (work / "chunk_00001.npz").exists():
        assert proc.poll() is None, "build-map ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    summary = build_map(_config(bag, out, chunk_size=2))
    assert summary["chunks_resumed"] >= 2
    assert summary["images_described_this_run"] < summary["places"]
    resumed, fresh = PlaceMap.load(out), PlaceMap.load(mcap_raw_map[0])
    assert np.array_equal(resumed.metadata.place_id, fresh.metadata.place_id)
    np.testing.assert_allclose(resumed.descriptors, fresh.descriptors, atol=1e-5)


def test_changed_config_refuses_stale_work_dir(mcap_raw, tmp_path, _config) -> None:
    out = tmp_path / "map"
    work = Path(str(out) + ".partial")
    work.mkdir()
    (work / "progress.json").write_text('{"config_hash": "0000"}')
    with pytest.raises(BuildError, match="another configuration"):
        build_map(_config(mcap_raw[0], out))
    build_map(_config(mcap_raw[0], out, spacing_m=10.0, restart=True))
    assert len(PlaceMap.load(out)) == 4  # keyframes at 0 (corrupt: frame 1 stands in), 1, 2 and 3 s


def test_shards_merge_to_the_full_map(mcap_raw, mcap_raw_map, tmp_path, _config) -> None:
    out = tmp_path / "map"
    for i in range(3):
        build_map(_config(mcap_raw[0], out, shard=f"{i}/3"))
    shards = [shard_output_path(out, i, 3) for i in range(3)]
    with pytest.raises(MergeError, match=r"shard\(s\) \[2\] of 3 are missing"):
        merge_maps(MergeMapsConfig(inputs=[str(p) for p in shards[:2]], out=str(tmp_path / "merged")))
    merged = merge_maps(MergeMapsConfig(inputs=[str(p) for p in reversed(shards)], out=str(tmp_path / "merged")))
    fresh = PlaceMap.load(mcap_raw_map[0])
    assert np.array_equal(merged.metadata.place_id, fresh.metadata.place_id)
    np.testing.assert_allclose(merged.metadata.easting, fresh.metadata.easting)
    np.testing.assert_allclose(np.asarray(merged.descriptors), np.asarray(fresh.descriptors), atol=1e-5)
    assert len(PlaceMap.load(tmp_path / "merged")) == len(fresh)


def test_at_folder(images, tmp_path, _config) -> None:
    folder = tmp_path / "db"
    folder.mkdir()
    for k in range(4):
        lat, lon = utm_to_latlon(E0 + 5 * k, N0, 32, "U")
        name = format_at_name(AtName(E0 + 5 * k, N0, 32, "U", float(lat), float(lon), heading_deg=90.0,
                                     timestamp=str(k * NS_PER_S)))
        cv2.imwrite(str(folder / name), cv2.cvtColor(images[k], cv2.COLOR_RGB2BGR))
    summary = build_map(_config(folder, tmp_path / "map"))
    md = PlaceMap.load(tmp_path / "map").metadata
    assert summary["places"] == 4
    np.testing.assert_allclose(md.easting, E0 + 5 * np.arange(4), atol=0.01)
    assert md.stamp_ns.tolist() == [k * NS_PER_S for k in range(4)]


def test_short_side_resize_is_recorded_and_used_by_the_localizer(images, tmp_path, _config, checkpoint) -> None:
    """A 16:9 camera: resize=short_side keeps the aspect (96x171 into the model, not 96x128), the manifest records it
    and the localizer describes its frames the same way (each map frame finds its own place with score 1)."""
    from dsformer_ros.common.config import ConfigError
    from dsformer_ros.localization.localizer import Localizer, LocalizerConfig

    folder = tmp_path / "db"
    folder.mkdir()
    wide = []
    for k in range(4):
        lat, lon = utm_to_latlon(E0 + 5 * k, N0, 32, "U")
        path = folder / format_at_name(AtName(E0 + 5 * k, N0, 32, "U", float(lat), float(lon), heading_deg=90.0,
                                              timestamp=str(k * NS_PER_S)))
        cv2.imwrite(str(path), cv2.cvtColor(images[2 * k][15:105], cv2.COLOR_RGB2BGR))  # 90 x 160
        wide.append(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))
    build_map(_config(folder, tmp_path / "square"))
    build_map(_config(folder, tmp_path / "short", resize="short_side"))
    square, short = PlaceMap.load(tmp_path / "square"), PlaceMap.load(tmp_path / "short")
    assert square.manifest.preprocessing["resize"] == "square"
    assert short.manifest.preprocessing["resize"] == "short_side" and short.manifest.preprocessing["short_side"] == 96
    assert np.abs(np.asarray(short.descriptors) - np.asarray(square.descriptors)).max() > 1e-3
    localizer = Localizer.load(LocalizerConfig(checkpoint=str(checkpoint), map_path=str(tmp_path / "short"),
                                               device="cpu", warmup_iterations=0, mode="single_frame"))
    assert localizer.method.preprocess_config.output_size(90, 160) == (96, 171)
    result = short.search(localizer.method.describe(wide), k=1)
    assert result.place_ids[:, 0].tolist() == short.metadata.place_id.tolist()
    np.testing.assert_allclose(result.scores[:, 0], 1.0, atol=1e-4)
    with pytest.raises(ConfigError, match="resize: short_side needs method dsformer on the torch backend"):
        _config(folder, tmp_path / "x", resize="short_side", backend="onnxruntime").validate()


def test_missing_topics_and_no_gps(images, mcap_raw, tmp_path, _config) -> None:
    with pytest.raises(TopicNotFoundError, match=r"image topic '/nope' is not in .*/camera/image_raw"):
        build_map(_config(mcap_raw[0], tmp_path / "a", image_topic="/nope"))
    bag = tmp_path / "no_gps"
    with DriveLogWriter(bag) as w:
        w.write_image(0, images[0])
    with pytest.raises(TopicNotFoundError, match=r"GPS topic '/gps/fix' is not in"):
        build_map(_config(bag, tmp_path / "b"))
    with pytest.raises(BagError, match="not a rosbag2"):
        build_map(_config(tmp_path, tmp_path / "c", kind="bag"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_rosbag2_directory_named_like_ros1_is_refused_clearly(tmp_path):
    from training.io.bag_reader import BagError, resolve_bag_path

    bag_dir = tmp_path / "drive.bag"
    bag_dir.mkdir()
    (bag_dir / "metadata.yaml").write_text("rosbag2_bagfile_information: {}\n")
    with pytest.raises(BagError, match="rename the directory"):
        resolve_bag_path(bag_dir)
