"""DSFormer: backbone -> dual-scale transformer -> per-scale L2-norm + GeM -> concat -> fc -> L2-normalised descriptor."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsformer_ros.common.config import ConfigError
from dsformer_ros.model.backbones import DinoV2Features, EfficientNetLite0Features, ResNet50Features
from dsformer_ros.model.transformer import DualScaleFormer

Variant = Literal["resnet50", "dinov2", "efficientnet_lite0"]
VARIANTS: tuple[str, ...] = ("resnet50", "dinov2", "efficientnet_lite0")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite weights expect (x * 255 - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3


@dataclass
class ModelConfig:
    """Architecture and input contract of one DSFormer model; stored inside our checkpoints."""

    variant: str = "efficientnet_lite0"
    image_size: tuple[int, int] = (224, 224)
    embed_dim: int = 256
    num_heads: int = 4
    num_layers: int = 2
    mlp_ratio: float = 4.0
    descriptor_dim: int = 256
    mean: tuple[float, float, float] = LITE_MEAN
    std: tuple[float, float, float] = LITE_STD
    dino_intermediate_norm: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant: {self.variant!r} is not one of {', '.join(VARIANTS)}")
        if len(self.image_size) != 2 or min(self.image_size) < 1:
            raise ConfigError(f"image_size: expected (height, width) > 0, got {self.image_size}")
        if self.embed_dim < 1 or self.num_heads < 1 or self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim: {self.embed_dim} must be a positive multiple of num_heads={self.num_heads}")
        if self.num_layers < 1:
            raise ConfigError(f"num_layers: must be >= 1, got {self.num_layers}")
        if self.descriptor_dim < 1:
            raise ConfigError(f"descriptor_dim: must be >= 1, got {self.descriptor_dim}")
        if self.variant == "dinov2" and any(s % 14 for s in self.image_size):
            raise ConfigError(f"image_size: DINOv2 needs multiples of 14 pixels, got {self.image_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("mean/std: need three values each, std > 0")

    @property
    def strides(self) -> tuple[int, int]:
        """Pixel stride of the two feature scales."""
        return (14, 14) if self.variant == "dinov2" else (16, 32)

    @property
    def native_grids(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """Token grids at `image_size`: the shape of the learned position embeddings."""
        h, w = self.image_size
        return tuple((math.ceil(h / s), math.ceil(w / s)) for s in self.strides)  # type: ignore[return-value]


def preset(variant: str) -> ModelConfig:
    """The published configuration of a variant (ResNet-50, DINOv2) or our CPU model (EfficientNet-Lite0)."""
    if variant == "resnet50":
        return ModelConfig("resnet50", (320, 320), 1024, 16, 3, 4.0, 512, IMAGENET_MEAN, IMAGENET_STD)
    if variant == "dinov2":
        return ModelConfig("dinov2", (322, 322), 768, 12, 1, 4.0, 512, IMAGENET_MEAN, IMAGENET_STD)
    if variant == "efficientnet_lite0":
        return ModelConfig()
    raise ConfigError(f"variant: {variant!r} is not one of {', '.join(VARIANTS)}")


class L2Norm(nn.Module):
    """L2-normalise along `dim`."""

    def __init__(self, dim: int = 1) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, p=2.0, dim=self.dim)


def gem_pool(x: Tensor, p: Tensor | float, eps: float = 1e-6) -> Tensor:
    """Generalised-mean pooling of (B, C, H, W) over H x W: mean(clamp(x, eps)^p)^(1/p) -> (B, C)."""
    return x.clamp(min=eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)


class GeM(nn.Module):
    """Generalised-mean pooling over H x W with a learned exponent p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        return gem_pool(x, self.p, self.eps)


def _backbone(config: ModelConfig) -> nn.Module:
    if config.variant == "resnet50":
        return ResNet50Features()
    if config.variant == "dinov2":
        return DinoV2Features(config.dino_intermediate_norm)
    return EfficientNetLite0Features()


class DSFormer(nn.Module):
    """The full model; forward takes a normalised (B, 3, H, W) float tensor and returns (B, D) unit descriptors."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.backbone = _backbone(config)
        self.dual_scale_former = DualScaleFormer(
            self.backbone.channels,
            config.native_grids,
            config.embed_dim,
            config.num_heads,
            config.num_layers,
            config.mlp_ratio,
        )
        self.aggregation0 = nn.Sequential(L2Norm(1), GeM())
        self.aggregation1 = nn.Sequential(L2Norm(1), GeM())
        self.fc = nn.Linear(2 * config.embed_dim, config.descriptor_dim)

    def forward(self, images: Tensor) -> Tensor:
        map0, map1 = self.backbone(images)
        out0, out1 = self.dual_scale_former(map0, map1)
        pooled = torch.cat([self.aggregation0(out0), self.aggregation1(out1)], dim=1)
        return F.normalize(self.fc(pooled).float(), p=2.0, dim=1)

    def set_irpe_impl(self, impl: str) -> None:
        """Switch every iRPE attention between the 'fast' and the 'reference' formulation."""
        if impl not in ("fast", "reference"):
            raise ValueError(f"iRPE implementation must be 'fast' or 'reference', got {impl!r}")
        for module in self.modules():
            if hasattr(module, "impl") and hasattr(module, "rpe_v"):
                module.impl = impl

    def frozen_parameter_names(self) -> list[str]:
        """Names of the parameters training keeps frozen (the early backbone stages, as the paper does)."""
        prefixes = tuple(f"backbone.{p}" for p in self.backbone.frozen_prefixes)
        return [name for name, _ in self.named_parameters() if name.startswith(prefixes)]


def build_model(config: ModelConfig | str) -> DSFormer:
    """A DSFormer with freshly initialised weights for a config or a variant name."""
    if isinstance(config, str):
        config = preset(config)
    return DSFormer(replace(config))


__all__ = ["DSFormer", "ModelConfig", "VARIANTS", "build_model", "preset"]
