"""iRPE: bucket function against the definition, fast vs reference attention, caching."""
from __future__ import annotations

import math

import pytest
import torch

from dsformer_ros.model.irpe import (
    NUM_BUCKETS,
    IRPEAttention,
    bucket_table,
    fast_irpe_attention,
    piecewise_index,
    reference_irpe_attention,
)


def _piecewise_by_hand(d: int) -> int:
    alpha, beta, gamma = 1.9, 3.8, 15.2
    if abs(d) <= alpha:
        return round(d)
    value = round(alpha + math.log(abs(d) / alpha) / math.log(gamma / alpha) * (beta - alpha))
    return int(math.copysign(min(int(beta), value), d))


def test_piecewise_index_matches_the_definition():
    offsets = torch.arange(-40, 41)
    expected = torch.tensor([_piecewise_by_hand(int(d)) for d in offsets])
    assert torch.equal(piecewise_index(offsets), expected)
    assert piecewise_index(torch.tensor([0, 1, 2, 3, 5, 19, -2, -6])).tolist() == [0, 1, 2, 2, 3, 3, -2, -3]


def test_bucket_table_layout_and_cache():
    table = bucket_table(3, 4)
    assert table.shape == (12, 12)
    assert int(table.min()) >= 0 and int(table.max()) < NUM_BUCKETS
    # token 0 is (0, 0), token 11 is (2, 3): offset of 11 relative to 0 is (+2, +3) -> (2+3)*7 + (2+3)
    assert int(table[11, 0]) == (2 + 3) * 7 + (2 + 3)
    assert int(table[0, 11]) == (-2 + 3) * 7 + (-2 + 3)
    assert torch.all(table.diagonal() == 3 * 7 + 3)
    assert bucket_table(3, 4) is table


def _random_tables(head_dim: int, generator: torch.Generator):
    tq = torch.randn(1, head_dim, NUM_BUCKETS, generator=generator)
    tk = torch.randn(1, head_dim, NUM_BUCKETS, generator=generator)
    tv = torch.randn(1, NUM_BUCKETS, head_dim, generator=generator)
    return tq, tk, tv


@pytest.mark.parametrize("grid", [(20, 20), (10, 10), (7, 13), (1, 5), (23, 23)])
def test_fast_attention_equals_reference(grid):
    g = torch.Generator().manual_seed(sum(grid))
    length = grid[0] * grid[1]
    q, k, v = (torch.randn(2, 4, length, 32, generator=g) for _ in range(3))
    tq, tk, tv = _random_tables(32, g)
    ref = reference_irpe_attention(q, k, v, grid, tq, tk, tv)
    fast = fast_irpe_attention(q, k, v, grid, tq, tk, tv)
    assert (ref - fast).abs().max().item() <= 1e-5
    # the tables matter: without them the result differs clearly
    zero = torch.zeros_like
    plain = fast_irpe_attention(q, k, v, grid, zero(tq), zero(tk), zero(tv))
    assert (plain - fast).abs().max().item() > 1e-2


def test_each_table_term_is_used_like_the_reference():
    g = torch.Generator().manual_seed(3)
    grid = (6, 5)
    q, k, v = (torch.randn(1, 2, 30, 16, generator=g) for _ in range(3))
    tq, tk, tv = _random_tables(16, g)
    for keep in range(3):
        tables = [t if i == keep else torch.zeros_like(t) for i, t in enumerate((tq, tk, tv))]
        ref = reference_irpe_attention(q, k, v, grid, *tables)
        fast = fast_irpe_attention(q, k, v, grid, *tables)
        assert (ref - fast).abs().max().item() <= 1e-5


def test_attention_module_switches_implementation():
    torch.manual_seed(0)
    attn = IRPEAttention(64, 2)
    for table in (attn.rpe_q, attn.rpe_k, attn.rpe_v):
        torch.nn.init.normal_(table.lookup_table_weight)
    q, k, v = (torch.randn(1, 2, 12, 32) for _ in range(3))
    fast = attn(q, k, v, (3, 4))
    attn.impl = "reference"
    ref = attn(q, k, v, (3, 4))
    assert fast.shape == (1, 12, 64)
    assert (fast - ref).abs().max().item() <= 1e-5


def test_tables_cached_under_inference_mode_serve_training():
    torch.manual_seed(0)
    attn = IRPEAttention(32, 2)
    with torch.inference_mode():
        attn(*(torch.randn(1, 2, 6 * 11, 16) for _ in range(3)), (6, 11))
    q, k, v = (torch.randn(1, 2, 6 * 11, 16, requires_grad=True) for _ in range(3))
    attn(q, k, v, (6, 11)).sum().backward()
    assert q.grad is not None and attn.rpe_v.lookup_table_weight.grad is not None
