"""`dsformer-vpr merge-maps`: one map from shard maps (built with `build-map --shard i/n`) or any maps of one model.

All inputs must share model variant, checkpoint, descriptor dimension, preprocessing and UTM zone. Place ids are
kept when they are unique across inputs (shards of one build are), else renumbered 0..N-1 in stamp order
(`renumber`). Shards of one build are checked for completeness (every i of n present, same plan).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np

from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.maps.map_index import IndexConfig
from dsformer_ros.maps.placemap import PlaceMap, PlaceMetadata

log = logging.getLogger(__name__)


class MergeError(ValueError):
    """The maps cannot be merged; the message names the map and the mismatch."""


@dataclasses.dataclass
class MergeMapsConfig:
    """Configuration of `merge-maps`: input maps, output, id policy and the index of the merged map."""

    inputs: list[str] = dataclasses.field(default_factory=list)
    out: str = setting("", "merged map directory")
    renumber: str = setting("if_needed", "place ids: renumber in stamp order", choices=("if_needed", "always", "never"))
    allow_partial: bool = setting(False, "merge even if shards are missing")
    index: IndexConfig = dataclasses.field(default_factory=IndexConfig)
    dtype: str = ""

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        if self.dtype not in ("", "float32", "float16"):
            raise ConfigError(f"dtype: {self.dtype!r} is not '', 'float32' or 'float16' ('' keeps the inputs')")
        self.index.validate()


def _check_compatible(maps: list[PlaceMap], paths: list[Path]) -> None:
    first = maps[0].manifest
    zone0 = (int(maps[0].metadata.zone_number[0]), str(maps[0].metadata.zone_letter[0]) >= "N")
    for m, path in zip(maps[1:], paths[1:]):
        mf = m.manifest
        for name in ("model_variant", "checkpoint_sha256", "descriptor_dim", "preprocessing"):
            if getattr(mf, name) != getattr(first, name):
                raise MergeError(f"{path}: {name} {getattr(mf, name)!r} differs from {paths[0]}'s "
                                 f"{getattr(first, name)!r}")
        zone = (int(m.metadata.zone_number[0]), str(m.metadata.zone_letter[0]) >= "N")
        if zone != zone0:
            raise MergeError(f"{path}: UTM zone {zone[0]} ({'N' if zone[1] else 'S'}) differs from {paths[0]}'s "
                             f"{zone0[0]} ({'N' if zone0[1] else 'S'}); a map lies in one zone")


def _check_shards(maps: list[PlaceMap], paths: list[Path], allow_partial: bool) -> None:
    """Shards of one build (same config hash) must all be present exactly once."""
    builds = [m.manifest.build for m in maps]
    if not all("shard" in b and "config_hash" in b for b in builds):
        return
    counts = {b["shard"].split("/")[1] for b in builds}
    plans = {b.get("keyframes_total") for b in builds}
    if len(counts) != 1 or len(plans) != 1:
        raise MergeError(f"the maps come from builds with different shard counts or plans ({sorted(counts)})")
    n = int(counts.pop())
    seen = [int(b["shard"].split("/")[0]) for b in builds]
    dupes = sorted({i for i in seen if seen.count(i) > 1})
    if dupes:
        raise MergeError(f"shard(s) {dupes} given more than once: {[str(p) for p in paths]}")
    missing = sorted(set(range(n)) - set(seen))
    if missing:
        message = f"shard(s) {missing} of {n} are missing"
        if not allow_partial:
            raise MergeError(message + " (set allow_partial=true to merge anyway)")
        log.warning("%s; merging the %d present", message, len(seen))


def merge_maps(cfg: MergeMapsConfig) -> PlaceMap:
    """Load, check and merge the input maps and save the result atomically at `cfg.out`."""
    if len(cfg.inputs) < 1:
        raise ConfigError("inputs: give at least one map")
    if not cfg.out:
        raise ConfigError("out: required (the merged map directory)")
    paths = [Path(p) for p in cfg.inputs]
    maps = [PlaceMap.load(p) for p in paths]
    _check_compatible(maps, paths)
    _check_shards(maps, paths, cfg.allow_partial)
    metadata = PlaceMetadata.concatenate([m.metadata.take(np.arange(len(m))) for m in maps])
    descriptors = np.concatenate([np.asarray(m.descriptors) for m in maps])
    ids = metadata.place_id
    duplicated = np.unique(ids).size != ids.size
    if duplicated and cfg.renumber == "never":
        raise MergeError("place ids collide across the input maps (set renumber=if_needed or always)")
    order = np.lexsort((ids, metadata.stamp_ns)) if cfg.renumber == "always" or duplicated else np.argsort(ids)
    metadata = metadata.take(order)
    descriptors = descriptors[order]
    if cfg.renumber == "always" or duplicated:
        log.info("renumbering place ids 0..%d in stamp order", len(order) - 1)
        metadata.place_id = np.arange(len(order), dtype=np.int64)
    first = maps[0].manifest
    build = {"tool": "dsformer-vpr merge-maps", "inputs": [str(p.resolve()) for p in paths],
             "input_builds": [m.manifest.build for m in maps], "renumbered": bool(cfg.renumber == "always" or duplicated)}
    merged = PlaceMap.build(descriptors, metadata, model_variant=first.model_variant,
                            checkpoint_sha256=first.checkpoint_sha256, preprocessing=first.preprocessing,
                            build_info=build, index=cfg.index, dtype=cfg.dtype or first.descriptor_dtype)
    merged.save(cfg.out)
    log.info("merged %d maps into %s: %d places", len(maps), cfg.out, len(merged))
    return merged


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `merge-maps`."""
    add_config_flags(parser, MergeMapsConfig, ("out", "renumber", "allow_partial", "index.kind"), positional=("inputs",))


def run(args: argparse.Namespace) -> int:
    """Merge and report."""
    cfg = config_from_args(MergeMapsConfig, args)
    merged = merge_maps(cfg)
    print(f"merged {len(cfg.inputs)} maps into {cfg.out}: {len(merged)} places")
    return 0
