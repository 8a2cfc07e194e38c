"""`dsformer-vpr partition`: block-clustering (or grid) partition of an '@' image folder, a positions file or
synthetic SF-XL-like positions; writes partition.npz, partition.json (summary) and partition.png (map)."""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_flags, config_from_args
from training.io.at_names import read_at_folder
from training.partition.clustering import Partition, PartitionConfig, partition
from training.partition.sfxl_positions import sfxl_like_positions

log = logging.getLogger(__name__)

PLOT_MAX_POINTS = 300_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the partition subcommand."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="folder of '@'-named images (UTM east/north from the names)")
    source.add_argument("--positions", type=Path, help=".npy (N, 2) or .csv (east,north per line) of UTM positions")
    source.add_argument("--synthetic", type=int, metavar="N", help="N SF-XL-like synthetic positions")
    parser.add_argument("--seed", type=int, default=0, help="seed of --synthetic (default 0)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--cache-dir", type=Path, help="reuse/store the partition here, keyed by config and input")
    parser.add_argument("--no-plot", action="store_true", help="skip partition.png")
    add_config_flags(parser, PartitionConfig, ("method", "workers"))


def run(args: argparse.Namespace) -> int:
    """Load positions, partition them, write the result, summary and plot."""
    cfg = config_from_args(PartitionConfig, args)
    positions, names = _load_positions(args)
    start = time.perf_counter()
    result = partition(positions, cfg, cache_dir=args.cache_dir)
    seconds = time.perf_counter() - start
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    result.save(out / "partition.npz")
    if names is not None:
        atomic_write_text(out / "images.txt", "".join(f"{n}\n" for n in names))
    summary = summarize(result, seconds)
    atomic_write_text(out / "partition.json", json.dumps(summary, indent=2) + "\n")
    if not args.no_plot:
        plot_partition(positions, result, out / "partition.png")
    log.info("%d classes in %d groups from %d positions in %.1f s; written to %s", result.num_classes,
             result.num_groups, len(positions), seconds, out)
    return 0


def summarize(result: Partition, seconds: float) -> dict:
    """JSON-ready summary: classes and images per group, images-per-class statistics, counts, time."""
    sizes = result.class_sizes()
    per_group = result.classes_per_group()
    images_per_group = np.bincount(result.class_group, weights=sizes, minlength=result.num_groups)
    stats = {}
    if len(sizes):
        stats = {"min": int(sizes.min()), "median": float(np.median(sizes)), "mean": float(sizes.mean()),
                 "max": int(sizes.max())}
    group_view = result.group_views()
    return {
        "method": result.config.get("method"),
        "positions": result.num_positions,
        "classes": result.num_classes,
        "groups": [{"group": g, "view": group_view[g], "classes": int(per_group[g]),
                    "images": int(images_per_group[g])} for g in range(result.num_groups)],
        "images_per_class": stats,
        "counts": result.stats,
        "seconds": round(seconds, 3),
        "config": result.config,
        "fingerprint": result.fingerprint,
    }


def plot_partition(positions: np.ndarray, result: Partition, path: Path) -> None:
    """PNG map: all positions grey, class members coloured by group, peaks and focal points marked."""
    import matplotlib.pyplot as plt

    from training.figures import save_figure

    rng = np.random.default_rng(0)
    fig, ax = plt.subplots(figsize=(10, 10))
    origin = positions.min(axis=0)
    shown = positions if len(positions) <= PLOT_MAX_POINTS else positions[rng.choice(len(positions), PLOT_MAX_POINTS,
                                                                                     replace=False)]
    ax.scatter(*(shown - origin).T, s=0.2, c="0.8", linewidths=0, rasterized=True)
    cmap = plt.get_cmap("tab20")
    members = result.member_indices
    group_of = np.repeat(result.class_group, result.class_sizes())
    if len(members) > PLOT_MAX_POINTS:
        pick = rng.choice(len(members), PLOT_MAX_POINTS, replace=False)
        members, group_of = members[pick], group_of[pick]
    ax.scatter(*(positions[members] - origin).T, s=0.6, c=cmap(group_of % 20), linewidths=0, rasterized=True)
    centre, focal = result.class_centre - origin, result.class_focal - origin
    ax.plot(np.stack([centre[:, 0], focal[:, 0]]), np.stack([centre[:, 1], focal[:, 1]]), c="k", lw=0.3)
    ax.scatter(*(result.class_peak - origin).T, s=3, c="k", marker="o", linewidths=0, label="peak / cell centre")
    ax.scatter(*focal.T, s=4, c="r", marker="x", linewidths=0.5, label="focal point")
    ax.set_aspect("equal")
    ax.set_xlabel(f"east - {origin[0]:.0f} (m)")
    ax.set_ylabel(f"north - {origin[1]:.0f} (m)")
    ax.set_title(f"{result.config.get('method')} partition: {result.num_classes} classes, {result.num_groups} groups")
    ax.legend(loc="upper right", markerscale=4)
    save_figure(fig, path)


def _load_positions(args: argparse.Namespace) -> tuple[np.ndarray, list[str] | None]:
    if args.synthetic is not None:
        return sfxl_like_positions(args.synthetic, seed=args.seed), None
    if args.images is not None:
        paths, names = read_at_folder(args.images)
        zones = sorted({(n.zone_number, n.zone_letter) for n in names})
        if len(zones) > 1:
            raise ValueError(f"{args.images}: images lie in {len(zones)} UTM zones {zones}; "
                             "partition one zone at a time")
        positions = np.array([(n.easting, n.northing) for n in names], dtype=np.float64)
        return positions, [str(p.relative_to(args.images)) for p in paths]
    return _read_positions_file(args.positions), None


def _read_positions_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"positions file {path} does not exist")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.suffix == ".csv":
        first = path.read_text().split("\n", 1)[0]
        header = not all(_is_number(f) for f in first.split(","))
        try:
            return np.loadtxt(path, delimiter=",", skiprows=1 if header else 0, ndmin=2)
        except ValueError as exc:
            raise ValueError(f"{path}: expected two numeric columns east,north: {exc}") from None
    raise ValueError(f"{path}: positions must be a .npy or .csv file")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
