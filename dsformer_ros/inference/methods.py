"""Descriptor methods: anything that turns RGB images into L2-normalised rows a PlaceMap can hold and search.

`DescriptorExtractor` (the DSFormer) is one; `RawPixels` (downsampled, normalised pixels) is the classic sanity
baseline. The localizer, build-map, eval and replay take any of them, so a baseline runs the very same pipeline.
A method's `variant`, `fingerprint` and `dim` are what a map's manifest records, so a map is only ever searched
with descriptors of the method that built it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import cv2
import numpy as np

from dsformer_ros.common.config import ConfigError, to_dict


class DescriptorMethod(Protocol):
    """What the pipelines need from a method."""

    name: str

    @property
    def dim(self) -> int: ...

    @property
    def fingerprint(self) -> str: ...

    @property
    def variant(self) -> str: ...

    @property
    def preprocessing(self) -> dict: ...

    @property
    def device(self) -> object: ...

    def warmup(self, iterations: int) -> None: ...

    def describe(self, images: Sequence[np.ndarray]) -> np.ndarray: ...

    def describe_paths(self, paths: Iterable[str | Path], progress: bool = False) -> np.ndarray: ...


def settings_sha256(*parts: object) -> str:
    """SHA-256 of JSON-encodable settings: the fingerprint of a method that has no weights file."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass
class RawPixelsConfig:
    """Raw-pixel baseline: images resized to `size` (height, width) with area averaging, grayscale or RGB, then made
    zero-mean and unit-norm per image, so the inner product is the normalised cross-correlation."""

    size: tuple[int, int] = (24, 32)
    grayscale: bool = True

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field."""
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"raw_pixels.size: expected (height, width) > 0, got {self.size}")


class RawPixels:
    """Downsampled, zero-mean, unit-norm pixels (Recall@1 ~0.27 on the corridor set)."""

    name = "raw_pixels"

    def __init__(self, config: RawPixelsConfig | None = None) -> None:
        self.config = config or RawPixelsConfig()
        self.config.validate()

    @property
    def dim(self) -> int:
        """Pixels (x 3 for RGB)."""
        height, width = self.config.size
        return height * width * (1 if self.config.grayscale else 3)

    @property
    def fingerprint(self) -> str:
        """Hash of the method's settings (it has no weights)."""
        return settings_sha256("raw_pixels", 1, to_dict(self.config))

    @property
    def variant(self) -> str:
        """The method name."""
        return self.name

    @property
    def preprocessing(self) -> dict:
        """Size and colour mode."""
        return to_dict(self.config)

    @property
    def device(self) -> str:
        """Raw pixels are computed on the CPU."""
        return "cpu"

    def warmup(self, iterations: int) -> None:
        """Nothing to warm up: no model, no lazy initialisation."""

    def describe_image(self, rgb: np.ndarray) -> np.ndarray:
        """One RGB uint8 image -> (D,) float32 zero-mean unit-norm vector (a uniform image: a fixed unit vector)."""
        height, width = self.config.size
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if self.config.grayscale else rgb
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32).ravel()
        small -= small.mean()
        norm = float(np.linalg.norm(small))
        if norm == 0.0:
            out = np.zeros_like(small)
            out[0] = 1.0
            return out
        return small / norm

    def describe(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """RGB uint8 images -> float32 (N, D)."""
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for i, image in enumerate(images):
            out[i] = self.describe_image(image)
        return out

    def describe_paths(self, paths: Iterable[str | Path], progress: bool = False) -> np.ndarray:
        """Descriptors of image files."""
        from dsformer_ros.inference.extractor import describe_files

        return describe_files(paths, self.describe, self.dim, 64, "raw pixels", progress)
