"""`dsformer-vpr demo`: run the demo, print its table and goals; exit code 1 when a goal is missed."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from dsformer_ros.common.cli import add_config_flags, config_from_args
from training.demo.config import DemoConfig, small_overrides
from training.demo.pipeline import run_demo
from training.demo.report import goals_text
from training.replay.replay import REPORT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `demo` (any DemoConfig field also through --set key=value, e.g. iterations=800)."""
    add_config_flags(parser, DemoConfig, ("out", "reuse", "seed", "threads"))
    parser.add_argument("--small", action="store_true", help="the test's smaller, faster pipeline")


def run(args: argparse.Namespace) -> int:
    """Run the demo, print the table and the goals."""
    args.overrides = (small_overrides() if args.small else []) + list(args.overrides)
    cfg = config_from_args(DemoConfig, args)
    torch.set_num_threads(cfg.threads)
    report = run_demo(cfg)
    print()
    print(report["table"])
    print("\ngoals:")
    print(goals_text(report["goals"]))
    print(f"\nfigures: {', '.join(str(Path(cfg.out) / f) for f in report['figures'])}")
    print(f"total {report['timings_s']['total'] / 60:.1f} min; report {Path(cfg.out) / REPORT}")
    return 0 if report["goals_met"] else 1
