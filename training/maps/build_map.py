"""`dsformer-vpr build-map`: a reference PlaceMap from a drive log (rosbag2 sqlite3/MCAP, ROS 1 .bag) or an '@' folder.

Pass 1 reads the position topic and the image headers (no pixels) and plans the keyframes: one place every
`spacing_m` metres and on heading changes. Pass 2 streams the images again and describes only keyframes, chunk by
chunk; each finished chunk is saved atomically in `<out>.partial/`, so a killed build resumes where it stopped.
The map appears at `out` only when complete. `shard: i/n` builds the i-th of n contiguous slices of the plan
(merge them with `dsformer-vpr merge-maps`); place ids are global, sequential from 0 in stamp order.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dsformer_ros.common.atomic import atomic_save, atomic_write_text, check_output_directory
from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.common.devices import check_device_name
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.common.utm import latlon_to_utm
from dsformer_ros.inference.backends import BACKENDS
from dsformer_ros.inference.extractor import DescriptorExtractor, load_extractor
from dsformer_ros.inference.image_codec import ImageDecodeError
from dsformer_ros.inference.methods import DescriptorMethod, RawPixels, RawPixelsConfig
from dsformer_ros.inference.precision import PRECISIONS
from dsformer_ros.inference.preprocess import RESIZES, ImageError, preprocess_config_for, read_image
from dsformer_ros.maps.map_index import IndexConfig
from dsformer_ros.maps.method_map import build_method_map
from dsformer_ros.maps.placemap import PlaceMetadata
from dsformer_ros.maps.similarity import attach_similarity
from dsformer_ros.model.loading import load_model
from training.io.at_names import AtNameError, list_images, read_at_folder
from training.io.bag_reader import DriveLogReader, resolve_bag_path
from training.maps.track import (
    MotionGate,
    Track,
    TrackError,
    check_frame_stamps,
    keyframe_alternates,
    parse_utm_zone,
    position_frames,
    select_keyframes,
    track_from_fixes,
    track_from_odometry,
)

log = logging.getLogger(__name__)

PLAN_FILE = "plan.npz"
PROGRESS_FILE = "progress.json"
UNREADABLE = "unreadable_message"
DECODE_ERROR = "image_decode_error"
BETWEEN_KEYFRAMES = "between_keyframes"
_MAX_LOGGED_ERRORS = 10
MAX_ALTERNATES = 3  # frames kept per keyframe to stand in for it when its image cannot be decoded (plan size)
METHODS = ("dsformer", "raw_pixels")


class BuildError(ValueError):
    """The map cannot be built from this input; the message says why."""


@dataclasses.dataclass
class BuildMapConfig:
    """Configuration of `build-map` (input, topics, method, keyframing, position filters, chunking, shard, output)."""

    input: str = setting("", "rosbag2 directory (sqlite3/MCAP), ROS 1 .bag, or '@' image folder")
    kind: str = setting("auto", "input kind (auto: from the path)", choices=("auto", "bag", "at_folder"))
    image_topic: str = setting("/camera/image_raw", "image topic (sensor_msgs/Image or CompressedImage)")
    gps_topic: str = setting("/gps/fix", "sensor_msgs/NavSatFix topic")
    odom_topic: str = setting("", "nav_msgs/Odometry topic in a UTM frame (instead of GPS)")
    odom_utm_zone: str = setting("", "UTM zone of the odometry frame, e.g. 32U")
    method: str = setting("dsformer", "descriptor method of the map", choices=METHODS)
    checkpoint: str = setting("", "model checkpoint (method dsformer); without one: the UNTRAINED variant, a warning")
    variant: str = setting("efficientnet_lite0", "model variant when no checkpoint is given")
    backend: str = setting("torch", "descriptor backend: torch, onnxruntime (CPU) or tensorrt (CUDA); the last two "
                           "take the .onnx of dsformer-vpr export as checkpoint", choices=BACKENDS)
    raw_pixels: RawPixelsConfig = dataclasses.field(default_factory=RawPixelsConfig)
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = setting(16, "images per forward pass", low=1)
    precision: str = setting("fp32", "inference precision", choices=PRECISIONS)
    resize: str = setting("square", "frames to the model: square (its training input size) or short_side (short "
                          "side to the training input's, the camera's aspect kept; torch backend only); the map "
                          "records it and the node describes its frames the same way", choices=RESIZES)
    spacing_m: float = setting(2.0, "metres between keyframes", low=0.001)
    heading_change_deg: float = setting(30.0, "a keyframe on heading changes of this many degrees (0: off)",
                                        low=0.0, high=180.0)
    heading_baseline_m: float = setting(2.0, "track length over which headings are measured", low=0.001)
    max_fix_gap_s: float = setting(1.5, "a frame needs a position this close in time on each side", low=0.001)
    max_horizontal_std_m: float = setting(5.0, "positions with a larger horizontal std are dropped", low=0.001)
    gps_gate: MotionGate = dataclasses.field(default_factory=MotionGate)
    chunk_size: int = setting(256, "keyframes per resumable chunk", low=1)
    shard: str = setting("0/1", "'i/n': build the i-th of n slices; 'auto': RANK/WORLD_SIZE (torchrun)")
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    dtype: str = setting("float32", "descriptor storage", choices=("float32", "float16"))
    out: str = setting("", "output map directory")
    work_dir: str = setting("", "where finished chunks are kept (default <out>.partial)")
    restart: bool = setting(False, "discard a partial build and start over")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        check_device_name(self.device)
        if self.resize != "square" and (self.backend != "torch" or self.method != "dsformer"):
            raise ConfigError(f"resize: {self.resize} needs method dsformer on the torch backend (an exported model "
                              "takes one fixed input size)")
        if self.backend != "torch" and not self.checkpoint:
            raise ConfigError(f"checkpoint: backend {self.backend} needs the exported .onnx (dsformer-vpr export)")
        if self.odom_topic and not self.odom_utm_zone:
            raise ConfigError("odom_utm_zone: required with odom_topic (the UTM zone of the odometry frame, e.g. 32U)")
        if self.odom_utm_zone:
            try:
                parse_utm_zone(self.odom_utm_zone)
            except TrackError as exc:
                raise ConfigError(f"odom_utm_zone: {exc}") from None
        if self.shard != "auto":
            parse_shard(self.shard)
        self.index.validate()


def make_method(cfg: BuildMapConfig, device: str) -> DescriptorMethod:
    """The map's descriptor method; building with an untrained model is allowed but said loudly."""
    if cfg.method == "raw_pixels":
        return RawPixels(cfg.raw_pixels)
    if not cfg.checkpoint:
        log.warning("no checkpoint given: describing with an UNTRAINED %s (ImageNet backbone, random transformer); "
                    "the map is valid but only a baseline. Pass --checkpoint for a real map.", cfg.variant)
    if cfg.backend != "torch":
        return load_extractor(cfg.backend, cfg.checkpoint, device, cfg.precision, cfg.batch_size)
    model = load_model(cfg.checkpoint or None, variant=cfg.variant, device=device)
    preprocessing = dataclasses.replace(preprocess_config_for(model.config), resize=cfg.resize)
    return DescriptorExtractor(model, preprocessing, batch_size=cfg.batch_size, precision=cfg.precision)


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n) with 0 <= i < n; 'auto' takes RANK/WORLD_SIZE from the environment (torchrun)."""
    if text == "auto":
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"shard: expected 'i/n' (e.g. 0/4) or 'auto', got {text!r}") from None
    if not 0 <= i < n:
        raise ConfigError(f"shard: need 0 <= i < n, got {text!r}")
    return i, n


def shard_output_path(out: str | Path, shard: int, shards: int) -> Path:
    """Where shard i of n is written: `out` itself for one shard, else `out.shard-III-of-NNN`."""
    out = Path(out)
    return out if shards == 1 else out.with_name(f"{out.name}.shard-{shard:03d}-of-{shards:03d}")


@dataclasses.dataclass
class Plan:
    """Keyframes of the whole log in stream order (rows), with global place ids, plus pass-1 counts."""

    place_id: np.ndarray
    stream_index: np.ndarray
    bag_time_ns: np.ndarray
    stamp_ns: np.ndarray
    easting: np.ndarray
    northing: np.ndarray
    lat: np.ndarray
    lon: np.ndarray
    heading_deg: np.ndarray
    source: np.ndarray
    frame_bag_times: np.ndarray
    zone_number: int
    zone_letter: str
    info: dict
    # stand-ins for keyframes that fail to decode (see `track.keyframe_alternates`): per row (keyframe row,
    # stream index, bag time, stamp) and (easting, northing, lat, lon, heading_deg)
    alt_ints: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 4), dtype=np.int64))
    alt_floats: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 5), dtype=np.float64))

    def save(self, path: Path) -> None:
        """Write the plan atomically (npz, no pickle)."""
        arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), np.ndarray)}
        meta = np.array(json.dumps({"zone_number": self.zone_number, "zone_letter": self.zone_letter,
                                    "info": self.info}))
        atomic_save(path, lambda tmp: _savez(tmp, meta=meta, **arrays), suffix=".npz")

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Read a plan written by `save`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in data.files if name != "meta"}
        return cls(**arrays, zone_number=meta["zone_number"], zone_letter=meta["zone_letter"], info=meta["info"])

    def metadata(self, rows: np.ndarray, stand_ins: dict[int, int] | None = None) -> PlaceMetadata:
        """PlaceMetadata of plan rows; rows in `stand_ins` (row -> alternate) take their stand-in frame's."""
        n = rows.size
        columns = {"easting": self.easting[rows], "northing": self.northing[rows], "lat": self.lat[rows],
                   "lon": self.lon[rows], "heading_deg": self.heading_deg[rows], "stamp_ns": self.stamp_ns[rows],
                   "source": self.source[rows]}
        stand_ins = stand_ins or {}
        for i in np.flatnonzero(np.isin(rows, list(stand_ins))):
            row, alt = int(rows[i]), stand_ins[int(rows[i])]
            for k, name in enumerate(("easting", "northing", "lat", "lon", "heading_deg")):
                columns[name][i] = self.alt_floats[alt, k]
            columns["stamp_ns"][i] = self.alt_ints[alt, 3]
            columns["source"][i] = self.source[row].rsplit("@", 1)[0] + f"@{int(self.alt_ints[alt, 3])}"
        return PlaceMetadata(place_id=self.place_id[rows], zone_number=np.full(n, self.zone_number, dtype=np.int64),
                             zone_letter=np.full(n, self.zone_letter), **columns)

    def stand_ins(self, row: int) -> np.ndarray:
        """Alternate numbers of the stand-ins of keyframe `row`, in stream order (alternates are sorted by row)."""
        lo, hi = np.searchsorted(self.alt_ints[:, 0], [row, row + 1])
        return np.arange(lo, hi)


