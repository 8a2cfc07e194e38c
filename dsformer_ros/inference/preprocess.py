"""uint8 camera images (RGB or BGR, as ROS images come) -> the normalised float tensor the model takes."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch

from dsformer_ros.common.config import ConfigError
from dsformer_ros.inference.image_codec import MAX_PIXELS, ImageDecodeError, decode_compressed

RESIZES = ("square", "short_side")  # to the model's training input size; or its short side, the aspect kept
MAX_SIDE = 8192  # largest model input side: beyond it a (hostile) map or config would allocate gigabytes per frame


class ImageError(ValueError):
    """An input image has the wrong type or shape."""


@dataclass
class PreprocessConfig:
    """How images are resized and normalised: 'square' resizes to `size`; 'short_side' keeps the aspect ratio."""

    resize: str = "square"
    size: tuple[int, int] = (224, 224)
    short_side: int = 224
    multiple: int = 1
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid field."""
        if self.resize not in RESIZES:
            raise ConfigError(f"resize: {self.resize!r} is not one of {', '.join(RESIZES)}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ConfigError(f"size: expected (height, width) > 0, got {self.size}")
        if self.short_side < 1 or self.multiple < 1:
            raise ConfigError("short_side and multiple must be >= 1")
        if max(self.size) > MAX_SIDE or self.short_side > MAX_SIDE or self.multiple > MAX_SIDE:
            raise ConfigError(f"size, short_side and multiple must be at most {MAX_SIDE} pixels")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(math.isfinite(v) for v in values):
                raise ConfigError(f"{name}: expected three finite numbers (R, G, B), got {list(values)}")
        if min(self.std) <= 0:
            raise ConfigError(f"std: every channel's standard deviation must be > 0, got {list(self.std)}")

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the model sees for an input of height x width."""
        if self.resize == "square":
            return tuple(self.size)  # type: ignore[return-value]
        scale = self.short_side / min(height, width)
        m = self.multiple

        def rounded(x: float) -> int:
            return max(m, int(round(x / m)) * m)

        return rounded(height * scale), rounded(width * scale)


def preprocess_config_for(model_config) -> PreprocessConfig:
    """The square preprocessing a model was trained with (its native input size and normalisation)."""
    multiple = 14 if model_config.variant == "dinov2" else 1
    return PreprocessConfig(
        "square",
        tuple(model_config.image_size),
        min(model_config.image_size),
        multiple,
        tuple(model_config.mean),
        tuple(model_config.std),
    )


def as_rgb_uint8(image: np.ndarray, bgr: bool = False) -> np.ndarray:
    """Check an H x W (x 1/3/4) uint8 array and return it as H x W x 3 RGB."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ImageError(f"image must be H x W, H x W x 1, 3 or 4, got shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ImageError(f"image is empty: shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    image = image[:, :, :3]
    return np.ascontiguousarray(image[:, :, ::-1] if bgr else image)


def resize_image(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize with area averaging when shrinking (no aliasing) and bilinear when enlarging."""
    height, width = size
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    shrink = height < rgb.shape[0] and width < rgb.shape[1]
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def normalise(batch: np.ndarray, config: PreprocessConfig) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, (x / 255 - mean) / std."""
    tensor = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(config.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(config.std, dtype=torch.float32).view(1, 3, 1, 1)
    return tensor.sub_(mean).div_(std)


def preprocess(images: Sequence[np.ndarray], config: PreprocessConfig, bgr: bool = False) -> torch.Tensor:
    """A batch of uint8 images -> one normalised tensor; all images must map to the same output size."""
    return preprocess_rgb([as_rgb_uint8(image, bgr=bgr) for image in images], config)


def preprocess_rgb(images: Sequence[np.ndarray], config: PreprocessConfig) -> torch.Tensor:
    """`preprocess` of images already checked by `as_rgb_uint8` (the extractor checks each frame once)."""
    if len(images) == 0:
        raise ImageError("no images to preprocess")
    resized = []
    target = None
    for rgb in images:
        size = config.output_size(rgb.shape[0], rgb.shape[1])
        if target is None:
            target = size
        elif size != target:
            raise ImageError(f"images in one batch resize to different sizes {target} and {size}; batch by size")
        resized.append(resize_image(rgb, size))
    return normalise(np.stack(resized), config)


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read a JPEG or PNG file as H x W x 3 RGB uint8; its header size is checked against `max_pixels` first."""
    path = Path(path)
    if path.is_dir():
        raise ImageError(f"image {path} is a directory; name the image files in it (e.g. {path / '*.jpg'})")
    if not path.is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    data = np.fromfile(path, dtype=np.uint8)
    head = data[:8].tobytes()
    if head.startswith(b"\xff\xd8"):
        kind = "jpeg"
    elif head.startswith(b"\x89PNG"):
        kind = "png"
    else:
        raise ImageError(f"image {path} cannot be decoded: not a JPEG or PNG file (first bytes {head[:4].hex()})")
    try:
        return decode_compressed(kind, data, max_pixels)
    except ImageDecodeError as exc:
        raise ImageError(f"image {path} cannot be decoded: {exc}") from None
