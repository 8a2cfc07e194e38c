"""`dsformer-vpr describe`: global descriptors of image files into a .npy file (rows in argument order)."""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsformer_ros.common.atomic import atomic_save, check_output_file
from dsformer_ros.common.cli import add_config_flags, config_from_args
from dsformer_ros.common.config import ConfigError
from dsformer_ros.common.devices import check_device_name
from dsformer_ros.common.params import check_fields, setting
from dsformer_ros.inference.precision import PRECISIONS

log = logging.getLogger(__name__)


@dataclass
class DescribeConfig:
    """What to describe, with which model, and where the descriptors go."""

    images: list[str] = field(default_factory=list)
    checkpoint: str = setting("", "checkpoint file (official state_dict or ours); without one: UNTRAINED, a warning")
    variant: str = setting("", "model variant when no checkpoint is given (default efficientnet_lite0)")
    out: str = setting("", "output .npy file, float32 (N, D)")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    batch_size: int = setting(16, "images per forward pass", low=1)
    precision: str = setting("fp32", "inference precision", choices=PRECISIONS)

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        check_fields(self)
        check_device_name(self.device)
        if not self.images:
            raise ConfigError("images: name at least one image file")
        if not self.out:
            raise ConfigError("out: the output .npy file is required")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `describe`."""
    add_config_flags(parser, DescribeConfig, ("checkpoint", "variant", "out", "device", "batch_size", "precision"),
                     positional=("images",))


def run(args: argparse.Namespace) -> int:
    """Describe the images and write the .npy atomically."""
    from dsformer_ros.inference.extractor import DescriptorExtractor
    from dsformer_ros.model.loading import load_model

    cfg = config_from_args(DescribeConfig, args)
    out = check_output_file(cfg.out)
    if not cfg.checkpoint:
        log.warning("no checkpoint given: describing with an UNTRAINED %s (ImageNet backbone, random transformer)",
                    cfg.variant or "efficientnet_lite0")
    model = load_model(cfg.checkpoint or None, variant=cfg.variant or None, device=cfg.device)
    extractor = DescriptorExtractor(model, batch_size=cfg.batch_size, precision=cfg.precision)
    descriptors = extractor.describe_paths(cfg.images, progress=True)
    atomic_save(out, lambda tmp: _write_npy(tmp, descriptors))
    log.info("wrote %d descriptors of dimension %d to %s", len(descriptors), descriptors.shape[1], out)
    return 0


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)
