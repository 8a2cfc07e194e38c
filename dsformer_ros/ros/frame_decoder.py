"""Camera messages -> RGB uint8 for the node: the built-in image_codec (the default, and the tested one) or cv_bridge.

Both decoders run the same checks first (`image_codec.check_raw_image` / `check_compressed`: encoding or format,
size, step, data length, JPEG/PNG markers), so a malformed message is an `ImageDecodeError` whichever converts it.
cv_bridge for ROS 2 is not on PyPI and not part of the tests (its 16-bit scaling also differs from ours), so it is
used only when asked for (`image_decoder: cv_bridge`), imported lazily, and its absence is a clear error.
"""
from __future__ import annotations

import functools
import importlib.util
import sys
from typing import Any, Callable

import numpy as np

from dsformer_ros.inference.image_codec import (
    MAX_PIXELS,
    RAW_ENCODINGS,
    ImageDecodeError,
    check_compressed,
    check_raw_image,
    decode_image_msg,
)
from dsformer_ros.inference.preprocess import ImageError, as_rgb_uint8

DECODERS = ("builtin", "cv_bridge")
HOST_IS_BIGENDIAN = int(sys.byteorder == "big")


def cv_bridge_available() -> bool:
    """True when the ROS 2 cv_bridge package can be imported."""
    return importlib.util.find_spec("cv_bridge") is not None


def in_host_byte_order(msg: Any) -> Any:
    """`msg` itself when its byte order is the host's; else a copy with the 16-bit samples swapped to host order.

    cv_bridge swaps foreign-order images with `ndarray.newbyteorder()`, which numpy 2 removed, so it must never see
    one. 8-bit encodings have no byte order: only the flag changes.
    """
    if int(msg.is_bigendian) == HOST_IS_BIGENDIAN:
        return msg
    data = check_raw_image(msg.encoding, msg.height, msg.width, msg.step, msg.data)
    channels, depth, _ = RAW_ENCODINGS[msg.encoding]
    if depth == 2:  # swap the two bytes of every sample, leaving any row padding as it is
        height, step, row_bytes = int(msg.height), int(msg.step), int(msg.width) * channels * 2
        rows = data[: step * height].reshape(height, step).copy()
        rows[:, :row_bytes] = rows[:, :row_bytes].reshape(height, -1, 2)[:, :, ::-1].reshape(height, row_bytes)
        data = rows.reshape(-1)
    return type(msg)(
        header=msg.header, height=msg.height, width=msg.width, encoding=msg.encoding,
        is_bigendian=HOST_IS_BIGENDIAN, step=msg.step, data=data.tobytes(),
    )


def _cv_bridge_decoder(compressed: bool, max_pixels: int) -> Callable[[Any], np.ndarray]:
    from cv_bridge import CvBridge

    bridge = CvBridge()

    def decode(msg: Any) -> np.ndarray:
        if compressed:
            check_compressed(msg.format, msg.data, max_pixels)
        else:
            check_raw_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, max_pixels)
            msg = in_host_byte_order(msg)
        try:
            if compressed:
                image = bridge.compressed_imgmsg_to_cv2(msg, desired_encoding="rgb8")
            else:
                image = bridge.imgmsg_to_cv2(msg, desired_encoding="rgb8")
            return as_rgb_uint8(np.asarray(image))
        except ImageError as exc:
            raise ImageDecodeError(str(exc)) from None
        except Exception as exc:  # cv_bridge raises CvBridgeError, TypeError or cv2.error for damaged messages
            raise ImageDecodeError(f"cv_bridge cannot convert the image: {type(exc).__name__}: {exc}") from None

    return decode


def make_decoder(
    decoder: str, compressed: bool, max_pixels: int = MAX_PIXELS
) -> tuple[Callable[[Any], np.ndarray], str]:
    """A function message -> RGB uint8 (H, W, 3) raising ImageDecodeError, and the name of the implementation used."""
    if decoder not in DECODERS:
        raise ValueError(f"image_decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    if decoder == "cv_bridge":
        if not cv_bridge_available():
            raise ValueError("image_decoder is 'cv_bridge' but cv_bridge is not installed (use 'builtin')")
        return _cv_bridge_decoder(compressed, max_pixels), "cv_bridge"
    return functools.partial(decode_image_msg, max_pixels=max_pixels), "builtin"
