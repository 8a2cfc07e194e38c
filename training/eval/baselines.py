"""Descriptor methods the evaluation compares: the DSFormer, raw pixels, and GeM over backbone features alone.

Every method offers `describe_paths(paths, progress) -> (N, D) float32` (L2-normalised rows), `dim`, `fingerprint`
(64-hex SHA-256 of what determines the descriptors, for map caches), `variant` and `preprocessing` (a JSON dict).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterable, Protocol

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.inference.extractor import DescriptorExtractor, describe_files
from dsformer_ros.inference.preprocess import preprocess, preprocess_config_for, read_image
from dsformer_ros.model.dsformer import DSFormer


class DescriptorMethod(Protocol):
    """What the evaluation needs from a method."""

    name: str

    @property
    def dim(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def variant(self) -> str: ...

    @property
    def preprocessing(self) -> dict: ...

    def describe_paths(self, paths: Iterable[str | Path], progress: bool = False) -> np.ndarray: ...


@dataclasses.dataclass
class RawPixelsConfig:
    """Raw-pixel baseline: images resized to `size` (height, width) with area averaging, grayscale or RGB, then made
    zero-mean and unit-norm per image, so the inner product is the normalised cross-correlation."""

    size: tuple[int, int] = (24, 32)
    grayscale: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"raw_pixels.size: expected (height, width) > 0, got {self.size}")


@dataclasses.dataclass
class BackboneGeMConfig:
    """Backbone-only baseline: GeM (exponent `p`) over the backbone's feature maps, no transformer, no fc.

    scales: "last" (stride-32 map), "first" (stride-16 map) or "both" (each L2-normalised, concatenated).
    """

    p: float = 3.0
    scales: str = "last"

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if self.p <= 0:
            raise ConfigError(f"backbone_gem.p: must be > 0, got {self.p}")
        if self.scales not in ("last", "first", "both"):
            raise ConfigError(f"backbone_gem.scales: {self.scales!r} is not 'last', 'first' or 'both'")


def _sha256(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class DSFormerMethod:
    """The full model through the runtime's DescriptorExtractor."""

    name = "dsformer"

    def __init__(self, extractor: DescriptorExtractor) -> None:
        self.extractor = extractor

    @property
    def dim(self) -> int:
        """Descriptor dimension."""
        return self.extractor.dim

    @property
    def fingerprint(self) -> str:
        """The model's checkpoint SHA-256."""
        return self.extractor.fingerprint

    @property
    def variant(self) -> str:
        """The model variant."""
        return self.extractor.model.config.variant

    @property
    def preprocessing(self) -> dict:
        """The extractor's preprocessing config."""
        return to_dict(self.extractor.preprocess_config)

    def describe_paths(self, paths: Iterable[str | Path], progress: bool = False) -> np.ndarray:
        """Descriptors of image files, batched."""
        return self.extractor.describe_paths(paths, progress=progress)


class RawPixels:
    """Downsampled, zero-mean, unit-norm pixels: the classic sanity baseline (Recall@1 ~0.27 on corridor)."""

    name = "raw_pixels"

    def __init__(self, config: RawPixelsConfig | None = None) -> None:
        self.config = config or RawPixelsConfig()
        self.config.validate()

    @property
    def dim(self) -> int:
        """Pixels (x 3 for RGB)."""
        height, width = self.config.size
        return height * width * (1 if self.config.grayscale else 3)

    @property
    def fingerprint(self) -> str:
        """Hash of the method's settings (it has no weights)."""
        return _sha256("raw_pixels", 1, to_dict(self.config))

    @property
    def variant(self) -> str:
        """The method name."""
        return self.name

    @property
    def preprocessing(self) -> dict:
        """Size and colour mode."""
        return to_dict(self.config)

    def describe_image(self, rgb: np.ndarray) -> np.ndarray:
        """One RGB uint8 image -> (D,) float32 zero-mean unit-norm vector."""
        height, width = self.config.size
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if self.config.grayscale else rgb
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        small -= small.mean()
        norm = float(np.linalg.norm(small))
        if norm == 0.0:
            out = np.zeros_like(small)
            out[0] = 1.0
            return out
        return small / norm

    def describe_paths(self, paths: Iterable[str | Path], progress: bool = False) -> np.ndarray:
        """Descriptors of image files (a uniform image gets a fixed unit vector, as it has no texture to correlate)."""
        paths = list(paths)
        out = np.zeros((len(paths), self.dim), dtype=np.float32)
        for i, path in enumerate(tqdm(paths, desc="raw pixels", unit="img", disable=not progress)):
            out[i] = self.describe_image(read_image(path))
        return out


class BackboneGeM:
    """GeM over the DSFormer backbone's feature maps (no transformer): shows what the transformer adds."""

    name = "backbone_gem"

    def __init__(self, model: DSFormer, config: BackboneGeMConfig | None = None, batch_size: int = 16) -> None:
        self.model = model.eval()
        self.config = config or BackboneGeMConfig()
        self.config.validate()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.device = next(model.parameters()).device
        self.preprocess_config = preprocess_config_for(model.config)

    @property
    def dim(self) -> int:
        """Channels of the pooled scale(s)."""
        first, last = self.model.backbone.channels
        return {"first": first, "last": last, "both": first + last}[self.config.scales]

    @property
    def fingerprint(self) -> str:
        """Hash of the model's weights hash and the pooling settings."""
        return _sha256("backbone_gem", self.model.checkpoint_sha256, to_dict(self.config))

    @property
    def variant(self) -> str:
        """The backbone's model variant, marked as backbone-only."""
        return f"{self.model.config.variant}+gem"

    @property
    def preprocessing(self) -> dict:
        """The model's preprocessing config."""
        return to_dict(self.preprocess_config)

    def _gem(self, features: torch.Tensor) -> torch.Tensor:
        pooled = features.float().clamp(min=1e-6).pow(self.config.p).mean(dim=(-2, -1)).pow(1.0 / self.config.p)
        return F.normalize(pooled, dim=1)

    @torch.inference_mode()
    def describe_batch(self, images: list[np.ndarray]) -> np.ndarray:
        """RGB uint8 images -> (B, D) float32 unit descriptors."""
        tensor = preprocess(images, self.preprocess_config).to(self.device)
        first, last = self.model.backbone(tensor)
        if self.config.scales == "first":
            out = self._gem(first)
        elif self.config.scales == "last":
            out = self._gem(last)
        else:
            out = F.normalize(torch.cat([self._gem(first), self._gem(last)], dim=1), dim=1)
        return out.cpu().numpy()

    def describe_paths(self, paths: Iterable[str | Path], progress: bool = False) -> np.ndarray:
        """Descriptors of image files, read and described in batches."""
        return describe_files(paths, self.describe_batch, self.dim, self.batch_size, "backbone GeM", progress)
