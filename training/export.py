"""`dsformer-vpr export`: a checkpoint -> one ONNX file for a fixed input size, dynamic batch, provenance in metadata
(`dsformer_ros.inference.export` does the work)."""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.inference.export import EXPORTERS, export_onnx
from dsformer_ros.inference.onnx_metadata import QUANTIZATIONS
from dsformer_ros.model.loading import load_model

FORMATS = ("onnx",)


@dataclass
class ExportConfig:
    """What to export and how."""

    checkpoint: str = setting("", "DSFormer checkpoint (ours, or an official state_dict)")
    format: str = setting("onnx", "output format", choices=FORMATS)
    out: str = setting("", "output .onnx file (written atomically)")
    image_size: list[int] = field(default_factory=list, metadata={"spec": {
        "description": "HEIGHT WIDTH the map's preprocessing produces (default: the checkpoint's own input size)"}})
    exporter: str = setting("dynamo", "dynamo (torch.export, opset 18) or legacy (TorchScript, opset 17)",
                            choices=EXPORTERS)
    opset: int = setting(0, "ONNX opset (0: the exporter's default)", low=0)
    quantize: str = setting("", "int8: ONNX Runtime dynamic int8 of the MatMul/Gemm weights (CPU); '': fp32",
                            choices=QUANTIZATIONS)
    verify: bool = setting(True, "check the written model against PyTorch with ONNX Runtime")

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        check_fields(self)
        if not self.checkpoint:
            raise ConfigError("checkpoint: a checkpoint file is required")
        if not self.out:
            raise ConfigError("out: an output file is required")
        if self.image_size and (len(self.image_size) != 2 or min(self.image_size) < 1):
            raise ConfigError(f"image_size: expected HEIGHT WIDTH > 0, got {self.image_size}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `export`."""
    add_config_flags(parser, ExportConfig, ("checkpoint", "format", "image_size", "exporter", "quantize", "out"))


def run(args: argparse.Namespace) -> int:
    """Load the checkpoint on the CPU and export it."""
    cfg = config_from_args(ExportConfig, args)
    model = load_model(cfg.checkpoint, device="cpu")
    size = tuple(cfg.image_size) if cfg.image_size else None
    export_onnx(model, cfg.out, size, cfg.exporter, cfg.opset, cfg.verify, cfg.quantize)
    return 0
