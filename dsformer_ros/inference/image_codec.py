"""ROS camera images -> RGB uint8 H x W x 3, from plain message fields (works for rclpy and rosbags messages alike).

Raw `sensor_msgs/Image` encodings: rgb8, bgr8, rgba8, bgra8, mono8 and mono16 (scaled linearly to 8 bits; 16UC1 is
rejected because it usually carries depth, not intensity). `sensor_msgs/CompressedImage`: JPEG and PNG.
Anything else, and any inconsistent or damaged payload, raises `ImageDecodeError` naming the problem.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np

# encoding -> (channels, bytes per channel, conversion to RGB or None when already RGB)
RAW_ENCODINGS: dict[str, tuple[int, int, int | None]] = {
    "rgb8": (3, 1, None),
    "bgr8": (3, 1, cv2.COLOR_BGR2RGB),
    "rgba8": (4, 1, cv2.COLOR_RGBA2RGB),
    "bgra8": (4, 1, cv2.COLOR_BGRA2RGB),
    "mono8": (1, 1, cv2.COLOR_GRAY2RGB),
    "mono16": (1, 2, cv2.COLOR_GRAY2RGB),
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
_JPEG_START = b"\xff\xd8"
_JPEG_END = b"\xff\xd9"
_PNG_START = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """A camera message cannot be turned into an RGB image; the message says why."""


def _as_uint8(data: Any) -> np.ndarray:
    """The message's `data` field (numpy array, bytes, array.array, memoryview or list) as a flat uint8 view."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageDecodeError(f"image data must be uint8 bytes, got dtype {data.dtype}")
        return data.reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        return np.asarray(data, dtype=np.uint8).reshape(-1)


def check_raw_image(encoding: str, height: int, width: int, step: int, data: Any) -> np.ndarray:
    """Raise ImageDecodeError unless the fields of a sensor_msgs/Image are consistent; returns `data` as flat uint8.

    Every decoder (this module's and cv_bridge) runs it before any conversion.
    """
    encoding = str(encoding)
    height, width, step = int(height), int(width), int(step)
    if encoding not in RAW_ENCODINGS:
        hint = " (16UC1 usually holds depth; convert it to mono16 if it is an intensity image)" if encoding == "16UC1" else ""
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r}{hint}; supported: {', '.join(RAW_ENCODINGS)}"
        )
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image has zero size: {width}x{height}")
    channels, depth, _ = RAW_ENCODINGS[encoding]
    row_bytes = width * channels * depth
    if step < row_bytes:
        raise ImageDecodeError(
            f"step {step} is smaller than width*channels*bytes = {width}*{channels}*{depth} = {row_bytes} ({encoding})"
        )
    buf = _as_uint8(data)
    if buf.size < step * height:
        raise ImageDecodeError(
            f"image data has {buf.size} bytes, expected at least step*height = {step}*{height} = {step * height}"
        )
    return buf


def decode_image(
    encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: int = 0
) -> np.ndarray:
    """Fields of a sensor_msgs/Image -> contiguous RGB uint8 (height, width, 3); raises ImageDecodeError."""
    buf = check_raw_image(encoding, height, width, step, data)
    encoding = str(encoding)
    height, width, step = int(height), int(width), int(step)
    channels, depth, conversion = RAW_ENCODINGS[encoding]
    row_bytes = width * channels * depth
    rows = buf[: step * height].reshape(height, step)[:, :row_bytes]
    if depth == 2:
        dtype = np.dtype(">u2" if is_bigendian else "<u2")
        wide = np.ascontiguousarray(rows).view(dtype).reshape(height, width)
        pixels = np.round(wide.astype(np.float32) / 257.0).astype(np.uint8)
    else:
        pixels = rows.reshape(height, width, channels) if channels > 1 else rows.reshape(height, width)
    if conversion is None:
        return np.ascontiguousarray(pixels)
    return cv2.cvtColor(np.ascontiguousarray(pixels), conversion)


def _compression(fmt: str) -> str:
    """The compression named by a CompressedImage `format` ('jpeg', 'png', 'bgr8; jpeg compressed bgr8', ...)."""
    text = str(fmt).strip().lower()
    if "compresseddepth" in text:
        raise ImageDecodeError(f"compressed depth images are not camera images (format {fmt!r})")
    tokens = [t for t in text.replace(";", " ").split() if t in COMPRESSED_FORMATS]
    if not tokens:
        raise ImageDecodeError(f"unsupported compressed image format {fmt!r}; supported: jpeg, png")
    return "png" if tokens[0] == "png" else "jpeg"


def check_compressed(fmt: str, data: Any) -> tuple[str, np.ndarray]:
    """Raise ImageDecodeError unless a sensor_msgs/CompressedImage looks like a whole JPEG or PNG of its format.

    Returns the kind ('jpeg' or 'png') and `data` as flat uint8; every decoder runs it before decoding.
    """
    kind = _compression(fmt)
    buf = _as_uint8(data)
    if buf.size == 0:
        raise ImageDecodeError(f"compressed image ({kind}) has no data")
    head = buf[:8].tobytes()
    if kind == "jpeg":
        if not head.startswith(_JPEG_START):
            raise ImageDecodeError(f"corrupt JPEG: data does not start with the JPEG marker (first bytes {head[:4].hex()})")
        if _JPEG_END not in buf[-64:].tobytes():
            raise ImageDecodeError(f"corrupt JPEG: truncated ({buf.size} bytes, no end-of-image marker)")
    elif not head.startswith(_PNG_START):
        raise ImageDecodeError(f"corrupt PNG: data does not start with the PNG signature (first bytes {head[:4].hex()})")
    return kind, buf


def decode_compressed(fmt: str, data: Any) -> np.ndarray:
    """Fields of a sensor_msgs/CompressedImage (format, data) -> RGB uint8 (H, W, 3); raises ImageDecodeError."""
    kind, buf = check_compressed(fmt, data)
    bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError(f"corrupt {kind.upper()}: OpenCV cannot decode {buf.size} bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def decode_image_msg(msg: Any) -> np.ndarray:
    """A sensor_msgs/Image or CompressedImage object (rclpy or rosbags) -> RGB uint8 (H, W, 3)."""
    if all(hasattr(msg, name) for name in ("encoding", "height", "width", "step", "data")):
        return decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, getattr(msg, "is_bigendian", 0))
    if hasattr(msg, "format") and hasattr(msg, "data"):
        return decode_compressed(msg.format, msg.data)
    raise ImageDecodeError(f"{type(msg).__name__} is neither a sensor_msgs/Image nor a sensor_msgs/CompressedImage")
