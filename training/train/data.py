"""Training images per class and group: panoramas cropped towards a class's focal point (EigenPlaces), or perspective
frames chosen by heading; per-group datasets with seeded random resized crops and colour jitter; per-epoch plans.

Every sample's randomness comes from a seed in the epoch plan, a pure function of (seed, epoch, group): the images a
run sees do not depend on worker processes, DDP ranks or where a run was interrupted and resumed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset

from dsformer_ros.common.geometry import heading_difference_deg
from dsformer_ros.inference.preprocess import read_image
from training.io.at_names import AtName, AtNameError, read_at_folder
from training.partition.clustering import VIEWS, Partition, focal_headings_deg, partition
from training.train.config import AugmentSection, DataSection

log = logging.getLogger(__name__)


class TrainingDataError(ValueError):
    """The training images cannot make a training set (missing fields, mixed UTM zones, no classes left)."""


@dataclass
class ImageTable:
    """'@'-named images with UTM position and heading (degrees clockwise from north)."""

    paths: list[Path]
    positions: np.ndarray  # (N, 2) east/north
    headings: np.ndarray  # (N,) degrees
    zone: str


@dataclass
class GroupClasses:
    """The classes of one group: per class the image indices that may be drawn and its focal point."""

    group: int
    direction: str
    class_ids: np.ndarray  # (K,) partition class ids
    images: list[np.ndarray]  # per class, indices into ImageTable
    focal: np.ndarray  # (K, 2)

    @property
    def num_classes(self) -> int:
        """Number of classes (the classifier's output size)."""
        return len(self.images)


@dataclass
class TrainingSet:
    """Images, their partition and the usable classes of every non-empty group."""

    kind: str
    table: ImageTable
    partition: Partition
    groups: dict[int, GroupClasses]


def read_image_table(roots: list[str]) -> ImageTable:
    """All '@'-named images under `roots`, with positions and headings; every image needs a heading and one zone."""
    paths: list[Path] = []
    names: list[AtName] = []
    for root in roots:
        try:
            found, parsed = read_at_folder(root)
        except (FileNotFoundError, AtNameError) as exc:
            raise TrainingDataError(f"training images: {exc}") from None
        paths.extend(found)
        names.extend(parsed)
    zones = sorted({f"{n.zone_number}{n.zone_letter}" for n in names})
    if len(zones) > 1:
        raise TrainingDataError(f"training images span several UTM zones ({', '.join(zones)}); train one zone at a time")
    headings = np.array([n.heading_deg for n in names], dtype=np.float64)
    if np.isnan(headings).any():
        first = paths[int(np.flatnonzero(np.isnan(headings))[0])]
        raise TrainingDataError(
            f"{int(np.isnan(headings).sum())} training images have no heading (field 9), e.g. {first.name}")
    positions = np.array([[n.easting, n.northing] for n in names], dtype=np.float64)
    return ImageTable(paths, positions, np.mod(headings, 360.0), zones[0])


def build_training_set(cfg: DataSection, cache_dir: str | Path | None = None) -> TrainingSet:
    """Read the images, partition their positions and keep per group the classes that can be trained."""
    table = read_image_table(cfg.roots)
    parts = partition(table.positions, cfg.partition, cache_dir=cache_dir)
    groups: dict[int, GroupClasses] = {}
    dropped = 0
    for group in range(parts.num_groups):
        class_ids, images = [], []
        for class_id in parts.group_classes(group):
            info = parts.class_info(int(class_id))
            members = info.members
            if cfg.kind == "perspective_at":
                bearing = focal_headings_deg(table.positions[members], info.focal)
                members = members[heading_difference_deg(bearing, table.headings[members]) <= cfg.heading_tolerance_deg]
                if len(members) < cfg.min_frames_per_class:
                    dropped += 1
                    continue
            class_ids.append(int(class_id))
            images.append(members)
        if class_ids:
            ids = np.array(class_ids, dtype=np.int64)
            groups[group] = GroupClasses(group, VIEWS[int(parts.class_view[ids[0]])], ids, images,
                                         parts.class_focal[ids])
    if not groups:
        raise TrainingDataError(
            f"no trainable class: the partition gave {parts.num_classes} classes"
            + (f", all dropped for fewer than data.min_frames_per_class={cfg.min_frames_per_class} frames facing "
               f"the focal point within data.heading_tolerance_deg={cfg.heading_tolerance_deg}"
               if cfg.kind == "perspective_at" else ""))
    log.info("training set: %d images, %d classes in %d groups (%s), %d classes dropped for too few facing frames",
             len(table.paths), sum(g.num_classes for g in groups.values()), len(groups),
             ", ".join(f"{g}:{groups[g].num_classes}" for g in sorted(groups)), dropped)
    return TrainingSet(cfg.kind, table, parts, groups)


def panorama_crop(pano: np.ndarray, pano_heading_deg: float, bearing_deg: float, fov_deg: float) -> np.ndarray:
    """The horizontal window of an equirectangular panorama centred on `bearing_deg` (clockwise from north).

    As in the EigenPlaces/DSFormer SF-XL code: north lies at column (180 - heading) / 360 * W; the window wraps around.
    """
    width = pano.shape[1]
    crop_width = max(1, int(round(fov_deg / 360.0 * width)))
    centre = ((180.0 - pano_heading_deg) % 360.0 + bearing_deg) / 360.0 * width
    start = int(np.floor(centre - crop_width / 2.0)) % width
    columns = (start + np.arange(crop_width)) % width
    return np.ascontiguousarray(pano[:, columns])


def _random_resized_crop(image: np.ndarray, size: tuple[int, int], aug: AugmentSection,
                         rng: np.random.Generator) -> np.ndarray:
    """torchvision's RandomResizedCrop parameter sampling (10 tries, then the central crop) with a numpy generator."""
    height, width = image.shape[:2]
    area = height * width
    log_ratio = np.log(aug.crop_ratio)
    box = None
    for _ in range(10):
        target = area * rng.uniform(*aug.crop_scale)
        ratio = float(np.exp(rng.uniform(*log_ratio)))
        w = int(round(np.sqrt(target * ratio)))
        h = int(round(np.sqrt(target / ratio)))
        if 0 < w <= width and 0 < h <= height:
            box = (int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < aug.crop_ratio[0]:
            w, h = width, int(round(width / aug.crop_ratio[0]))
        elif in_ratio > aug.crop_ratio[1]:
            h, w = height, int(round(height * aug.crop_ratio[1]))
        else:
            w, h = width, height
        box = ((height - h) // 2, (width - w) // 2, h, w)
    top, left, h, w = box
    crop = image[top : top + h, left : left + w]
    shrink = size[0] < h and size[1] < w
    return cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _colour_jitter(image: torch.Tensor, aug: AugmentSection, rng: np.random.Generator) -> torch.Tensor:
    """torchvision ColorJitter (random order of brightness, contrast, saturation, hue) with a numpy generator."""
    for op in rng.permutation(4):
        if op == 0 and aug.brightness > 0:
            image = TF.adjust_brightness(image, rng.uniform(max(0.0, 1 - aug.brightness), 1 + aug.brightness))
        elif op == 1 and aug.contrast > 0:
            image = TF.adjust_contrast(image, rng.uniform(max(0.0, 1 - aug.contrast), 1 + aug.contrast))
        elif op == 2 and aug.saturation > 0:
            image = TF.adjust_saturation(image, rng.uniform(max(0.0, 1 - aug.saturation), 1 + aug.saturation))
        elif op == 3 and aug.hue > 0:
            image = TF.adjust_hue(image, rng.uniform(-aug.hue, aug.hue))
    return image


class GroupDataset(Dataset):
    """Items are (class label, sample seed) pairs from an epoch plan; returns (normalised (3, H, W) image, label)."""

    def __init__(self, training_set: TrainingSet, group: int, data_cfg: DataSection, image_size: tuple[int, int],
                 mean: tuple[float, float, float], std: tuple[float, float, float]) -> None:
        if group not in training_set.groups:
            raise KeyError(f"group {group} has no trainable classes")
        self.set = training_set
        self.classes = training_set.groups[group]
        self.cfg = data_cfg
        self.size = (int(image_size[0]), int(image_size[1]))
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return self.classes.num_classes

    def view(self, label: int, rng: np.random.Generator) -> np.ndarray:
        """One uint8 RGB view of class `label`: a random member image, cut towards the focal point for panoramas."""
        members = self.classes.images[label]
        index = int(members[rng.integers(len(members))])
        image = read_image(self.set.table.paths[index])
        if self.set.kind == "sfxl_panoramas":
            bearing = float(focal_headings_deg(self.set.table.positions[index], self.classes.focal[label]))
            image = panorama_crop(image, float(self.set.table.headings[index]), bearing, self.cfg.pano_fov_deg)
        return image

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        label, seed = int(item[0]), int(item[1])
        rng = np.random.default_rng(seed)
        image = _random_resized_crop(self.view(label, rng), self.size, self.cfg.augment, rng)
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
        tensor = _colour_jitter(tensor, self.cfg.augment, rng).clamp_(0.0, 1.0)
        return (tensor - self.mean) / self.std, label


def epoch_plan(num_classes: int, batch_size: int, iterations: int, seed: int, epoch: int) -> np.ndarray:
    """(iterations, batch_size, 2) int64 (class label, sample seed): shuffled passes over the classes, as EigenPlaces.

    Depends only on its arguments, so a resumed run sees exactly the samples an uninterrupted one would.
    """
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    total = iterations * batch_size
    passes = -(-total // num_classes)
    labels = np.concatenate([rng.permutation(num_classes) for _ in range(passes)])[:total]
    seeds = rng.integers(0, np.iinfo(np.int64).max, size=total, dtype=np.int64)
    return np.stack([labels, seeds], axis=1).reshape(iterations, batch_size, 2)


def shard_plan(plan: np.ndarray, rank: int, world_size: int) -> list[list[tuple[int, int]]]:
    """This process's share of every batch of a plan (contiguous slices of equal size), as a batch sampler."""
    batch = plan.shape[1]
    if batch % world_size:
        raise ValueError(f"batch size {batch} does not split evenly over {world_size} processes")
    local = batch // world_size
    part = plan[:, rank * local : (rank + 1) * local]
    return [[(int(c), int(s)) for c, s in row] for row in part]
