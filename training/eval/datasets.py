"""Evaluation data sets: database images, query images and each query's positive database indices.

Readers (all return a `VPRDataset`):
- `read_at_dataset(root, split)`: VPR-datasets-downloader layout, `root/split/database` and `root/split/queries` of
  '@'-named images (UTM east/north/zone in the name); positives within `radius_m`, per UTM zone.
- `read_msls_val(root, cities)`: Mapillary SLS, `root/train_val/<city>/{database,query}/` with `postprocessed.csv`
  (key, easting, northing, ...), `raw.csv` (key, lon, lat, ..., pano) and `images/<key>.jpg`; panoramas are left
  out (as the MSLS reference code does), `subtask_index.csv` column `all` is applied where present; positives within
  `radius_m` per city; the UTM zone comes from raw.csv's lat/lon.
- `read_nordland(root, db_folder, query_folder, tolerance)`: two folders of images named by frame index (the last
  number in the file name); positives within +-`tolerance` frames.
- `read_index_folders(root)`: `root/ref` (database) and `root/query`, images named by index, with
  `ground_truth.csv` (`query_index,correct_ref_indices`, space-separated) or, without that file, the convention
  "query i matches ref i" (+-`tolerance` indices).
"""
from __future__ import annotations

import csv
import dataclasses
import re
from pathlib import Path
from typing import Literal

import numpy as np

from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import setting
from dsformer_ros.common.utm import zone_letter, zone_number
from training.eval.recall import positives_within_frames, positives_within_radius
from training.io.at_names import IMAGE_SUFFIXES, list_images, parse_at_name

DatasetFormat = Literal["at", "msls", "nordland", "folders"]
MSLS_VAL_CITIES = ("cph", "sf")


class DatasetError(ValueError):
    """A data set folder is missing parts or holds something unreadable; the message names the file."""


@dataclasses.dataclass
class VPRDataset:
    """Database and query images with ground truth; `kind` says whether positives come from UTM or frame indices."""

    name: str
    kind: Literal["utm", "index"]
    database_paths: list[Path]
    query_paths: list[Path]
    positives: list[np.ndarray]
    database_utm: np.ndarray | None = None
    query_utm: np.ndarray | None = None
    utm_zone: tuple[int, str] | None = None
    database_heading: np.ndarray | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if not self.database_paths or not self.query_paths:
            raise DatasetError(f"data set {self.name}: needs at least one database and one query image")
        if len(self.positives) != len(self.query_paths):
            raise DatasetError(f"data set {self.name}: positives for {len(self.positives)} of {len(self.query_paths)} queries")
        n = len(self.database_paths)
        for q, pos in enumerate(self.positives):
            if len(pos) and (pos.min() < 0 or pos.max() >= n):
                raise DatasetError(f"data set {self.name}: query {q} has a positive outside 0..{n - 1}")
        for name, value, count in (("database_utm", self.database_utm, n), ("query_utm", self.query_utm, len(self.query_paths))):
            if value is not None and value.shape != (count, 2):
                raise DatasetError(f"data set {self.name}: {name} must have shape ({count}, 2), got {value.shape}")

    @property
    def geotagged(self) -> bool:
        """Whether database and queries carry UTM positions in one zone (so a map of them can be drawn)."""
        return self.database_utm is not None and self.query_utm is not None and self.utm_zone is not None


@dataclasses.dataclass
class DatasetConfig:
    """Which data set to read and how its ground truth is defined.

    format: "at" (split/database + split/queries, '@' names), "msls" (val cities), "nordland" (frame-named folders)
    or "folders" (ref/ + query/ by index, optional ground_truth.csv).
    frame_tolerance: +-frames for "nordland" and for "folders" without ground_truth.csv; None = 2 for Nordland
    (the reference protocol) and 0 for folders (query i matches ref i only).
    """

    format: DatasetFormat = setting(
        "folders",
        "at: split/database + split/queries '@' names; msls: train_val/<city>; nordland: frame-named folders; "
        "folders: ref/ + query/ by index with optional ground_truth.csv (without it query i matches ref i)",
    )
    root: str = setting("", "data set folder")
    split: str = setting("test", "split folder of an 'at' data set")
    cities: tuple[str, ...] = MSLS_VAL_CITIES
    radius_m: float = 25.0
    frame_tolerance: int | None = None
    database_folder: str = ""
    query_folder: str = ""

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if self.format not in ("at", "msls", "nordland", "folders"):
            raise ConfigError(f"dataset.format: {self.format!r} is not one of 'at', 'msls', 'nordland', 'folders'")
        if not self.root:
            raise ConfigError("dataset.root: the data set folder is required")
        if self.radius_m <= 0:
            raise ConfigError(f"dataset.radius_m: must be > 0, got {self.radius_m}")
        if self.frame_tolerance is not None and self.frame_tolerance < 0:
            raise ConfigError(f"dataset.frame_tolerance: must be >= 0, got {self.frame_tolerance}")
        if self.format == "msls" and not self.cities:
            raise ConfigError("dataset.cities: at least one MSLS city is required")


