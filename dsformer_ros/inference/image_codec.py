"""ROS camera images -> RGB uint8 H x W x 3, from plain message fields (works for rclpy and rosbags messages alike).

Raw `sensor_msgs/Image` encodings: rgb8, bgr8, rgba8, bgra8, mono8 and mono16 (scaled linearly to 8 bits; 16UC1 is
rejected because it usually carries depth, not intensity). `sensor_msgs/CompressedImage`: JPEG and PNG.
Anything else, and any inconsistent or damaged payload, raises `ImageDecodeError` naming the problem. Image sizes
are checked before decoding (compressed ones from the JPEG SOF / PNG IHDR header) against a pixel limit, so a small
hostile payload that claims a huge image is refused without allocating it. Bytes after a JPEG's end-of-image marker
(camera metadata) are allowed.
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
# Default pixel limit (width * height) of a decoded image: 50 MP is above any robot camera and about 150 MB as RGB.
MAX_PIXELS = 50_000_000


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
    except (TypeError, ValueError):
        pass
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise ImageDecodeError(f"image data must be bytes, got {type(data).__name__}") from None


def check_raw_image(
    encoding: str, height: int, width: int, step: int, data: Any, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Raise ImageDecodeError unless the fields of a sensor_msgs/Image are consistent and the image is at most
    `max_pixels`; returns `data` as flat uint8.

    Every decoder (this module's and cv_bridge) runs it before any conversion.
    """
    encoding = str(encoding)
    try:
        height, width, step = int(height), int(width), int(step)
    except (TypeError, ValueError, OverflowError):
        raise ImageDecodeError(f"image size fields must be integers, got {height!r}, {width!r}, {step!r}") from None
    if encoding not in RAW_ENCODINGS:
        hint = " (16UC1 usually holds depth; convert it to mono16 if it is an intensity image)" if encoding == "16UC1" else ""
        raise ImageDecodeError(
            f"unsupported image encoding {encoding!r}{hint}; supported: {', '.join(RAW_ENCODINGS)}"
        )
    if height <= 0 or width <= 0:
        raise ImageDecodeError(f"image has zero size: {width}x{height}")
    check_pixels(width, height, max_pixels, f"{encoding} image")
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
    encoding: str, height: int, width: int, step: int, data: Any, is_bigendian: int = 0, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Fields of a sensor_msgs/Image -> contiguous RGB uint8 (height, width, 3); raises ImageDecodeError."""
    buf = check_raw_image(encoding, height, width, step, data, max_pixels)
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


def _jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the JPEG frame header (SOFn), walking the marker segments up to the first scan.

    Also checks the structure: every segment fits in the data, a frame header precedes the scan, and an
    end-of-image marker follows it (bytes after that marker, such as camera metadata, are allowed).
    """
    if not data.startswith(_JPEG_START):
        raise ImageDecodeError(f"corrupt JPEG: data does not start with the JPEG marker (first bytes {data[:4].hex()})")
    pos, size = 2, None
    while True:
        while pos < len(data) and data[pos] == 0xFF:  # markers may be preceded by fill bytes
            pos += 1
        if pos >= len(data) or data[pos - 1] != 0xFF:
            raise ImageDecodeError(f"corrupt JPEG: no valid marker at byte {pos} ({len(data)} bytes, truncated?)")
        marker = data[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM and RSTn stand alone
            continue
        if marker == 0xD9:
            raise ImageDecodeError("corrupt JPEG: end-of-image marker before any image scan")
        if pos + 2 > len(data):
            raise ImageDecodeError(f"corrupt JPEG: truncated in the header ({len(data)} bytes)")
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > len(data):
            raise ImageDecodeError(f"corrupt JPEG: segment 0xFF{marker:02X} of {length} bytes runs past the data")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn (not DHT, JPG, DAC)
            if length < 8:
                raise ImageDecodeError(f"corrupt JPEG: frame header of {length} bytes")
            height = int.from_bytes(data[pos + 3 : pos + 5], "big")
            width = int.from_bytes(data[pos + 5 : pos + 7], "big")
            size = (width, height)
        if marker == 0xDA:  # start of scan: entropy-coded data follows, FF bytes in it are stuffed
            if size is None:
                raise ImageDecodeError("corrupt JPEG: image scan without a frame header (no SOF marker)")
            if data.find(_JPEG_END, pos + length) < 0:
                raise ImageDecodeError(f"corrupt JPEG: truncated ({len(data)} bytes, no end-of-image marker)")
            return size
        pos += length


def _png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the PNG IHDR chunk; also checks that the chunks run, whole, to an IEND chunk."""
    if not data.startswith(_PNG_START):
        raise ImageDecodeError(
            f"corrupt PNG: data does not start with the PNG signature (first bytes {data[:4].hex()})"
        )
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageDecodeError(f"corrupt PNG: no IHDR header chunk ({len(data)} bytes)")
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    pos = 8
    while True:
        if pos + 8 > len(data):
            raise ImageDecodeError(f"corrupt PNG: truncated ({len(data)} bytes, no IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        pos += 12 + length
        if pos > len(data):
            raise ImageDecodeError(f"corrupt PNG: chunk {kind!r} of {length} bytes runs past the data (truncated)")
        if kind == b"IEND":
            return width, height


def compressed_size(kind: str, data: bytes) -> tuple[int, int]:
    """(width, height) a JPEG or PNG payload claims in its header, read without decoding any pixel."""
    return _png_size(data) if kind == "png" else _jpeg_size(data)


def check_pixels(width: int, height: int, max_pixels: int, what: str) -> None:
    """Raise ImageDecodeError for a zero-size image or one above `max_pixels` (decoding it would exhaust memory)."""
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{what} has zero size: {width}x{height}")
    if width * height > max_pixels:
        raise ImageDecodeError(
            f"{what} is {width}x{height} = {width * height} pixels, above the limit of {max_pixels} "
            "(raise max_image_pixels if such images are real)"
        )


def check_compressed(fmt: str, data: Any, max_pixels: int = MAX_PIXELS) -> tuple[str, np.ndarray]:
    """Raise ImageDecodeError unless a sensor_msgs/CompressedImage is a whole JPEG or PNG of its format whose header
    size is at most `max_pixels` (read without decoding a pixel). Returns the kind ('jpeg' or 'png') and `data` as
    flat uint8; every decoder runs it before decoding.
    """
    kind = _compression(fmt)
    buf = _as_uint8(data)
    if buf.size == 0:
        raise ImageDecodeError(f"compressed image ({kind}) has no data")
    width, height = compressed_size(kind, buf.tobytes())
    check_pixels(width, height, max_pixels, f"{kind.upper()} image")
    return kind, buf


def decode_compressed(fmt: str, data: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Fields of a sensor_msgs/CompressedImage (format, data) -> RGB uint8 (H, W, 3); raises ImageDecodeError."""
    kind, buf = check_compressed(fmt, data, max_pixels)
    try:
        bgr = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    except cv2.error as exc:
        raise ImageDecodeError(f"corrupt {kind.upper()}: OpenCV cannot decode it: {_one_line(exc)}") from None
    if bgr is None or bgr.size == 0:
        raise ImageDecodeError(f"corrupt {kind.upper()}: OpenCV cannot decode {buf.size} bytes")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line (OpenCV's span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def decode_image_msg(msg: Any, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A sensor_msgs/Image or CompressedImage object (rclpy or rosbags) -> RGB uint8 (H, W, 3)."""
    if all(hasattr(msg, name) for name in ("encoding", "height", "width", "step", "data")):
        return decode_image(
            msg.encoding, msg.height, msg.width, msg.step, msg.data, getattr(msg, "is_bigendian", 0), max_pixels
        )
    if hasattr(msg, "format") and hasattr(msg, "data"):
        return decode_compressed(msg.format, msg.data, max_pixels)
    raise ImageDecodeError(f"{type(msg).__name__} is neither a sensor_msgs/Image nor a sensor_msgs/CompressedImage")
