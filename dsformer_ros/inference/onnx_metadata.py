"""What an exported ONNX model carries in its metadata: the model config, input contract and source checkpoint hash.

With it, an ONNX file is matched to a map exactly like its checkpoint (variant, descriptor dimension, SHA-256 of the
source checkpoint) and preprocessed exactly like it (input size, mean/std). Values are JSON text under `dsformer.*`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dsformer_ros.common.config import ConfigError, from_dict, to_dict
from dsformer_ros.inference.preprocess import PreprocessConfig
from dsformer_ros.model.dsformer import ModelConfig

FORMAT = "dsformer_ros.onnx"
FORMAT_VERSION = 1
INPUT_NAME = "images"
OUTPUT_NAME = "descriptors"
# "" = fp32; "int8" = ONNX Runtime dynamic quantization of the MatMul/Gemm weights (activations quantized per call)
QUANTIZATIONS = ("", "int8")
_PREFIX = "dsformer."


class ExportError(ValueError):
    """A model cannot be exported, or an ONNX file is not a DSFormer export this build can run; the message says why."""


@dataclass
class ExportedModel:
    """The contract of one exported model: (B, 3, H, W) normalised float32 `images` -> (B, D) unit `descriptors`."""

    config: ModelConfig
    input_size: tuple[int, int]
    checkpoint_sha256: str
    preprocessing: PreprocessConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    quantization: str = ""

    def to_props(self) -> dict[str, str]:
        """The ONNX metadata_props (string key -> JSON text)."""
        values = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "variant": self.config.variant,
            "descriptor_dim": self.config.descriptor_dim,
            "input_size": list(self.input_size),
            "input": f"{INPUT_NAME}: float32 (batch, 3, {self.input_size[0]}, {self.input_size[1]}), RGB, "
            "(x / 255 - mean) / std",
            "output": f"{OUTPUT_NAME}: float32 (batch, {self.config.descriptor_dim}), L2-normalised",
            "mean": list(self.preprocessing.mean),
            "std": list(self.preprocessing.std),
            "preprocessing": to_dict(self.preprocessing),
            "checkpoint_sha256": self.checkpoint_sha256,
            "model_config": to_dict(self.config),
            "provenance": self.provenance,
            "quantization": self.quantization,
        }
        return {_PREFIX + k: json.dumps(v) for k, v in values.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "ExportedModel":
        """Parse metadata written by `to_props`; ExportError names what is missing or wrong."""
        try:
            values = {k[len(_PREFIX):]: json.loads(v) for k, v in props.items() if k.startswith(_PREFIX)}
        except json.JSONDecodeError as exc:
            raise ExportError(f"ONNX model {source}: unreadable dsformer metadata ({exc})") from None
        if values.get("format") != FORMAT:
            raise ExportError(
                f"ONNX model {source} is not a DSFormer export (no {_PREFIX}format={FORMAT!r} metadata): export it "
                "with dsformer-vpr export"
            )
        version = values.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ExportError(f"ONNX model {source} has export format version {version!r}; this build reads <= "
                              f"{FORMAT_VERSION}")
        try:
            config = from_dict(ModelConfig, dict(values["model_config"]))
            preprocessing = from_dict(PreprocessConfig, dict(values["preprocessing"]))
            height, width = (int(s) for s in values["input_size"])
            sha = str(values["checkpoint_sha256"])
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise ExportError(f"ONNX model {source}: invalid dsformer metadata: {exc}") from None
        quantization = str(values.get("quantization") or "")
        if quantization not in QUANTIZATIONS:
            raise ExportError(f"ONNX model {source}: unknown quantization {quantization!r}")
        return cls(config, (height, width), sha, preprocessing, dict(values.get("provenance") or {}), quantization)
