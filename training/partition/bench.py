"""Time the block (and grid) partition on SF-XL-like synthetic positions: 100 k, 1 M and 3.4 M by default.

Run as `python -m training.partition.bench [--sizes 100000,1000000] [--workers 2] [--out bench.json]`.
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
from dsformer_ros.common.cli import setup_logging
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


def main(argv: list[str] | None = None) -> int:
    """Command line: sizes, workers, optional JSON output."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=",".join(map(str, DEFAULT_SIZES)), help="comma-separated position counts")
    parser.add_argument("--workers", type=int, default=PartitionConfig().workers, help="processes over strips")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    setup_logging()
    sizes = tuple(int(s) for s in args.sizes.split(",") if s)
    rows = bench_partition(sizes, PartitionConfig(workers=args.workers), seed=args.seed)
    print(f"{'positions':>10} {'workers':>7} {'generate s':>10} {'block s':>8} {'block cpu s':>11} {'grid s':>7} "
          f"{'classes':>8} {'images':>9}")
    for r in rows:
        print(f"{r['positions']:>10} {r['workers']:>7} {r['generate_s']:>10.2f} {r['block_s']:>8.1f} "
              f"{r['block_cpu_s']:>11.1f} {r['grid_s']:>7.2f} {r['block_classes']:>8} "
              f"{r['block_images_in_classes']:>9}")
    if args.out is not None:
        atomic_write_text(args.out, json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
