"""The descriptor interface every backend implements: normalised images in, raw descriptors out."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from dsformer_ros.inference.preprocess import PreprocessConfig
from dsformer_ros.model.dsformer import ModelConfig

BACKENDS = ("torch", "onnxruntime", "tensorrt")


class BackendError(ValueError):
    """A backend cannot be used as asked (missing package, wrong device or model file); the message says what to do."""


@dataclass
class DescriptorBackend:
    """Runs one DSFormer forward pass; subclasses hold the runtime (PyTorch module, ONNX Runtime session, engine).

    `config` and `checkpoint_sha256` identify the model for map matching; `input_size` is None when any size
    works, else the one (height, width) the backend takes; `preprocessing` is the model's default preprocessing.
    """

    name: str
    config: ModelConfig
    checkpoint_sha256: str
    device: torch.device
    precision: str
    preprocessing: PreprocessConfig
    input_size: tuple[int, int] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised float32 -> (B, D) descriptors (float, any device)."""
        raise NotImplementedError

    def check_input_size(self, size: tuple[int, int], what: str = "the preprocessing") -> None:
        """Raise BackendError when the backend takes one fixed size and `size` is not it."""
        if self.input_size is not None and tuple(size) != tuple(self.input_size):
            h, w = self.input_size
            raise BackendError(
                f"{what} gives {size[0]}x{size[1]} images but this {self.name} model takes only {h}x{w} "
                f"(export the checkpoint again with --image-size {size[0]} {size[1]})"
            )
