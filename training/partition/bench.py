"""`dsformer-vpr bench-partition`: time the block (and grid) partition on SF-XL-like synthetic positions.

`dsformer-vpr bench-partition [--sizes 100000 1000000] [--workers 2] [--out bench.json]`; 100 k, 1 M and 3.4 M
positions by default.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import resource
import time
from pathlib import Path

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting
from training.partition.clustering import PartitionConfig, block_partition, grid_partition
from training.partition.sfxl_positions import sfxl_like_positions

log = logging.getLogger(__name__)

DEFAULT_SIZES = (100_000, 1_000_000, 3_400_000)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the strip workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_partition(sizes: tuple[int, ...], cfg: PartitionConfig, seed: int = 0) -> list[dict]:
    """Per size: seconds to generate the positions, for the block partition (wall and CPU) and the grid, and counts.

    CPU seconds do not depend on other load on the machine; wall seconds do.
    """
    rows = []
    for n in sizes:
        t0 = time.perf_counter()
        positions = sfxl_like_positions(n, seed=seed)
        t1, c1 = time.perf_counter(), _cpu_seconds()
        block = block_partition(positions, dataclasses.replace(cfg, method="block"))
        t2, c2 = time.perf_counter(), _cpu_seconds()
        grid = grid_partition(positions, dataclasses.replace(cfg, method="grid"))
        t3 = time.perf_counter()
        row = {
            "positions": n,
            "workers": cfg.workers,
            "generate_s": round(t1 - t0, 3),
            "block_s": round(t2 - t1, 3),
            "block_cpu_s": round(c2 - c1, 3),
            "grid_s": round(t3 - t2, 3),
            "block_classes": block.num_classes,
            "block_images_in_classes": block.stats["images_in_classes"],
            "block_strips": block.stats["strips"],
            "hdbscan_clusters": block.stats["hdbscan_clusters"],
            "grid_classes": grid.num_classes,
        }
        log.info("%s", row)
        rows.append(row)
    return rows


@dataclasses.dataclass
class BenchPartitionConfig:
    """Sizes to time, strip workers, the positions' seed and where the JSON rows go."""

    sizes: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_SIZES))
    workers: int = setting(PartitionConfig().workers, "processes over strips", low=1)
    seed: int = setting(0, "seed of the synthetic positions")
    out: str = setting("", "also write the rows as JSON here")

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"sizes: need position counts >= 1, got {self.sizes}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `bench-partition`."""
    add_config_flags(parser, BenchPartitionConfig, ("sizes", "workers", "seed", "out"))


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its table."""
    cfg = config_from_args(BenchPartitionConfig, args)
    rows = bench_partition(tuple(cfg.sizes), PartitionConfig(workers=cfg.workers), seed=cfg.seed)
    print(f"{'positions':>10} {'workers':>7} {'generate s':>10} {'block s':>8} {'block cpu s':>11} {'grid s':>7} "
          f"{'classes':>8} {'images':>9}")
    for r in rows:
        print(f"{r['positions']:>10} {r['workers']:>7} {r['generate_s']:>10.2f} {r['block_s']:>8.1f} "
              f"{r['block_cpu_s']:>11.1f} {r['grid_s']:>7.2f} {r['block_classes']:>8} "
              f"{r['block_images_in_classes']:>9}")
    if cfg.out:
        atomic_write_text(Path(cfg.out), json.dumps(rows, indent=2) + "\n")
    return 0
