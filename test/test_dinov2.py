"""The DINOv2 variant computes the authors' function: raw outputs of the last two ViT blocks, no final LayerNorm.

The oracle runs the DINOv2 ViT-B/14 forward by hand from the hub model's definition (patch conv, class token,
position embeddings bicubically resized with DINOv2's 0.1 offset, pre-norm blocks with explicit softmax attention and
LayerScale) on weights whose LayerScale gammas, position embeddings, final norm and iRPE tables are all far from
their initial values, then feeds the two block outputs through our dual-scale transformer and head.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dsformer_ros.model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from dsformer_ros.model.dsformer import build_model, preset
from dsformer_ros.model.loading import load_model

SIZE = (70, 98)  # a 5 x 7 patch grid: non-square, and not the native 37 x 37


def _dinov2_model() -> torch.nn.Module:
    config = preset("dinov2")
    config.image_size = (42, 56)  # native grids of the dual-scale position embeddings: 3 x 4, resized to 5 x 7
    torch.manual_seed(0)
    model = build_model(config).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith(("ls1.gamma", "ls2.gamma")):
                param.copy_(0.3 + 0.2 * torch.rand(param.shape, generator=g))
            elif "pos_embed" in name or "lookup_table_weight" in name or "cls_token" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)
            elif name.startswith("backbone.dino.norm."):
                param.copy_(torch.randn(param.shape, generator=g))
    return model


def _block_by_hand(block: torch.nn.Module, x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, length, dim = x.shape
    h = F.layer_norm(x, (dim,), block.norm1.weight, block.norm1.bias, 1e-6)
    qkv = F.linear(h, block.attn.qkv.weight, block.attn.qkv.bias).reshape(batch, length, 3, heads, dim // heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attn = ((q * (dim // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    h = F.linear((attn @ v).transpose(1, 2).reshape(batch, length, dim), block.attn.proj.weight, block.attn.proj.bias)
    x = x + block.ls1.gamma * h
    h = F.layer_norm(x, (dim,), block.norm2.weight, block.norm2.bias, 1e-6)
    h = F.linear(F.gelu(F.linear(h, block.mlp.fc1.weight, block.mlp.fc1.bias)), block.mlp.fc2.weight, block.mlp.fc2.bias)
    return x + block.ls2.gamma * h


def _authors_dinov2(model: torch.nn.Module, x: torch.Tensor, final_norm: bool) -> torch.Tensor:
    """DSFormer-DINOv2 by hand; `final_norm` applies the ViT's last LayerNorm to the block outputs (the old bug)."""
    vit = model.backbone.dino
    batch, _, height, width = x.shape
    h0, w0 = height // 14, width // 14
    patches = F.conv2d(x, vit.patch_embed.proj.weight, vit.patch_embed.proj.bias, stride=14)
    tokens = torch.cat([vit.cls_token.expand(batch, -1, -1), patches.flatten(2).transpose(1, 2)], dim=1)
    m = int(math.sqrt(vit.pos_embed.shape[1] - 1))
    grid_pos = vit.pos_embed[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
    grid_pos = F.interpolate(grid_pos, scale_factor=((h0 + 0.1) / m, (w0 + 0.1) / m), mode="bicubic")
    assert grid_pos.shape[-2:] == (h0, w0)
    tokens = tokens + torch.cat([vit.pos_embed[:, :1], grid_pos.permute(0, 2, 3, 1).reshape(1, h0 * w0, -1)], dim=1)
    outputs = []
    for i, block in enumerate(vit.blocks):
        tokens = _block_by_hand(block, tokens, heads=12)
        if i >= len(vit.blocks) - 2:
            out = F.layer_norm(tokens, (768,), vit.norm.weight, vit.norm.bias, 1e-6) if final_norm else tokens
            outputs.append(out[:, 1:].transpose(1, 2).reshape(batch, 768, h0, w0))
    out0, out1 = model.dual_scale_former(*outputs)
    pooled = torch.cat([model.aggregation0(out0), model.aggregation1(out1)], dim=1)
    return F.normalize(model.fc(pooled), dim=1)


def test_dinov2_is_the_authors_function_with_trained_layerscale_and_position_embeddings():
    model = _dinov2_model()
    x = torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours = model(x)
        authors = _authors_dinov2(model, x, final_norm=False)
        with_norm = _authors_dinov2(model, x, final_norm=True)
        model.set_irpe_impl("reference")
        ours_reference = model(x)
    assert (ours - authors).abs().max().item() <= 1e-5
    assert (ours_reference - authors).abs().max().item() <= 1e-5
    # the test can tell the two functions apart: the final norm changes the descriptor a lot
    assert (with_norm - authors).abs().max().item() > 1e-2


def test_final_norm_is_kept_for_strict_loading_and_frozen():
    model = build_model("dinov2")
    assert "backbone.dino.norm.weight" in model.state_dict()
    assert {"backbone.dino.norm.weight", "backbone.dino.norm.bias"} <= set(model.frozen_parameter_names())


def _old_checkpoint(path, variant: str, norm: bool, state_dict: dict) -> None:
    """Our checkpoint format as written before `dino_intermediate_norm` was removed from ModelConfig."""
    from dsformer_ros.common.config import to_dict

    config = {**to_dict(preset(variant)), "dino_intermediate_norm": norm}
    torch.save({"format": "dsformer_ros.checkpoint", "version": 1, "config": config, "state_dict": state_dict,
                "provenance": {}}, path)


def test_old_checkpoints_carrying_dino_intermediate_norm(tmp_path):
    """Dropped where it changed nothing (other variants; DINOv2 with false); a DINOv2 model trained with it is refused."""
    lite = load_model(variant="efficientnet_lite0", device="cpu", seed=4)
    _old_checkpoint(tmp_path / "lite.pt", "efficientnet_lite0", True, lite.state_dict())
    loaded = load_model(tmp_path / "lite.pt", device="cpu")
    x = torch.randn(1, 3, 224, 224)
    with torch.inference_mode():
        assert torch.equal(loaded(x), lite(x))
    placeholder = {"backbone.dino.cls_token": torch.ones(1, 1, 768)}  # real values: all-zero weights are refused
    _old_checkpoint(tmp_path / "dino_false.pt", "dinov2", False, placeholder)
    assert read_checkpoint(tmp_path / "dino_false.pt").config == preset("dinov2")
    _old_checkpoint(tmp_path / "dino_true.pt", "dinov2", True, placeholder)
    with pytest.raises(CheckpointError, match="dino_intermediate_norm=true.*retrain"):
        read_checkpoint(tmp_path / "dino_true.pt")
    # a checkpoint saved now no longer carries the key
    save_checkpoint(tmp_path / "new.pt", lite)
    assert "dino_intermediate_norm" not in torch.load(tmp_path / "new.pt", weights_only=True)["config"]