def open_dataset(config: DatasetConfig) -> VPRDataset:
    """Read the data set `config` describes with the matching reader."""
    config.validate()
    root = Path(config.root)
    if config.format == "at":
        return read_at_dataset(root, config.split, config.radius_m)
    if config.format == "msls":
        return read_msls_val(root, config.cities, config.radius_m)
    if config.format == "nordland":
        tolerance = 2 if config.frame_tolerance is None else config.frame_tolerance
        return read_nordland(root, config.database_folder or "summer", config.query_folder or "winter", tolerance)
    tolerance = 0 if config.frame_tolerance is None else config.frame_tolerance
    return read_index_folders(root, config.database_folder or "ref", config.query_folder or "query", tolerance)


def read_at_dataset(root: str | Path, split: str = "test", radius_m: float = 25.0) -> VPRDataset:
    """'@'-named images under `root/split/database` and `root/split/queries`; positives within `radius_m` per zone."""
    base = Path(root) / split if split else Path(root)
    db_paths = _images(base / "database")
    q_paths = _images(base / "queries")
    db = [parse_at_name(p) for p in db_paths]
    qs = [parse_at_name(p) for p in q_paths]
    db_xy = np.array([[a.easting, a.northing] for a in db], dtype=np.float64)
    q_xy = np.array([[a.easting, a.northing] for a in qs], dtype=np.float64)
    db_zone = [(a.zone_number, a.zone_letter >= "N") for a in db]
    q_zone = [(a.zone_number, a.zone_letter >= "N") for a in qs]
    groups = {z: i for i, z in enumerate(sorted(set(db_zone) | set(q_zone)))}
    positives = positives_within_radius(
        db_xy, q_xy, radius_m, np.array([groups[z] for z in db_zone]), np.array([groups[z] for z in q_zone])
    )
    zone = (db[0].zone_number, db[0].zone_letter) if len(groups) == 1 else None
    return VPRDataset(
        name=f"{Path(root).name}/{split}" if split else Path(root).name,
        kind="utm",
        database_paths=db_paths,
        query_paths=q_paths,
        positives=positives,
        database_utm=db_xy,
        query_utm=q_xy,
        utm_zone=zone,
        database_heading=np.array([a.heading_deg for a in db], dtype=np.float64),
        description=f"'@' names, positives within {radius_m:g} m (UTM, per zone)",
    )


def read_msls_val(root: str | Path, cities: tuple[str, ...] | list[str] = MSLS_VAL_CITIES, radius_m: float = 25.0) -> VPRDataset:
    """MSLS validation cities: all non-panorama database and query images; positives within `radius_m` per city."""
    db_paths: list[Path] = []
    q_paths: list[Path] = []
    db_xy, q_xy, db_city, q_city = [], [], [], []
    zones = set()
    for i, city in enumerate(cities):
        for part, paths, xy, city_ids in (("database", db_paths, db_xy, db_city), ("query", q_paths, q_xy, q_city)):
            folder = Path(root) / "train_val" / city / part
            rows = _msls_rows(folder)
            paths.extend(folder / "images" / f"{key}.jpg" for key, _, _, _ in rows)
            xy.extend((e, n) for _, e, n, _ in rows)
            city_ids.extend([i] * len(rows))
            zones.update(zone for _, _, _, zone in rows if zone is not None)
    for path in (db_paths[:1] + q_paths[:1]):
        if not path.is_file():
            raise DatasetError(f"MSLS image {path} does not exist (images/<key>.jpg expected)")
    db_arr = np.array(db_xy, dtype=np.float64).reshape(-1, 2)
    q_arr = np.array(q_xy, dtype=np.float64).reshape(-1, 2)
    positives = positives_within_radius(db_arr, q_arr, radius_m, np.array(db_city), np.array(q_city))
    return VPRDataset(
        name=f"msls_val[{','.join(cities)}]",
        kind="utm",
        database_paths=db_paths,
        query_paths=q_paths,
        positives=positives,
        database_utm=db_arr,
        query_utm=q_arr,
        utm_zone=next(iter(zones)) if len(zones) == 1 else None,
        description=f"MSLS postprocessed.csv easting/northing, panoramas excluded, positives within {radius_m:g} m per city",
    )


