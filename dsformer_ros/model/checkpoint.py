"""Reading and writing DSFormer checkpoints: the authors' raw state_dict and our own format (weights + config).

Both are read with `torch.load(..., weights_only=True)`: a checkpoint is data, never code.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsformer_ros.common.atomic import atomic_save
from dsformer_ros.common.config import ConfigError, from_dict, to_dict
from dsformer_ros.model.dsformer import DSFormer, ModelConfig, preset

FORMAT = "dsformer_ros.checkpoint"
FORMAT_VERSION = 1
_VARIANT_PREFIXES = {"backbone.backbone.": "resnet50", "backbone.dino.": "dinov2", "backbone.effnet.": "efficientnet_lite0"}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, foreign or does not match the model."""


@dataclass
class Checkpoint:
    """Weights plus what is needed to rebuild and trust them."""

    state_dict: dict[str, torch.Tensor]
    config: ModelConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""
    path: str = ""


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names and tensor bytes: identifies weights that never lived in a file."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def strip_module_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the `module.` prefix that (Distributed)DataParallel training leaves on every key."""
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return dict(state_dict)


def infer_variant(state_dict: dict[str, torch.Tensor]) -> str:
    """The backbone variant a state_dict was saved from, from its key prefixes."""
    for prefix, variant in _VARIANT_PREFIXES.items():
        if any(k.startswith(prefix) for k in state_dict):
            return variant
    raise CheckpointError(
        "not a DSFormer checkpoint: no backbone weights (expected keys starting with "
        + ", ".join(_VARIANT_PREFIXES)
        + ")"
    )


def _raw_load(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (KeyError, UnpicklingError, RuntimeError...) for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be read (truncated, corrupt or not a PyTorch file): {first_line}"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _retire_dino_intermediate_norm(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """Drop `dino_intermediate_norm` from configs saved before it was removed; refuse a DINOv2 model trained with it.

    The key existed in every config of ours (default true) but only changed the DINOv2 variant, where true applied
    the ViT's final LayerNorm to the two block outputs, a function the authors' model does not compute. Any other
    variant, or a DINOv2 model saved with false, computes the same function without it; a DINOv2 model saved with
    true cannot be reproduced and is refused rather than silently run differently.
    """
    if "dino_intermediate_norm" not in config:
        return config
    norm = config.pop("dino_intermediate_norm")
    if config.get("variant") == "dinov2" and norm is not False:
        raise CheckpointError(
            f"checkpoint {path} is a DINOv2 model trained with dino_intermediate_norm=true (the ViT's final "
            "LayerNorm applied to the block outputs); that option was removed because the authors' model feeds the "
            "raw block outputs: retrain (or fine-tune) it with this version"
        )
    return config


def read_checkpoint(path: str | Path, variant: str | None = None) -> Checkpoint:
    """Read our format or an official raw state_dict (variant inferred from keys unless given)."""
    path = Path(path)
    obj = _raw_load(path)
    sha = file_sha256(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint {path} has format version {version!r}; this build reads <= {FORMAT_VERSION}")
        try:
            config = from_dict(ModelConfig, _retire_dino_intermediate_norm(dict(obj["config"]), path))
        except (ConfigError, KeyError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
        state_dict = obj.get("state_dict")
        if not _is_state_dict(state_dict):
            raise CheckpointError(f"checkpoint {path} has no valid state_dict")
        if variant is not None and variant != config.variant:
            raise CheckpointError(f"checkpoint {path} holds variant {config.variant!r}, not {variant!r}")
        return Checkpoint(state_dict, config, dict(obj.get("provenance") or {}), sha, str(path))
    if isinstance(obj, dict) and "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        obj = obj["state_dict"]
    if not _is_state_dict(obj):
        raise CheckpointError(
            f"checkpoint {path} is not a DSFormer checkpoint: expected a state_dict of tensors or a "
            f"{FORMAT} file, got {type(obj).__name__}"
        )
    state_dict = strip_module_prefix(obj)
    inferred = infer_variant(state_dict)
    config = preset(variant or inferred)
    provenance = {"source": "official state_dict", "file": path.name}
    return Checkpoint(state_dict, config, provenance, sha, str(path))


def load_state_dict_strict(model: DSFormer, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """`load_state_dict(strict=True)` with an error that names the first mismatching key or shape."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in state_dict:
            raise CheckpointError(
                f"{source} does not match the {model.config.variant} model: first missing key {name!r}"
            )
        if tuple(state_dict[name].shape) != tuple(tensor.shape):
            raise CheckpointError(
                f"{source} does not match the {model.config.variant} model: key {name!r} has shape "
                f"{tuple(state_dict[name].shape)}, the model expects {tuple(tensor.shape)}"
            )
    for name in state_dict:
        if name not in expected:
            raise CheckpointError(
                f"{source} does not match the {model.config.variant} model: first unexpected key {name!r}"
            )
    model.load_state_dict(state_dict, strict=True)


def save_checkpoint(
    path: str | Path, model: DSFormer, provenance: dict[str, Any] | None = None
) -> str:
    """Write our format atomically (weights + config + provenance); returns the file's SHA-256."""
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": to_dict(model.config),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "provenance": dict(provenance or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_save(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return file_sha256(path)

