"""`dsformer-vpr eval`: Recall@N of the DSFormer or a baseline on a VPR data set; report.json and figures in --out."""
from __future__ import annotations

import argparse

import torch

from dsformer_ros.common.cli import add_config_arguments, config_from_args
from training.eval.evaluate import METHODS, EvalConfig, evaluate


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `eval` (each overrides the same key of --config; --set reaches every key)."""
    parser.add_argument("--dataset-root", help="data set folder (dataset.root)")
    parser.add_argument(
        "--dataset-format",
        choices=("at", "msls", "nordland", "folders"),
        help="at: split/database + split/queries '@' names; msls: train_val/<city>; nordland: frame-named folders; "
        "folders: ref/ + query/ by index with optional ground_truth.csv (without it query i matches ref i)",
    )
    parser.add_argument("--split", help="split folder of an 'at' data set (default test)")
    parser.add_argument("--method", choices=METHODS, help="main method (default dsformer)")
    parser.add_argument("--baselines", action="store_true", default=None, help="also run raw_pixels and backbone_gem")
    parser.add_argument("--checkpoint", help="checkpoint file; default: the untrained variant")
    parser.add_argument("--variant", help="model variant when no checkpoint is given (default efficientnet_lite0)")
    parser.add_argument("--device", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, help="images per forward pass")
    parser.add_argument("--out", help="output folder (report.json, PNG figures, cache/)")
    parser.add_argument("--cache-dir", help="database map cache folder (default OUT/cache)")
    parser.add_argument("--no-cache", action="store_false", dest="use_cache", default=None, help="always rebuild maps")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print a one-line summary per method."""
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(
        EvalConfig,
        args,
        **{
            "dataset.root": args.dataset_root,
            "dataset.format": args.dataset_format,
            "dataset.split": args.split,
            "method": args.method,
            "baselines": args.baselines,
            "checkpoint": args.checkpoint,
            "variant": args.variant,
            "device": args.device,
            "batch_size": args.batch_size,
            "out_dir": args.out,
            "cache_dir": args.cache_dir,
            "use_cache": args.use_cache,
        },
    )
    report = evaluate(cfg)
    for name, result in report["methods"].items():
        recalls = "  ".join(f"R@{n} {100 * v:5.1f}" for n, v in result["recall"].items())
        print(
            f"{name:<13} {recalls}  extract {result['extraction_ms_per_image']['queries']:.1f} ms/img  "
            f"search {result['search_ms_per_query']:.3f} ms/query  cache {result['database_cache']}"
        )
    print(f"report: {cfg.out_dir}/report.json")
    return 0
