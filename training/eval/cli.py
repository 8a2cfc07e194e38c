"""`dsformer-vpr eval`: Recall@N of the DSFormer or a baseline on a VPR data set; report.json and figures in --out."""
from __future__ import annotations

import argparse

from dsformer_ros.common.cli import add_config_flags, add_threads_argument, config_from_args, set_threads
from training.eval.evaluate import EvalConfig, evaluate

FLAGS = ("dataset.root", "dataset.format", "dataset.split", "method", "baselines", "checkpoint", "variant", "device",
         "batch_size", "out", "cache_dir", "use_cache")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `eval` (each overrides the same key of --config; --set reaches every key)."""
    add_config_flags(parser, EvalConfig, FLAGS)
    add_threads_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print a one-line summary per method."""
    set_threads(args)
    cfg = config_from_args(EvalConfig, args)
    report = evaluate(cfg)
    for name, result in report["methods"].items():
        recalls = "  ".join(f"R@{n} {100 * v:5.1f}" for n, v in result["recall"].items())
        print(
            f"{name:<13} {recalls}  extract {result['extraction_ms_per_image']['queries']:.1f} ms/img  "
            f"search {result['search_ms_per_query']:.3f} ms/query  cache {result['database_cache']}"
        )
    print(f"report: {cfg.out}/report.json")
    return 0
