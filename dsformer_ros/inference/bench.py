"""`dsformer-vpr bench`: parameters, GFLOPs and ms per image per variant, device, precision and batch size.

The reference iRPE formulation is timed in the same run as the fast one, so the speed-up is a measured ratio.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from dsformer_ros.common.atomic import atomic_write_text
from dsformer_ros.common.cli import add_config_arguments, config_from_args
from dsformer_ros.common.config import ConfigError
from dsformer_ros.inference.precision import PRECISIONS, autocast
from dsformer_ros.model.dsformer import VARIANTS, build_model, preset

log = logging.getLogger(__name__)


@dataclass
class BenchConfig:
    """What to time: variants, batch sizes, precisions, devices, repetitions."""

    variants: list[str] = field(default_factory=lambda: ["efficientnet_lite0"])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 8])
    precisions: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    devices: list[str] = field(default_factory=lambda: ["cpu", "cuda"])
    reference: bool = True
    repeats: int = 3
    warmup: int = 1
    threads: int = 0
    out: str = ""

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        for v in self.variants:
            if v not in VARIANTS:
                raise ConfigError(f"variants: {v!r} is not one of {', '.join(VARIANTS)}")
        for p in self.precisions:
            if p not in PRECISIONS:
                raise ConfigError(f"precisions: {p!r} is not one of {', '.join(PRECISIONS)}")
        if any(b < 1 for b in self.batch_sizes) or self.repeats < 1:
            raise ConfigError("batch_sizes and repeats must be >= 1")


def count_gflops(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Forward GFLOPs (multiply-add = 2 FLOPs) counted by torch's flop counter."""
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def time_forward(model: torch.nn.Module, x: torch.Tensor, precision: str, repeats: int, warmup: int) -> float:
    """Median seconds per forward pass of batch x."""
    device_type = x.device.type

    def once() -> float:
        if device_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode(), autocast(precision, device_type):
            model(x)
        if device_type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for _ in range(warmup):
        once()
    return statistics.median(once() for _ in range(repeats))


def _agreement(model: torch.nn.Module, x: torch.Tensor, precision: str) -> float:
    """Lowest cosine similarity between fp32 descriptors and those of `precision`."""
    with torch.inference_mode():
        ref = model(x)
        with autocast(precision, x.device.type):
            low = model(x).float()
    return float((ref * low).sum(dim=1).min())


def bench_variant(variant: str, cfg: BenchConfig) -> list[dict]:
    """Rows of the benchmark table for one variant."""
    model_config = preset(variant)
    torch.manual_seed(0)
    model = build_model(model_config).eval()
    for name, param in model.named_parameters():
        if "lookup_table_weight" in name:
            torch.nn.init.normal_(param, std=0.02)
    params = sum(p.numel() for p in model.parameters())
    height, width = model_config.image_size
    gflops = count_gflops(model, torch.randn(1, 3, height, width))
    rows = []
    for device_name in cfg.devices:
        if device_name == "cuda" and not torch.cuda.is_available():
            log.info("CUDA not available: skipping GPU timings")
            continue
        device = torch.device(device_name)
        model.to(device)
        for batch in cfg.batch_sizes:
            x = torch.randn(batch, 3, height, width, device=device)
            impls = ["fast", "reference"] if cfg.reference else ["fast"]
            for precision in cfg.precisions:
                if device.type == "cpu" and precision == "fp16":
                    continue
                timings = {}
                for impl in impls:
                    model.set_irpe_impl(impl)
                    timings[impl] = time_forward(model, x, precision, cfg.repeats, cfg.warmup)
                model.set_irpe_impl("fast")
                row = {
                    "variant": variant,
                    "input": f"{height}x{width}",
                    "params_M": round(params / 1e6, 2),
                    "GFLOPs": round(gflops, 1),
                    "device": device_name,
                    "precision": precision,
                    "batch": batch,
                    "ms_per_image": round(1000 * timings["fast"] / batch, 1),
                    "images_per_s": round(batch / timings["fast"], 1),
                }
                if "reference" in timings:
                    row["reference_ms_per_image"] = round(1000 * timings["reference"] / batch, 1)
                    row["speedup"] = round(timings["reference"] / timings["fast"], 2)
                if precision != "fp32":
                    row["min_cosine_vs_fp32"] = round(_agreement(model, x, precision), 5)
                log.info("%s", row)
                rows.append(row)
        model.to("cpu")
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of benchmark rows."""
    columns = [
        "variant", "input", "params_M", "GFLOPs", "device", "precision", "batch",
        "ms_per_image", "images_per_s", "reference_ms_per_image", "speedup", "min_cosine_vs_fp32",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `bench`."""
    add_config_arguments(parser)
    parser.add_argument("--variant", action="append", dest="variants", help="variant to time (repeatable)")
    parser.add_argument("--out", help="also write the rows as JSON here")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    cfg = config_from_args(BenchConfig, args, variants=args.variants, out=args.out)
    torch.set_num_threads(cfg.threads or torch.get_num_threads())
    log.info("torch %s, %d CPU threads, CUDA %s", torch.__version__, torch.get_num_threads(), torch.cuda.is_available())
    rows = [row for variant in cfg.variants for row in bench_variant(variant, cfg)]
    print(format_table(rows))
    if cfg.out:
        atomic_write_text(Path(cfg.out), json.dumps(rows, indent=2))
    return 0
