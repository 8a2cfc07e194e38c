"""Batched descriptor extraction on any backend (torch, onnxruntime, tensorrt): uint8 images in, float32 (N, D) out."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from dsformer_ros.common.config import to_dict
from dsformer_ros.inference.backends.base import DescriptorBackend
from dsformer_ros.inference.backends.torch_backend import TorchBackend
from dsformer_ros.inference.preprocess import PreprocessConfig, as_rgb_uint8, preprocess_rgb, read_image
from dsformer_ros.model.dsformer import DSFormer, ModelConfig


class DescriptorError(ValueError):
    """The model produced descriptors that cannot be used (NaN, inf or all zero); none of them leaves the extractor."""


class DescriptorExtractor:
    """Preprocessing and batching by output size around one backend (a DSFormer module means the torch backend).

    It is the DSFormer's `DescriptorMethod` (see `methods`): maps record its variant, fingerprint and preprocessing.
    """

    name = "dsformer"

    def __init__(
        self,
        model: DSFormer | DescriptorBackend,
        preprocess_config: PreprocessConfig | None = None,
        batch_size: int = 16,
        precision: str = "fp32",
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(model, DescriptorBackend):
            if (precision, channels_last, compile) != ("fp32", False, False):
                raise ValueError("precision, channels_last and compile are options of the torch backend: pass them "
                                 "to the backend, not to the extractor")
            self.backend = model
        else:
            self.backend = TorchBackend(model, precision, channels_last, compile)
        self.preprocess_config = preprocess_config or self.backend.preprocessing
        if self.preprocess_config.resize == "square":
            self.backend.check_input_size(tuple(self.preprocess_config.size), "the preprocessing")
        self.batch_size = batch_size

    @property
    def config(self) -> ModelConfig:
        """The model's configuration (variant, descriptor dimension, training input size)."""
        return self.backend.config

    @property
    def model(self) -> DSFormer:
        """The PyTorch module (torch backend only)."""
        if not isinstance(self.backend, TorchBackend):
            raise AttributeError(f"the {self.backend.name} backend has no PyTorch module")
        return self.backend.model

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.backend.device

    @property
    def precision(self) -> str:
        """The backend's precision."""
        return self.backend.precision

    @property
    def dim(self) -> int:
        """Descriptor dimension."""
        return self.backend.config.descriptor_dim

    @property
    def fingerprint(self) -> str:
        """SHA-256 identifying the weights (checkpoint file hash) for matching maps to models."""
        return self.backend.checkpoint_sha256

    @property
    def variant(self) -> str:
        """The model variant."""
        return self.backend.config.variant

    @property
    def backend_name(self) -> str:
        """torch, onnxruntime or tensorrt."""
        return self.backend.name

    @property
    def preprocessing(self) -> dict:
        """The preprocessing config as recorded in a map's manifest."""
        return to_dict(self.preprocess_config)

    def describe_tensor(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised (B, 3, H, W) tensor -> (B, D) float32 unit descriptors (on the backend's device); DescriptorError
        when any is not finite or zero, so no NaN reaches a map, a descriptor file or a published message."""
        out = self.backend.forward(batch).float()
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
                    tensor = preprocess_rgb([rgb_images[i] for i in chunk], self.preprocess_config)
                    out[chunk] = self.describe_tensor(tensor).cpu().numpy()
                    bar.update(len(chunk))
        return out

    def describe_paths(self, paths: Iterable[str | Path], progress: bool = False) -> np.ndarray:
        """Image files -> float32 (N, D), read and described in batches (bounded memory)."""
        return describe_files(paths, self.describe, self.dim, self.batch_size, "describe", progress)

    def warmup(self, iterations: int = 2) -> None:
        """Run the model on a blank native-size image so the first real frame is not slow."""
        height, width = self.preprocess_config.output_size(*self.backend.config.image_size)
        blank = np.zeros((height, width, 3), dtype=np.uint8)
        for _ in range(iterations):
            self.describe([blank])


def load_extractor(
    backend: str,
    checkpoint: str | Path,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 16,
    preprocess_config: PreprocessConfig | None = None,
) -> DescriptorExtractor:
    """An extractor for `checkpoint` on `backend` (an exported .onnx for onnxruntime and tensorrt)."""
    from dsformer_ros.inference.backends import load_backend

    return DescriptorExtractor(load_backend(backend, checkpoint, device, precision, batch_size=batch_size),
                               preprocess_config, batch_size)


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
