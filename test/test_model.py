"""The DSFormer model: checkpoint layout, fast == reference iRPE for the whole model, any input size."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dsformer_ros.model.dsformer import ModelConfig, build_model, preset
from dsformer_ros.model.transformer import resize_pos_embed

# Key and shape of every entry of the released DSFormer checkpoints (copied from ../shared/spec, which states them).
LAYOUTS = Path(__file__).resolve().parent / "data"


def _read_tsv(name: str) -> list[tuple[str, list[int]]]:
    path = LAYOUTS / name
    rows = []
    for line in path.read_text().strip().splitlines():
        key, shape = line.split("\t")
        rows.append((key, [int(x) for x in shape.strip("[]").split(",") if x.strip()]))
    return rows


@pytest.mark.parametrize(
    "variant,tsv", [("resnet50", "dsformer_resnet50_state_dict.tsv"), ("dinov2", "dsformer_dinov2_state_dict.tsv")]
)
def test_state_dict_equals_released_checkpoint_layout(variant, tsv):
    expected = _read_tsv(tsv)
    ours = [(k, list(v.shape)) for k, v in build_model(variant).state_dict().items()]
    assert len(ours) == len(expected)
    assert dict(ours) == dict(expected)


def _randomise_irpe_and_pos(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        if "lookup_table_weight" in name or "pos_embed" in name:
            with torch.no_grad():
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)


def _small(variant: str, **kw) -> ModelConfig:
    cfg = preset(variant)
    cfg.embed_dim, cfg.num_heads, cfg.num_layers = kw.get("dim", 64), 2, 2
    return cfg


@pytest.mark.parametrize(
    "variant,size",
    [("resnet50", (128, 128)), ("dinov2", (112, 140)), ("efficientnet_lite0", (224, 224)), ("efficientnet_lite0", (150, 260))],
)
def test_whole_model_fast_equals_reference(variant, size):
    torch.manual_seed(0)
    model = build_model(preset(variant) if variant == "efficientnet_lite0" else _small(variant)).eval()
    _randomise_irpe_and_pos(model, seed=1)
    x = torch.randn(2, 3, *size)
    with torch.inference_mode():
        fast = model(x)
        model.set_irpe_impl("reference")
        ref = model(x)
    assert fast.shape == (2, model.config.descriptor_dim)
    assert (fast - ref).abs().max().item() <= 1e-5
    assert torch.allclose(fast.norm(dim=1), torch.ones(2), atol=1e-5)


def test_native_size_uses_position_embeddings_unchanged():
    pos = torch.randn(1, 20 * 20, 8)
    assert resize_pos_embed(pos, (20, 20), (20, 20)) is pos
    resized = resize_pos_embed(pos, (20, 20), (15, 27))
    assert resized.shape == (1, 15 * 27, 8)
    # bicubic resizing to a 2x grid keeps the embedding smooth and close in range
    up = resize_pos_embed(pos, (20, 20), (40, 40))
    assert up.abs().max() < pos.abs().max() * 1.5


def test_native_size_output_equals_uninterpolated_model():
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0").eval()
    _randomise_irpe_and_pos(model, seed=2)
    x = torch.randn(1, 3, 224, 224)
    former = model.dual_scale_former
    with torch.inference_mode():
        out = model(x)
        maps = model.backbone(x)
        tokens = []
        for i, fmap in enumerate(maps):
            t = fmap.flatten(2).transpose(1, 2)
            t = getattr(former, f"input_proj_{i}")(t)
            tokens.append(t + (former.pos_embed0 if i == 0 else former.pos_embed1))
        grids = [m.shape[-2:] for m in maps]
        x0, x1 = tokens
        for s0, s1, c in zip(
            former.TransformerSelfEncoderLayer0, former.TransformerSelfEncoderLayer1, former.TransformerCrossEncoderLayer
        ):
            x0, x1 = s0(x0, tuple(grids[0])), s1(x1, tuple(grids[1]))
            x0, x1 = c(x0, x1)
        m0 = former.norm_layer_0(x0).transpose(1, 2).reshape(1, -1, *grids[0])
        m1 = former.norm_layer_1(x1).transpose(1, 2).reshape(1, -1, *grids[1])
        pooled = torch.cat([model.aggregation0(m0), model.aggregation1(m1)], dim=1)
        manual = torch.nn.functional.normalize(model.fc(pooled), dim=1)
    assert torch.equal(out, manual)


@pytest.mark.parametrize("size", [(480, 640), (33, 33), (17, 900)])
def test_any_input_size_with_non_empty_grids(size):
    torch.manual_seed(0)
    model = build_model("efficientnet_lite0").eval()
    with torch.inference_mode():
        out = model(torch.randn(1, 3, *size))
    assert out.shape == (1, 256)
    assert torch.isfinite(out).all()


def test_descriptor_depends_on_the_image():
    torch.manual_seed(0)
    model = build_model(_small("resnet50")).eval()
    with torch.inference_mode():
        a, b = model(torch.randn(2, 3, 96, 128))
    assert (a - b).abs().max() > 1e-4


def test_frozen_parameters_are_the_early_stages():
    model = build_model("resnet50")
    frozen = model.frozen_parameter_names()
    assert "backbone.backbone.conv1.weight" in frozen
    assert any(n.startswith("backbone.backbone.layer2.") for n in frozen)
    assert not any(n.startswith(("backbone.backbone.layer3.", "backbone.backbone.layer4.", "dual_scale_former")) for n in frozen)
    dino = build_model("dinov2").frozen_parameter_names()
    assert "backbone.dino.blocks.9.attn.qkv.weight" in dino
    assert not any(n.startswith(("backbone.dino.blocks.10.", "backbone.dino.blocks.11.")) for n in dino)


def test_invalid_config_names_the_field():
    from dsformer_ros.common.config import ConfigError

    with pytest.raises(ConfigError, match="embed_dim"):
        build_model(ModelConfig(embed_dim=100, num_heads=3))
    with pytest.raises(ConfigError, match="variant"):
        build_model(ModelConfig(variant="vgg16"))
    with pytest.raises(ConfigError, match="multiples of 14"):
        build_model(ModelConfig(variant="dinov2", image_size=(320, 320), embed_dim=768, num_heads=12))
