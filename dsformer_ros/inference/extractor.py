"""Batched descriptor extraction that keeps the model on its device: uint8 images in, float32 (N, D) out."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dsformer_ros.common.config import to_dict
from dsformer_ros.inference.precision import autocast, check_precision
from dsformer_ros.inference.preprocess import (
    PreprocessConfig,
    as_rgb_uint8,
    preprocess,
    preprocess_config_for,
    read_image,
)
from dsformer_ros.model.dsformer import DSFormer


class DescriptorError(ValueError):
    """The model produced descriptors that cannot be used (NaN, inf or all zero); none of them leaves the extractor."""


class DescriptorExtractor:
    """Wraps a DSFormer for inference: preprocessing, batching by output size, optional autocast/channels_last/compile.

    It is the DSFormer's `DescriptorMethod` (see `methods`): maps record its variant, fingerprint and preprocessing.
    """

    name = "dsformer"

    def __init__(
        self,
        model: DSFormer,
        preprocess_config: PreprocessConfig | None = None,
        batch_size: int = 16,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        check_precision(precision)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.preprocess_config = preprocess_config or preprocess_config_for(model.config)
        self.batch_size = batch_size
        self.precision = precision
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model

    @property
    def dim(self) -> int:
        """Descriptor dimension."""
        return self.model.config.descriptor_dim

    @property
    def fingerprint(self) -> str:
        """SHA-256 identifying the weights (checkpoint file hash) for matching maps to models."""
        return self.model.checkpoint_sha256

    @property
    def variant(self) -> str:
        """The model variant."""
        return self.model.config.variant

    @property
    def preprocessing(self) -> dict:
        """The preprocessing config as recorded in a map's manifest."""
        return to_dict(self.preprocess_config)

    @torch.inference_mode()
    def describe_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) tensor -> (B, D) float32 unit descriptors on the model's device; DescriptorError
        when any is not finite or zero, so no NaN reaches a map, a descriptor file or a published message."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device.type):
            out = self._forward(batch)
        out = out.float()
        norms = torch.linalg.vector_norm(out, dim=1)
        bad = ~torch.isfinite(norms) | (norms == 0)
        if bool(bad.any()):
            raise DescriptorError(
                f"the model produced {int(bad.sum())} of {out.shape[0]} descriptor(s) that are NaN, inf or zero "
                f"(broken weights, or overflow at {self.precision}); refusing to use them"
            )
        return torch.nn.functional.normalize(out, dim=1)

    def describe(self, images: Sequence[np.ndarray], bgr: bool = False, progress: bool = False) -> np.ndarray:
        """uint8 H x W x 3 images (RGB, or BGR with bgr=True) -> float32 (N, D) descriptors in input order."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        groups: dict[tuple[int, int], list[int]] = {}
        rgb_images = [as_rgb_uint8(image, bgr=bgr) for image in images]
        for i, rgb in enumerate(rgb_images):
            groups.setdefault(self.preprocess_config.output_size(rgb.shape[0], rgb.shape[1]), []).append(i)
        with tqdm(total=len(images), desc="describe", unit="img", disable=not progress) as bar:
            for indices in groups.values():
                for start in range(0, len(indices), self.batch_size):
                    chunk = indices[start : start + self.batch_size]
                    tensor = preprocess([rgb_images[i] for i in chunk], self.preprocess_config)
                    out[chunk] = self.describe_tensor(tensor).cpu().numpy()
                    bar.update(len(chunk))
        return out

    def describe_paths(self, paths: Iterable[str | Path], progress: bool = False) -> np.ndarray:
        """Image files -> float32 (N, D), read and described in batches (bounded memory)."""
        return describe_files(paths, self.describe, self.dim, self.batch_size, "describe", progress)

    def warmup(self, iterations: int = 2) -> None:
        """Run the model on a blank native-size image so the first real frame is not slow."""
        height, width = self.preprocess_config.output_size(*self.model.config.image_size)
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        for _ in range(iterations):
            self.describe([blank])


def describe_files(
    paths: Iterable[str | Path],
    describe: Callable[[list[np.ndarray]], np.ndarray],
    dim: int,
    batch_size: int,
    desc: str = "describe",
    progress: bool = False,
) -> np.ndarray:
    """Read image files batch by batch and stack `describe(batch_of_rgb)` into float32 (N, dim)."""
    paths = list(paths)
    out = np.zeros((len(paths), dim), dtype=np.float32)
    with tqdm(total=len(paths), desc=desc, unit="img", disable=not progress) as bar:  # closed before any error line
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            out[start : start + len(chunk)] = describe([read_image(p) for p in chunk])
            bar.update(len(chunk))
    return out
