"""`dsformer-vpr`: one command line for the runtime and the training tools; subcommands import lazily."""
from __future__ import annotations

import argparse
import importlib
import sys

from dsformer_ros.common.cli import setup_logging
from dsformer_ros.common.cpus import prefer_passive_omp_wait

# name -> (module providing add_arguments(parser) and run(args) -> int, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "describe": ("training.describe", "compute global descriptors of images into a .npy file"),
    "bench": ("training.bench.backends", "time every backend against the GEMM roofline (quiet and --contended)"),
    "export": ("training.export", "export a checkpoint as ONNX (fixed input size, provenance in metadata)"),
    "node": ("dsformer_ros.ros.main", "run the ROS 2 VPR node without ros2 launch"),
    "eval": ("training.eval.cli", "Recall@N of a model or baseline on a VPR dataset, with a report"),
    "bench-map": ("training.maps.bench_map", "time map search (exact, HNSW, IVF) and the load check on 10k to 1M places"),
    "bench-localizer": ("training.bench.localizer", "time the sequence localizer on a synthetic city of 10k to 1M places"),
    "build-map": ("training.maps.build_map", "build a reference map from a drive log (rosbag2, ROS 1 bag) or '@' folder"),
    "fit-similarity": ("training.maps.fit_similarity", "store the sequence localizer's measurement model in a map"),
    "merge-maps": ("training.maps.merge_maps", "merge map shards built with --shard i/n into one map"),
    "partition": ("training.partition.cli", "block-clustering (or grid) partition of geo-tagged positions"),
    "bench-partition": ("training.partition.bench", "time the block and grid partitions on 100k to 3.4M positions"),
    "train": ("training.train.train", "train DSFormer (EigenPlaces-style) from a YAML config"),
    "synth": ("training.synth.cli", "render synthetic drive logs of a procedural town"),
    "replay": ("training.replay.cli", "replay a bag against a map: Recall@N, fix precision, latency"),
    "sweep": ("training.replay.sweep", "replay drives once per value of a localizer setting: availability vs safety"),
    "demo": ("training.demo.cli", "the end-to-end demo: synth, train, build map, replay through the node"),
    "study": ("training.study", "the sequence localizer on more routes, kidnapped and off-map drives (after demo)"),
}


# commands that run (and are timed) on cores shared with other work: PyTorch's OpenMP threads sleep, not spin
SHARED_CPU_COMMANDS = ("bench", "node", "replay", "demo", "study")


def _overview() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "commands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommand named first on the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: dsformer-vpr COMMAND [options]\n\n" + _overview())
        return 0 if argv else 2
    name = argv[0]
    if name not in COMMANDS:
        print(f"dsformer-vpr: unknown command {name!r}\n\n{_overview()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    if name in SHARED_CPU_COMMANDS:
        prefer_passive_omp_wait()  # before the module imports torch
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"dsformer-vpr {name}", description=help_)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    setup_logging(args.verbose)
    try:
        return int(module.run(args) or 0)
    except (ValueError, OSError) as exc:
        # Bad input (config, checkpoint, map, bag, images) or a path the system refuses (a directory where a file
        # goes, no permission, disk full): its message names the problem; -v shows the traceback.
        if args.verbose:
            raise
        print(f"dsformer-vpr {name}: error: {_message(exc)}", file=sys.stderr)
        return 2


def _message(exc: BaseException) -> str:
    """The error text; for an operating-system error, its reason and the path it concerns."""
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
