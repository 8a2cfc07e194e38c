"""Image relative position encoding (iRPE, Wu et al. ICCV 2021) as DSFormer uses it, in plain PyTorch.

Product method, contextual mode, one table shared by all heads, applied to q, k and v, ratio 1.9
(alpha 1.9, beta 3.8, gamma 15.2, 49 buckets). Two formulations of the same attention:
`reference_irpe_attention` follows the definition (gathered (L, L) and (L, L, head_dim) tables, as the
authors' code does) and is the tests' oracle; `fast_irpe_attention` never builds (L, L, head_dim) tensors:
the key/query terms are gathered from (L, 49) products and the value term sums attention per bucket first.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor, nn

ALPHA = 1.9
BETA = 3.8
GAMMA = 15.2
BETA_INT = int(BETA)
SIDE = 2 * BETA_INT + 1
NUM_BUCKETS = SIDE * SIDE


def piecewise_index(offset: Tensor) -> Tensor:
    """Map integer offsets to bucket offsets in [-int(beta), int(beta)]: exact near zero, logarithmic beyond alpha."""
    offset = offset.to(torch.float64)
    magnitude = offset.abs()
    far = torch.sign(offset) * torch.clamp(
        torch.round(ALPHA + torch.log(magnitude.clamp(min=ALPHA) / ALPHA) / math.log(GAMMA / ALPHA) * (BETA - ALPHA)),
        max=BETA_INT,
    )
    return torch.where(magnitude <= ALPHA, torch.round(offset), far).to(torch.long)


@lru_cache(maxsize=64)
def _bucket_table_cpu(height: int, width: int) -> Tensor:
    rows = torch.arange(height).repeat_interleave(width)
    cols = torch.arange(width).repeat(height)
    dr = piecewise_index(rows[:, None] - rows[None, :]) + BETA_INT
    dc = piecewise_index(cols[:, None] - cols[None, :]) + BETA_INT
    return (dr * SIDE + dc).contiguous()


_DEVICE_TABLES: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}


def bucket_tables(height: int, width: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """(L, L) bucket ids of token pairs (i, j) and their contiguous transpose, cached per grid shape and device."""
    key = (height, width, str(device))
    tables = _DEVICE_TABLES.get(key)
    if tables is None:
        # normal tensors even when first asked for under inference_mode: training reuses them in autograd
        with torch.inference_mode(False):
            table = _bucket_table_cpu(height, width).to(device)
            tables = (table, table.transpose(0, 1).contiguous())
        _DEVICE_TABLES[key] = tables
    return tables


def bucket_table(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """(L, L) bucket ids of token pairs (i, j) on an height x width grid, cached per grid shape and device."""
    return bucket_tables(height, width, device)[0]


def reference_irpe_attention(
    q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int], table_q: Tensor, table_k: Tensor, table_v: Tensor
) -> Tensor:
    """iRPE self-attention straight from the definition. q, k, v: (B, heads, L, d); tables as in the checkpoint."""
    head_dim = q.shape[-1]
    scale = head_dim**-0.5
    buckets = bucket_table(*grid, device=q.device)
    tk = table_k[0][:, buckets]  # (d, L, L)
    tq = table_q[0][:, buckets]  # (d, L, L): tq[:, j, i] is the table column of bucket(j, i)
    tv = table_v[0][buckets]  # (L, L, d)
    logits = (q @ k.transpose(-2, -1)) * scale
    logits = logits + torch.einsum("bhid,dij->bhij", q, tk)
    logits = logits + torch.einsum("bhjd,dji->bhij", k * scale, tq)
    attn = logits.softmax(dim=-1)
    return attn @ v + torch.einsum("bhij,ijd->bhid", attn, tv)


def fast_irpe_attention(
    q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int], table_q: Tensor, table_k: Tensor, table_v: Tensor
) -> Tensor:
    """Same function as `reference_irpe_attention` without (L, L, d) tensors: (L, 49) products, gathers, bucket sums."""
    batch, heads, length, head_dim = q.shape
    scale = head_dim**-0.5
    buckets, buckets_t = bucket_tables(*grid, device=q.device)
    # key term q_i . Tk[b(i, j)]: gather the (L, 49) products along the bucket axis
    bias = torch.gather(q @ table_k[0].to(q.dtype), -1, buckets.expand(batch, heads, length, length))
    # query term k_j . Tq[b(j, i)] at [i, j]: gather rows of the (49, L) products with the transposed buckets
    key_products = (table_q[0].to(q.dtype).transpose(0, 1) @ (k * scale).transpose(-2, -1))
    bias += torch.gather(key_products, -2, buckets_t.expand(batch, heads, length, length))
    flat = (batch * heads, length, length)
    logits = torch.baddbmm(
        bias.reshape(flat), q.reshape(-1, length, head_dim), k.reshape(-1, length, head_dim).transpose(1, 2), alpha=scale
    )
    attn = logits.softmax(dim=-1).reshape(batch, heads, length, length)
    # value term: sum attention per bucket first, then one small matmul with the 49-row table
    per_bucket = attn.new_zeros(batch, heads, length, NUM_BUCKETS)
    per_bucket.scatter_add_(-1, buckets.expand(batch, heads, length, length), attn)
    return attn @ v + per_bucket @ table_v[0].to(q.dtype)


class RPETable(nn.Module):
    """One iRPE lookup table (`lookup_table_weight`), shared by all heads; zero-initialised as in iRPE."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.lookup_table_weight = nn.Parameter(torch.zeros(shape))


class IRPEAttention(nn.Module):
    """Multi-head self-attention with contextual iRPE on q, k and v, followed by the output projection."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.rpe_q = RPETable((1, head_dim, NUM_BUCKETS))
        self.rpe_k = RPETable((1, head_dim, NUM_BUCKETS))
        self.rpe_v = RPETable((1, NUM_BUCKETS, head_dim))
        self.proj = nn.Linear(dim, dim)
        self.impl = "fast"

    def forward(self, q: Tensor, k: Tensor, v: Tensor, grid: tuple[int, int]) -> Tensor:
        """q, k, v: (B, heads, L, d) on an H x W token grid -> (B, L, dim)."""
        attention = fast_irpe_attention if self.impl == "fast" else reference_irpe_attention
        out = attention(
            q,
            k,
            v,
            grid,
            self.rpe_q.lookup_table_weight,
            self.rpe_k.lookup_table_weight,
            self.rpe_v.lookup_table_weight,
        )
        batch, _, length, _ = out.shape
        return self.proj(out.transpose(1, 2).reshape(batch, length, -1))
