"""The dual-scale transformer of DSFormer: iRPE self-attention per scale and one shared cross-attention between scales.

Module and parameter names follow the released checkpoints (`dual_scale_former.*`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dsformer_ros.model.irpe import IRPEAttention


class Mlp(nn.Module):
    """fc1 -> GELU -> fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """(B, L, 3C) laid out [q | k | v] per token -> q, k, v of shape (B, heads, L, C / heads)."""
    batch, length, three_dim = qkv.shape
    head_dim = three_dim // (3 * num_heads)
    qkv = qkv.reshape(batch, length, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


class SelfEncoderLayer(nn.Module):
    """Pre-norm self-attention (with iRPE on the token grid) and MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn = IRPEAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        q, k, v = split_heads(self.qkv(self.norm1(x)), self.num_heads)
        x = x + self.attn(q, k, v, grid)
        return x + self.mlp(self.norm2(x))


class CrossAttention(nn.Module):
    """Plain multi-head attention of one scale's queries on the other scale's keys/values (fused SDPA) + proj."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, length, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, length, -1))


class CrossEncoderLayer(nn.Module):
    """Both scales attend to each other through ONE shared attention module, from the layer's inputs; then own MLPs."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        hidden = int(dim * mlp_ratio)
        self.norm0_0 = nn.LayerNorm(dim)
        self.norm0_1 = nn.LayerNorm(dim)
        self.qkv0 = nn.Linear(dim, 3 * dim)
        self.qkv1 = nn.Linear(dim, 3 * dim)
        self.cross_attn = CrossAttention(dim)
        self.norm1_0 = nn.LayerNorm(dim)
        self.norm1_1 = nn.LayerNorm(dim)
        self.mlp_0 = Mlp(dim, hidden)
        self.mlp_1 = Mlp(dim, hidden)

    def forward(self, x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        q0, k0, v0 = split_heads(self.qkv0(self.norm0_0(x0)), self.num_heads)
        q1, k1, v1 = split_heads(self.qkv1(self.norm0_1(x1)), self.num_heads)
        x0, x1 = x0 + self.cross_attn(q0, k1, v1), x1 + self.cross_attn(q1, k0, v0)
        return x0 + self.mlp_0(self.norm1_0(x0)), x1 + self.mlp_1(self.norm1_1(x1))


def resize_pos_embed(pos_embed: Tensor, native: tuple[int, int], grid: tuple[int, int]) -> Tensor:
    """Learned (1, h*w, C) position embeddings on the native grid, bicubically resized to `grid` (unchanged if equal)."""
    if tuple(grid) == tuple(native):
        return pos_embed
    dim = pos_embed.shape[-1]
    as_map = pos_embed.reshape(1, native[0], native[1], dim).permute(0, 3, 1, 2)
    resized = F.interpolate(as_map.float(), size=grid, mode="bicubic", align_corners=False).to(pos_embed.dtype)
    return resized.flatten(2).transpose(1, 2)


class DualScaleFormer(nn.Module):
    """Tokens of two feature maps -> (optional input projections) + position embeddings -> self/cross layers -> norms."""

    def __init__(
        self,
        in_channels: tuple[int, int],
        native_grids: tuple[tuple[int, int], tuple[int, int]],
        dim: int,
        num_heads: int,
        num_layers: int,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.native_grids = (tuple(native_grids[0]), tuple(native_grids[1]))
        for i, channels in enumerate(in_channels):
            if channels != dim:
                setattr(self, f"input_proj_{i}", nn.Linear(channels, dim))
        self.pos_embed0 = nn.Parameter(torch.zeros(1, native_grids[0][0] * native_grids[0][1], dim))
        self.pos_embed1 = nn.Parameter(torch.zeros(1, native_grids[1][0] * native_grids[1][1], dim))
        nn.init.trunc_normal_(self.pos_embed0, std=0.02)
        nn.init.trunc_normal_(self.pos_embed1, std=0.02)
        self.TransformerSelfEncoderLayer0 = nn.ModuleList(
            SelfEncoderLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers)
        )
        self.TransformerSelfEncoderLayer1 = nn.ModuleList(
            SelfEncoderLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers)
        )
        self.TransformerCrossEncoderLayer = nn.ModuleList(
            CrossEncoderLayer(dim, num_heads, mlp_ratio) for _ in range(num_layers)
        )
        self.norm_layer_0 = nn.LayerNorm(dim)
        self.norm_layer_1 = nn.LayerNorm(dim)
        self.apply(_init_weights)

    def _tokens(self, index: int, feature_map: Tensor) -> tuple[Tensor, tuple[int, int]]:
        grid = (feature_map.shape[-2], feature_map.shape[-1])
        tokens = feature_map.flatten(2).transpose(1, 2)
        proj = getattr(self, f"input_proj_{index}", None)
        if proj is not None:
            tokens = proj(tokens)
        pos = self.pos_embed0 if index == 0 else self.pos_embed1
        return tokens + resize_pos_embed(pos, self.native_grids[index], grid), grid

    def forward(self, map0: Tensor, map1: Tensor) -> tuple[Tensor, Tensor]:
        """Two (B, C_i, H_i, W_i) maps -> two (B, dim, H_i, W_i) maps."""
        x0, grid0 = self._tokens(0, map0)
        x1, grid1 = self._tokens(1, map1)
        for self0, self1, cross in zip(
            self.TransformerSelfEncoderLayer0, self.TransformerSelfEncoderLayer1, self.TransformerCrossEncoderLayer
        ):
            x0 = self0(x0, grid0)
            x1 = self1(x1, grid1)
            x0, x1 = cross(x0, x1)
        x0 = self.norm_layer_0(x0)
        x1 = self.norm_layer_1(x1)
        return _to_map(x0, grid0), _to_map(x1, grid1)


def _to_map(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid[0], grid[1])


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
