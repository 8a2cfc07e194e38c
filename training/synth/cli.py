"""`dsformer-vpr synth`: render a synthetic drive through a procedural town into a rosbag2 and/or an '@' image folder."""
from __future__ import annotations

import argparse

from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError
from training.synth.config import SynthConfig

FLAGS = ("seed", "route", "route_seed", "condition", "lane_offset_m", "frames", "length_m", "fps", "width", "height",
         "hfov_deg", "storage", "compressed", "out", "export_at")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `synth`; every SynthConfig field is also settable with --set key=value."""
    add_config_flags(parser, SynthConfig, FLAGS)
    parser.add_argument("--benchmark", type=int, metavar="N", help="only time rendering N frames and print fps")


def run(args: argparse.Namespace) -> int:
    """Render the configured drive (or benchmark the renderer)."""
    from training.synth.drive import benchmark_config, write_drive

    cfg = config_from_args(SynthConfig, args)
    if args.benchmark:
        render_fps, jpeg_fps = benchmark_config(cfg, args.benchmark)
        print(f"{cfg.width}x{cfg.height} {cfg.condition}: {render_fps:.1f} frames/s rendering, {jpeg_fps:.1f} with JPEG encoding")
        return 0
    if not cfg.out and not cfg.export_at:
        raise ConfigError("nothing to write: give --out BAG and/or --export-at DIR")
    summary = write_drive(cfg)
    print(summary)
    return 0
