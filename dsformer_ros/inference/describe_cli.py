"""`dsformer-vpr describe`: global descriptors of image files into a .npy file (rows in argument order)."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from dsformer_ros.common.atomic import atomic_save, check_output_file
from dsformer_ros.inference.extractor import DescriptorExtractor
from dsformer_ros.inference.precision import PRECISIONS
from dsformer_ros.model.loading import load_model

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `describe`."""
    parser.add_argument("images", nargs="+", help="image files")
    parser.add_argument("--checkpoint", help="checkpoint file (official state_dict or ours); default: untrained variant")
    parser.add_argument("--variant", default=None, help="model variant when no checkpoint is given")
    parser.add_argument("--out", required=True, help="output .npy file, float32 (N, D)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", default="fp32", choices=sorted(PRECISIONS))


def run(args: argparse.Namespace) -> int:
    """Describe the images and write the .npy atomically."""
    out = check_output_file(args.out)
    model = load_model(args.checkpoint, variant=args.variant, device=args.device)
    extractor = DescriptorExtractor(model, batch_size=args.batch_size, precision=args.precision)
    descriptors = extractor.describe_paths(args.images, progress=True)
    atomic_save(out, lambda tmp: _write_npy(tmp, descriptors))
    log.info("wrote %d descriptors of dimension %d to %s", len(descriptors), descriptors.shape[1], out)
    return 0


def _write_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array)
