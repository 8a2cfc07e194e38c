"""Reading and writing DSFormer checkpoints: the authors' raw state_dict and our own format (weights + config).

Both are read with `torch.load(..., weights_only=True)` after a zip-bomb check (dsformer_ros.common.datafiles): a
checkpoint is data, never code. What it holds is checked before use: config and provenance must be mappings, every
weight a real (not complex or quantised) CPU tensor (not on the meta device), finite, and not all zero. Our format
from version 2 on carries the SHA-256 of its tensors (`state_dict_sha256`), so damaged tensor bytes are refused by
every reader (load, describe, export, training resume); version 1 files, written before the digest, are read with
the structural checks alone and say so in a log line.
"""
from __future__ import annotations

import hashlib
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dsformer_ros.common.atomic import atomic_save
from dsformer_ros.common.config import ConfigError, from_dict, to_dict
from dsformer_ros.common.datafiles import file_sha256, load_torch_file
from dsformer_ros.model.dsformer import DSFormer, ModelConfig, preset

log = logging.getLogger(__name__)

FORMAT = "dsformer_ros.checkpoint"
FORMAT_VERSION = 2  # 2: the payload carries DIGEST, the state_dict_sha256 of its tensors
DIGEST = "tensors_sha256"
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
    return load_torch_file(path, "checkpoint", CheckpointError)


def check_weights(state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Raise CheckpointError unless every tensor holds real values: not on the meta device, finite, and not all
    floating-point matrices zero (weights that were never trained or were wiped)."""
    any_matrix = any_nonzero = False
    for name, tensor in state_dict.items():
        if tensor.is_meta or tensor.device.type != "cpu":
            raise CheckpointError(f"{source}: weight {name!r} is on the {tensor.device.type} device and holds no data")
        if tensor.is_complex() or tensor.is_quantized:
            raise CheckpointError(f"{source}: weight {name!r} is {tensor.dtype}; weights are real-valued tensors")
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"{source}: weight {name!r} has {bad} non-finite value(s) (NaN or inf)")
        if tensor.ndim >= 2:
            any_matrix = True
            any_nonzero = any_nonzero or bool(tensor.any())
    if any_matrix and not any_nonzero:
        raise CheckpointError(f"{source}: every weight matrix is all zeros (an untrained or wiped checkpoint)")


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


def _check_digest(payload: dict, state_dict: dict[str, torch.Tensor], version: int, path: Path) -> None:
    """Raise CheckpointError unless the tensors hash to the digest saved with them (format version 2 on)."""
    if version < 2:
        log.warning("checkpoint %s (format version 1) carries no digest of its tensors: accepted on the structural "
                    "checks alone (save it again to add one)", path)
        return
    digest = payload.get(DIGEST)
    if not isinstance(digest, str):
        raise CheckpointError(f"checkpoint {path} lacks the digest of its tensors ({DIGEST}) that version 2 carries")
    if state_dict_sha256(state_dict) != digest:
        raise CheckpointError(f"checkpoint {path} is damaged: its tensors do not match the digest they were saved with")


def read_checkpoint(path: str | Path, variant: str | None = None) -> Checkpoint:
    """Read our format or an official raw state_dict (variant inferred from keys unless given)."""
    path = Path(path)
    obj = _raw_load(path)
    sha = file_sha256(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        version = obj.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path} has format version {version!r}; this build reads 1..{FORMAT_VERSION}"
            )
        raw_config, provenance = obj.get("config"), obj.get("provenance", {})
        if not isinstance(raw_config, dict) or not all(isinstance(k, str) for k in raw_config):
            raise CheckpointError(f"checkpoint {path} has no model config mapping (got {type(raw_config).__name__})")
        if not isinstance(provenance, dict) or not all(isinstance(k, str) for k in provenance):
            raise CheckpointError(f"checkpoint {path}: provenance must be a mapping, got {type(provenance).__name__}")
        try:
            config = from_dict(ModelConfig, _retire_dino_intermediate_norm(dict(raw_config), path))
        except (ConfigError, KeyError, TypeError, ValueError, OverflowError) as exc:
            raise CheckpointError(f"checkpoint {path} has an invalid model config: {exc}") from None
        state_dict = obj.get("state_dict")
        if not _is_state_dict(state_dict):
            raise CheckpointError(f"checkpoint {path} has no valid state_dict")
        if variant is not None and variant != config.variant:
            raise CheckpointError(f"checkpoint {path} holds variant {config.variant!r}, not {variant!r}")
        check_weights(state_dict, f"checkpoint {path}")
        _check_digest(obj, state_dict, version, path)
        return Checkpoint(state_dict, config, dict(provenance), sha, str(path))
    if isinstance(obj, dict) and "state_dict" in obj and _is_state_dict(obj["state_dict"]):
        obj = obj["state_dict"]
    if not _is_state_dict(obj):
        raise CheckpointError(
            f"checkpoint {path} is not a DSFormer checkpoint: expected a state_dict of tensors or a "
            f"{FORMAT} file, got {type(obj).__name__}"
        )
    state_dict = strip_module_prefix(obj)
    inferred = infer_variant(state_dict)
    check_weights(state_dict, f"checkpoint {path}")
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
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": to_dict(model.config),
        "state_dict": state_dict,
        DIGEST: state_dict_sha256(state_dict),
        "provenance": dict(provenance or {}),
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_save(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return file_sha256(path)

