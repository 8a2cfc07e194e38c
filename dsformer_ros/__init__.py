"""dsformer_ros: DSFormer visual place recognition for ROS 2 robots (runtime library; ROS adapters import rclpy lazily).

The public names load on first use, so light tools (the CLI's help, config parsing) do not import torch.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "DSFormer": "dsformer_ros.model.dsformer",
    "ModelConfig": "dsformer_ros.model.dsformer",
    "build_model": "dsformer_ros.model.dsformer",
    "preset": "dsformer_ros.model.dsformer",
    "DescriptorExtractor": "dsformer_ros.inference.extractor",
    "load_model": "dsformer_ros.model.loading",
    "resolve_device": "dsformer_ros.common.devices",
    "Localizer": "dsformer_ros.localization.localizer",
    "LocalizerConfig": "dsformer_ros.localization.localizer",
    "PlaceMap": "dsformer_ros.maps.placemap",
    "PreprocessConfig": "dsformer_ros.inference.preprocess",
    "preprocess": "dsformer_ros.inference.preprocess",
}
__all__ = sorted(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'dsformer_ros' has no attribute {name!r}")
