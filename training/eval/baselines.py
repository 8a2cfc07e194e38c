"""The backbone-only baseline of the evaluation: GeM over the DSFormer backbone's feature maps, no transformer.

Like the runtime's methods (`dsformer_ros.inference.methods`: the DSFormer extractor, raw pixels) it is a
`DescriptorMethod`, so eval, build-map and replay run it through the same pipeline.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.inference.extractor import describe_files
from dsformer_ros.inference.methods import settings_sha256
from dsformer_ros.inference.preprocess import preprocess, preprocess_config_for
from dsformer_ros.model.dsformer import DSFormer, gem_pool


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
        return settings_sha256("backbone_gem", self.model.checkpoint_sha256, to_dict(self.config))

    @property
    def variant(self) -> str:
        """The backbone's model variant, marked as backbone-only."""
        return f"{self.model.config.variant}+gem"

    @property
    def preprocessing(self) -> dict:
        """The model's preprocessing config."""
        return to_dict(self.preprocess_config)

    def _gem(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(gem_pool(features.float(), self.config.p), dim=1)

    @torch.inference_mode()
    def describe(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images -> (B, D) float32 unit descriptors."""
        tensor = preprocess(list(images), self.preprocess_config).to(self.device)
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
        return describe_files(paths, self.describe, self.dim, self.batch_size, "backbone GeM", progress)
