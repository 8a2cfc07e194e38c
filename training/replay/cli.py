"""`dsformer-vpr replay`: the command line of the replay pipeline (training/replay/replay.py)."""
from __future__ import annotations

import argparse
from pathlib import Path

from dsformer_ros.common.cli import add_config_flags, config_from_args
from training.replay.config import ReplayConfig
from training.replay.replay import REPORT, format_metrics, run_replay

FLAGS = ("map", "checkpoint", "method", "mode", "image_topic", "gps_topic", "radius_m", "max_frames", "rate",
         "device", "threads", "out")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `replay` (any config field also through --set key=value)."""
    add_config_flags(parser, ReplayConfig, FLAGS, positional=("bag",))


def run(args: argparse.Namespace) -> int:
    """Run the replay and print its one-line summary."""
    cfg = config_from_args(ReplayConfig, args)
    report = run_replay(cfg)
    print(f"{report['name']} ({cfg.mode}, {report['metrics']['frames']} frames): {format_metrics(report['metrics'])}")
    print(f"report: {Path(cfg.out) / REPORT}")
    return 0