def _msls_rows(folder: Path) -> list[tuple[str, float, float, tuple[int, str] | None]]:
    """(key, easting, northing, zone) of the non-panorama images of one MSLS city part, in postprocessed.csv order."""
    post = _read_csv(folder / "postprocessed.csv", ("key", "easting", "northing"))
    raw = {row["key"]: row for row in _read_csv(folder / "raw.csv", ("key",))}
    keep = None
    subtask = folder / "subtask_index.csv"
    if subtask.is_file():
        keep = {i for i, row in enumerate(_read_csv(subtask, ("all",))) if row["all"] == "True"}
    rows = []
    for position, row in enumerate(post):
        extra = raw.get(row["key"], {})
        if extra.get("pano") == "True":
            continue
        frame = int(row[""]) if row.get("", "").isdigit() else position
        if keep is not None and frame not in keep:
            continue
        try:
            east, north = float(row["easting"]), float(row["northing"])
        except ValueError:
            raise DatasetError(f"{folder / 'postprocessed.csv'}: key {row['key']} has a non-numeric easting/northing") from None
        zone = None
        if extra.get("lat") and extra.get("lon"):
            lat, lon = float(extra["lat"]), float(extra["lon"])
            zone = (int(zone_number(lat, lon)), str(zone_letter(lat)))
        rows.append((row["key"], east, north, zone))
    return rows


def read_nordland(root: str | Path, db_folder: str = "summer", query_folder: str = "winter", tolerance: int = 2) -> VPRDataset:
    """Nordland-style folders of images named by frame index; positives within +-`tolerance` frames."""
    db_paths, db_frames = _frame_images(Path(root) / db_folder)
    q_paths, q_frames = _frame_images(Path(root) / query_folder)
    return VPRDataset(
        name=f"{Path(root).name}[{db_folder}->{query_folder}]",
        kind="index",
        database_paths=db_paths,
        query_paths=q_paths,
        positives=positives_within_frames(db_frames, q_frames, tolerance),
        description=f"frame-index ground truth, positives within +-{tolerance} frames",
    )


def read_index_folders(root: str | Path, db_folder: str = "ref", query_folder: str = "query", tolerance: int = 0) -> VPRDataset:
    """`root/ref` and `root/query` by index; ground_truth.csv if present, else query i matches ref i (+-`tolerance`)."""
    root = Path(root)
    db_paths = _index_sorted(_images(root / db_folder))
    q_paths = _index_sorted(_images(root / query_folder))
    gt_file = root / "ground_truth.csv"
    if gt_file.is_file():
        positives = _read_ground_truth(gt_file, len(q_paths))
        description = "ground_truth.csv (query_index -> correct ref indices)"
    else:
        positives = positives_within_frames(np.arange(len(db_paths)), np.arange(len(q_paths)), tolerance)
        description = f"no ground_truth.csv: query i matches ref i (+-{tolerance})"
    return VPRDataset(
        name=root.name,
        kind="index",
        database_paths=db_paths,
        query_paths=q_paths,
        positives=positives,
        description=description,
    )


def _read_ground_truth(path: Path, num_queries: int) -> list[np.ndarray]:
    """Rows `query_index,correct_ref_indices` (space-separated) -> positives per query (missing rows: none)."""
    positives = [np.zeros(0, dtype=np.int64) for _ in range(num_queries)]
    for line_no, row in enumerate(_read_csv(path, ("query_index", "correct_ref_indices")), start=2):
        try:
            q = int(row["query_index"])
            refs = np.array(sorted(int(x) for x in row["correct_ref_indices"].split()), dtype=np.int64)
        except ValueError:
            raise DatasetError(f"{path}:{line_no}: query_index and correct_ref_indices must be integers") from None
        if not 0 <= q < num_queries:
            raise DatasetError(f"{path}:{line_no}: query index {q} is outside 0..{num_queries - 1}")
        positives[q] = refs
    return positives


def _read_csv(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetError(f"{path} does not exist")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {missing} (has {reader.fieldnames})")
        return list(reader)


def _images(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"image folder {folder} does not exist")
    paths = list_images(folder)
    if not paths:
        raise DatasetError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def _index_sorted(paths: list[Path]) -> list[Path]:
    """Images in index order: numerically when every file stem is an integer, else by name."""
    if all(p.stem.isdigit() for p in paths):
        return sorted(paths, key=lambda p: int(p.stem))
    return paths


def _frame_images(folder: Path) -> tuple[list[Path], np.ndarray]:
    """Images of `folder` in frame order with their frame numbers (the last integer in each file stem)."""
    paths = _images(folder)
    frames = []
    for path in paths:
        numbers = re.findall(r"\d+", path.stem)
        if not numbers:
            raise DatasetError(f"{path}: no frame number in the file name")
        frames.append(int(numbers[-1]))
    frames_arr = np.array(frames, dtype=np.int64)
    if len(np.unique(frames_arr)) != len(frames_arr):
        values, counts = np.unique(frames_arr, return_counts=True)
        raise DatasetError(f"{folder}: frame number {int(values[counts > 1][0])} appears more than once")
    order = np.argsort(frames_arr, kind="stable")
    return [paths[i] for i in order], frames_arr[order]