def _savez(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def input_kind(cfg: BuildMapConfig) -> str:
    """'bag' or 'at_folder' for the configured input."""
    path = Path(cfg.input)
    if not path.exists():
        raise FileNotFoundError(f"input {path} does not exist")
    if cfg.kind != "auto":
        return cfg.kind
    if path.is_file() or (path / "metadata.yaml").is_file():
        return "bag"
    return "at_folder"


def _load_track(reader: DriveLogReader, cfg: BuildMapConfig) -> Track:
    if cfg.odom_topic:
        return track_from_odometry(reader.odometry(cfg.odom_topic), cfg.odom_utm_zone, cfg.max_horizontal_std_m,
                                   cfg.heading_baseline_m)
    return track_from_fixes(reader.gps_fixes(cfg.gps_topic), cfg.max_horizontal_std_m, cfg.heading_baseline_m,
                            cfg.gps_gate)


def check_topics(cfg: BuildMapConfig, reader: DriveLogReader) -> None:
    """Fail early (before loading a model) when the image or position topic is missing or of the wrong type."""
    reader.require_topic(cfg.image_topic, "image")
    if cfg.odom_topic:
        reader.require_topic(cfg.odom_topic, "odometry")
    else:
        reader.require_topic(cfg.gps_topic, "GPS")


def plan_bag(cfg: BuildMapConfig, reader: DriveLogReader) -> Plan:
    """Pass 1 over a bag: the position track and the image headers -> positioned frames -> keyframes."""
    path = reader.path
    track = _load_track(reader, cfg)
    total = reader.message_count(cfg.image_topic)
    stamps, bag_times, unreadable = [], [], []
    for frame in tqdm(reader.image_frames(cfg.image_topic), total=total, desc="pass 1: image headers", unit="frame"):
        stamps.append(frame.stamp_ns)
        bag_times.append(frame.bag_time_ns)
        unreadable.append(frame.msg is None)
    stamps_a = np.asarray(stamps, dtype=np.int64)
    bag_a = np.asarray(bag_times, dtype=np.int64)
    bad = np.asarray(unreadable, dtype=bool)
    if stamps_a.size == 0:
        raise BuildError(f"image topic {cfg.image_topic!r} in {path} has no messages")
    check_frame_stamps(stamps_a[~bad], f"{cfg.image_topic} in {path}")
    positions = position_frames(track, stamps_a, cfg.max_fix_gap_s)
    reason = positions.reason.astype(object)
    reason[bad] = UNREADABLE
    ok = reason == ""
    candidates = np.flatnonzero(ok)
    order = candidates[np.lexsort((candidates, stamps_a[candidates]))]
    key_positions = select_keyframes(positions.easting[order], positions.northing[order],
                                     positions.heading_deg[order], cfg.spacing_m, cfg.heading_change_deg)
    keys = order[key_positions]
    reason[np.setdiff1d(candidates, keys)] = BETWEEN_KEYFRAMES
    alt_key, alt_frame = keyframe_alternates(positions.easting[order], positions.northing[order], key_positions,
                                             cfg.spacing_m, MAX_ALTERNATES)
    alt_key, alt_frame = order[alt_key], order[alt_frame]
    later = alt_frame > alt_key  # a stand-in must come after its keyframe in the stream
    alt_key, alt_frame = alt_key[later], alt_frame[later]
    keys = np.sort(keys)
    place_id = np.empty(keys.size, dtype=np.int64)
    place_id[np.lexsort((keys, stamps_a[keys]))] = np.arange(keys.size)
    values, counts = np.unique(reason[reason != ""].astype(str), return_counts=True)
    info = {
        "frames_read": int(stamps_a.size),
        "frames_positioned": int(ok.sum()),
        "keyframes": int(keys.size),
        "dropped": {str(v): int(c) for v, c in zip(values, counts)},
        "fixes": track.counts,
        "position_source": "odometry" if cfg.odom_topic else "gps",
        "heading_source": track.heading_source,
        "crossed_zones": track.crossed_zones,
    }
    src = str(path.resolve())
    source = np.array([f"bag:{src}#{cfg.image_topic}@{int(s)}" for s in stamps_a[keys]])
    alt_order = np.lexsort((alt_frame, np.searchsorted(keys, alt_key)))  # by keyframe row, then stream order
    alt_key, alt_frame = alt_key[alt_order], alt_frame[alt_order]
    alt_ints = np.column_stack([np.searchsorted(keys, alt_key), alt_frame, bag_a[alt_frame], stamps_a[alt_frame]])
    alt_floats = np.column_stack([positions.easting[alt_frame], positions.northing[alt_frame],
                                  positions.lat[alt_frame], positions.lon[alt_frame], positions.heading_deg[alt_frame]])
    return Plan(place_id, keys.astype(np.int64), bag_a[keys], stamps_a[keys], positions.easting[keys],
                positions.northing[keys], positions.lat[keys], positions.lon[keys], positions.heading_deg[keys],
                source, bag_a, track.zone_number, track.zone_letter, info, alt_ints.astype(np.int64),
                alt_floats.astype(np.float64))


def plan_at_folder(cfg: BuildMapConfig) -> Plan:
    """An '@' folder is already a database: every image becomes a place (positions and heading from the names)."""
    folder = Path(cfg.input)
    try:
        paths, names = read_at_folder(folder)
    except (FileNotFoundError, AtNameError) as exc:
        raise BuildError(str(exc)) from None
    bad = [p.name for p, a in zip(paths, names) if a.timestamp and not a.timestamp.isdigit()]
    if bad:
        raise BuildError(f"{len(bad)} '@' name(s) carry a timestamp that is not an integer (nanoseconds), "
                         f"e.g. {bad[0]}")
    stamps = np.array([int(a.timestamp) if a.timestamp else 0 for a in names], dtype=np.int64)
    zone, letter = names[0].zone_number, names[0].zone_letter
    easting = np.array([a.easting for a in names])
    northing = np.array([a.northing for a in names])
    lat = np.array([a.lat for a in names])
    lon = np.array([a.lon for a in names])
    other = np.array([a.zone_number != zone for a in names])
    crossed = sorted({a.zone_number for a in names if a.zone_number != zone})
    if other.any():
        if not np.isfinite(lat[other]).all() or not np.isfinite(lon[other]).all():
            raise BuildError(f"images lie in UTM zones {[zone] + crossed} and some lack lat/lon to reproject them")
        log.warning("images lie in UTM zones %s; reprojecting all into zone %d", [zone] + crossed, zone)
        easting[other], northing[other], _, _ = latlon_to_utm(lat[other], lon[other], force_zone=zone)
    order = np.lexsort((np.arange(len(paths)), stamps))
    place_id = np.empty(len(paths), dtype=np.int64)
    place_id[order] = np.arange(len(paths))
    source = np.array([f"file:{p.relative_to(folder).as_posix()}" for p in paths])
    info = {"frames_read": len(paths), "frames_positioned": len(paths), "keyframes": len(paths), "dropped": {},
            "fixes": {}, "position_source": "at_names", "heading_source": "at_names", "crossed_zones": crossed}
    index = np.arange(len(paths), dtype=np.int64)
    return Plan(place_id, index, np.zeros(len(paths), dtype=np.int64), stamps, easting, northing, lat, lon,
                np.array([a.heading_deg for a in names]), source, np.zeros(0, dtype=np.int64), zone, letter, info)


def _input_identity(cfg: BuildMapConfig, kind: str) -> list:
    """Names, sizes and modification times of the input files (a changed input invalidates a partial build)."""
    if kind == "at_folder":
        files = list_images(cfg.input)
    else:
        path = resolve_bag_path(cfg.input)
        files = sorted(path.iterdir()) if path.is_dir() else [path]
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def config_hash(cfg: BuildMapConfig, kind: str, fingerprint: str) -> str:
    """SHA-256 of everything that decides the chunks' content: config (less output/runtime knobs), model, input."""
    data = to_dict(cfg)
    for name in ("out", "work_dir", "device", "batch_size", "restart", "index", "dtype"):
        data.pop(name)
    data["input"] = str(Path(cfg.input).resolve())
    payload = {"config": data, "model": fingerprint, "input_files": _input_identity(cfg, kind)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _chunk_path(work: Path, c: int) -> Path:
    return work / f"chunk_{c:05d}.npz"


def _prepare_work_dir(work: Path, digest: str, restart: bool) -> bool:
    """Create or validate the work dir; True when it holds progress of this same build."""
    progress = work / PROGRESS_FILE
    if work.exists() and (restart or not progress.is_file()):
        if not restart and any(work.iterdir()):
            raise BuildError(f"work dir {work} exists without {PROGRESS_FILE}; remove it or set restart=true")
        shutil.rmtree(work)
    if progress.is_file():
        recorded = json.loads(progress.read_text()).get("config_hash")
        if recorded != digest:
            raise BuildError(
                f"work dir {work} holds a partial build with another configuration, model or input "
                f"(hash {str(recorded)[:12]} vs {digest[:12]}); remove it or set restart=true"
            )
        return True
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_text(progress, json.dumps({"config_hash": digest, "started": time.time()}, indent=2) + "\n")
    return False


def _frames(cfg: BuildMapConfig, reader: DriveLogReader | None, plan: Plan, rows: np.ndarray):
    """(plan row, RGB image or error text, stand-in used or -1) for `rows` (ascending stream order), streaming the
    input once; a keyframe that fails to decode is replaced by the first of its stand-ins that decodes.

    `reader` is the open drive log (None for an '@' folder)."""
    if reader is None:
        paths = list_images(cfg.input)
        for r in rows:
            try:
                yield int(r), read_image(paths[plan.stream_index[r]]), -1
            except (ImageError, OSError) as exc:
                yield int(r), f"{DECODE_ERROR}: {exc}", -1
        return
    wanted = {int(plan.stream_index[r]): int(r) for r in rows}
    own = np.isin(plan.alt_ints[:, 0], rows)  # the stand-ins these rows may need
    times = np.concatenate([plan.bag_time_ns[rows], plan.alt_ints[own, 2]])
    start, stop, first_index = None, None, 0
    if (np.diff(plan.frame_bag_times) >= 0).all():  # bag order is time order: read only the needed time range
        start, stop = int(times.min()), int(times.max()) + 1
        first_index = int(np.searchsorted(plan.frame_bag_times, start, side="left"))
    last = int(np.concatenate([plan.stream_index[rows], plan.alt_ints[own, 1]]).max())
    failed: dict[int, str] = {}  # keyframes that failed to decode, waiting for a stand-in
    left: collections.Counter = collections.Counter()  # stand-ins of a failed keyframe not yet streamed
    stand_ins: dict[int, tuple[int, int]] = {}  # stream index -> (failed row, alternate), only for failed rows
    for frame in reader.image_frames(cfg.image_topic, start, stop, first_index):
        row = wanted.pop(frame.index, None)
        if row is not None:
            try:
                yield row, frame.decode(), -1
            except ImageDecodeError as exc:
                alts = plan.stand_ins(row)
                if alts.size:
                    failed[row], left[row] = f"{DECODE_ERROR}: {exc}", int(alts.size)
                    stand_ins.update({int(plan.alt_ints[a, 1]): (row, int(a)) for a in alts})
                else:
                    yield row, f"{DECODE_ERROR}: {exc}", -1
        if frame.index in stand_ins:
            row, alt = stand_ins.pop(frame.index)
            left[row] -= 1
            try:
                image = frame.decode()
            except ImageDecodeError:
                if not left[row]:
                    yield row, failed.pop(row), -1
            else:
                failed.pop(row)
                for other in plan.stand_ins(row):  # the row is done: its later stand-ins are not needed
                    stand_ins.pop(int(plan.alt_ints[other, 1]), None)
                yield row, image, alt
        if frame.index >= last:
            break
    for row, error in failed.items():
        yield row, error, -1
    for index, row in sorted(wanted.items()):
        yield row, f"{UNREADABLE}: frame {index} not found in the second pass (the bag changed?)", -1


def _describe_chunks(cfg: BuildMapConfig, reader: DriveLogReader | None, plan: Plan, chunks: list[np.ndarray],
                     todo: list[int], method: DescriptorMethod, work: Path) -> tuple[int, float]:
    """Pass 2: describe the rows of the unfinished chunks and save each chunk atomically; (images, seconds)."""
    if not todo:
        return 0, 0.0
    chunk_of = {int(r): c for c in todo for r in chunks[c]}
    rows = np.sort(np.concatenate([chunks[c] for c in todo]))
    state = {c: {"rows": [], "desc": [], "failed": [], "reasons": [], "stand_ins": [], "seen": 0} for c in todo}
    batch: list[tuple[int, np.ndarray]] = []
    described, logged = 0, 0
    start = time.perf_counter()
    bar = tqdm(total=rows.size, desc="pass 2: describe keyframes", unit="img")

    def flush() -> None:
        nonlocal described
        if not batch:
            return
        desc = method.describe([img for _, img in batch])
        for (r, _), d in zip(batch, desc):
            st = state[chunk_of[r]]
            st["rows"].append(r)
            st["desc"].append(d)
        described += len(batch)
        batch.clear()

    for row, image, alt in _frames(cfg, reader, plan, rows):
        c = chunk_of[row]
        if alt >= 0:
            state[c]["stand_ins"].append((row, alt))
            log.info("keyframe %s could not be decoded; using the frame stamped %d (within %g m) instead",
                     plan.source[row], int(plan.alt_ints[alt, 3]), cfg.spacing_m)
        if isinstance(image, str):
            state[c]["failed"].append(row)
            state[c]["reasons"].append(image.split(":", 1)[0])
            if logged < _MAX_LOGGED_ERRORS:
                log.warning("dropping keyframe %s: %s", plan.source[row], image)
                logged += 1
        else:
            batch.append((row, image))
            if len(batch) >= cfg.batch_size:
                flush()
        state[c]["seen"] += 1
        bar.update(1)
        if state[c]["seen"] == chunks[c].size:
            flush()
            _save_chunk(work, c, state.pop(c), method.dim)
    bar.close()
    flush()
    for c in list(state):
        _save_chunk(work, c, state.pop(c), method.dim)
    return described, time.perf_counter() - start


def _save_chunk(work: Path, c: int, st: dict, dim: int) -> None:
    desc = np.stack(st["desc"]).astype(np.float32) if st["desc"] else np.zeros((0, dim), dtype=np.float32)
    arrays = {"rows": np.asarray(st["rows"], dtype=np.int64), "descriptors": desc,
              "failed_rows": np.asarray(st["failed"], dtype=np.int64),
              "failed_reasons": np.asarray(st["reasons"], dtype=np.str_),
              "stand_ins": np.asarray(st["stand_ins"], dtype=np.int64).reshape(-1, 2)}
    atomic_save(_chunk_path(work, c), lambda tmp: _savez(tmp, **arrays), suffix=".npz")
    log.debug("chunk %d saved: %d described, %d failed", c, desc.shape[0], len(st["failed"]))


def build_map(cfg: BuildMapConfig) -> dict:
    """Build (or resume) the map of `cfg`; returns the summary. The map appears at the output path only when done."""
    if not cfg.input:
        raise ConfigError("input: required (a bag or an '@' image folder)")
    if not cfg.out:
        raise ConfigError("out: required (the map directory to write)")
    kind = input_kind(cfg)
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(DriveLogReader(resolve_bag_path(cfg.input))) if kind == "bag" else None
        return _build(cfg, reader)


def _build(cfg: BuildMapConfig, reader: DriveLogReader | None) -> dict:
    """build_map with the drive log opened once (`reader`; None for an '@' folder)."""
    shard, shards = parse_shard(cfg.shard)
    out = shard_output_path(cfg.out, shard, shards)
    device = cfg.device
    if device == "auto" and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    kind = "at_folder" if reader is None else "bag"
    check_output_directory(out)  # before any work: not a file, not under one
    if reader is not None:
        check_topics(cfg, reader)
    t0 = time.perf_counter()
    method = make_method(cfg, device)
    digest = config_hash(cfg, kind, method.fingerprint)
    work = Path(cfg.work_dir) if cfg.work_dir else out.with_name(out.name + ".partial")
    resumed = _prepare_work_dir(work, digest, cfg.restart)
    if resumed and (work / PLAN_FILE).is_file():
        plan = Plan.load(work / PLAN_FILE)
        log.info("resuming the build in %s (%d keyframes planned)", work, plan.place_id.size)
    else:
        plan = plan_at_folder(cfg) if reader is None else plan_bag(cfg, reader)
        plan.save(work / PLAN_FILE)
    t_plan = time.perf_counter() - t0
    if plan.place_id.size == 0:
        raise BuildError(f"no keyframe could be positioned in {cfg.input} (dropped: {plan.info['dropped']})")
    shard_rows = np.array_split(np.arange(plan.place_id.size), shards)[shard]
    chunks = [shard_rows[i : i + cfg.chunk_size] for i in range(0, shard_rows.size, cfg.chunk_size)]
    todo = [c for c in range(len(chunks)) if not _chunk_path(work, c).is_file()]
    if len(todo) < len(chunks):
        log.info("%d of %d chunks already finished; skipping them", len(chunks) - len(todo), len(chunks))
    described, seconds = _describe_chunks(cfg, reader, plan, chunks, todo, method, work)
    summary = _assemble(cfg, plan, chunks, work, out, method, digest, (shard, shards))
    summary.update({
        "shard": f"{shard}/{shards}", "chunks": len(chunks), "chunks_resumed": len(chunks) - len(todo),
        "images_described_this_run": described, "describe_seconds": round(seconds, 3),
        "images_per_s": round(described / seconds, 2) if seconds > 0 else None,
        "plan_seconds": round(t_plan, 3), "total_seconds": round(time.perf_counter() - t0, 3),
        "method": method.name, "device": str(method.device), "out": str(out),
    })
    shutil.rmtree(work)
    log.info("built %s: %d places from %d frames (%s images/s)", out, summary["places"], summary["frames_read"],
             summary["images_per_s"])
    return summary


def _assemble(cfg: BuildMapConfig, plan: Plan, chunks: list[np.ndarray], work: Path, out: Path,
              method: DescriptorMethod, digest: str, shard: tuple[int, int]) -> dict:
    """Collect the chunks, order rows by place id, build and save the map atomically; the summary so far."""
    rows, descs, failed, stand_ins = [], [], [], {}
    for c in range(len(chunks)):
        with np.load(_chunk_path(work, c), allow_pickle=False) as data:
            rows.append(data["rows"])
            descs.append(data["descriptors"])
            failed.extend(data["failed_reasons"].tolist())
            if "stand_ins" in data.files:
                stand_ins.update({int(r): int(a) for r, a in data["stand_ins"]})
    rows_a = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    dropped = dict(plan.info["dropped"])
    for reason in failed:
        dropped[reason] = dropped.get(reason, 0) + 1
    if rows_a.size == 0:
        raise BuildError(f"no keyframe of shard {shard[0]}/{shard[1]} could be described (dropped: {dropped})")
    order = np.argsort(plan.place_id[rows_a], kind="stable")
    descriptors = np.concatenate(descs)[order]
    metadata = plan.metadata(rows_a[order], stand_ins)
    build_info = {
        "tool": "dsformer-vpr build-map", "input": str(Path(cfg.input).resolve()), "image_topic": cfg.image_topic,
        "position_source": plan.info["position_source"], "spacing_m": cfg.spacing_m,
        "heading_change_deg": cfg.heading_change_deg, "shard": f"{shard[0]}/{shard[1]}",
        "keyframes_total": int(plan.place_id.size), "config_hash": digest,
        "zone": f"{plan.zone_number}{plan.zone_letter}",
    }
    place_map = build_method_map(method, descriptors, metadata, build_info, index=cfg.index, dtype=cfg.dtype)
    attach_similarity(place_map)  # the sequence localizer's measurement model (merge-maps fits the merged map anew)
    place_map.save(out)
    return {
        "input": str(cfg.input), "frames_read": plan.info["frames_read"],
        "frames_positioned": plan.info["frames_positioned"], "keyframes": plan.info["keyframes"],
        "places": len(place_map), "keyframes_replaced": len(stand_ins), "dropped": dropped,
        "fixes": plan.info["fixes"],
        "position_source": plan.info["position_source"], "heading_source": plan.info["heading_source"],
        "zone": build_info["zone"], "crossed_zones": plan.info["crossed_zones"],
    }


def format_summary(summary: dict) -> str:
    """The summary as a two-column text table."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            lines.append(f"{key}:")
            lines.extend(f"  {k:<30} {v}" for k, v in value.items())
        else:
            lines.append(f"{key:<32} {value}")
    return "\n".join(lines)


FLAGS = ("out", "kind", "image_topic", "gps_topic", "odom_topic", "odom_utm_zone", "method", "checkpoint", "variant", "backend",
         "device", "batch_size", "precision", "resize", "spacing_m", "chunk_size", "shard", "index.kind", "work_dir", "restart")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `build-map` (any config field also through --set key=value)."""
    add_config_flags(parser, BuildMapConfig, FLAGS, positional=("input",))
    parser.add_argument("--summary-json", type=Path, help="also write the summary as JSON here")


def run(args: argparse.Namespace) -> int:
    """Build the map and print the summary table."""
    summary = build_map(config_from_args(BuildMapConfig, args))
    print(format_summary(summary))
    if args.summary_json is not None:
        atomic_write_text(args.summary_json, json.dumps(summary, indent=2) + "\n")
    return 0
