"""Camera messages -> RGB uint8 for the node: cv_bridge when installed (or demanded), our own image_codec otherwise.

cv_bridge for ROS 2 is not on PyPI, so it is imported lazily; `decoder="auto"` uses it only when it imports, and
`decoder="cv_bridge"` makes its absence a clear error instead of a silent switch. Either way only the encodings in
`image_codec.RAW_ENCODINGS` are accepted, and every failure becomes `ImageDecodeError`.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Any, Callable

import numpy as np

from dsformer_ros.inference.image_codec import (
    MAX_PIXELS,
    RAW_ENCODINGS,
    ImageDecodeError,
    check_message_size,
    decode_image_msg,
)
from dsformer_ros.inference.preprocess import ImageError, as_rgb_uint8

DECODERS = ("auto", "cv_bridge", "builtin")


def cv_bridge_available() -> bool:
    """True when the ROS 2 cv_bridge package can be imported."""
    return importlib.util.find_spec("cv_bridge") is not None


def _cv_bridge_decoder(compressed: bool, max_pixels: int) -> Callable[[Any], np.ndarray]:
    from cv_bridge import CvBridge

    bridge = CvBridge()

    def decode(msg: Any) -> np.ndarray:
        if not compressed and msg.encoding not in RAW_ENCODINGS:
            supported = ", ".join(RAW_ENCODINGS)
            raise ImageDecodeError(f"unsupported image encoding {msg.encoding!r}; supported: {supported}")
        check_message_size(msg, max_pixels)
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
    if decoder == "cv_bridge" and not cv_bridge_available():
        raise ValueError("image_decoder is 'cv_bridge' but cv_bridge is not installed (use 'auto' or 'builtin')")
    if decoder == "cv_bridge" or (decoder == "auto" and cv_bridge_available()):
        return _cv_bridge_decoder(compressed, max_pixels), "cv_bridge"
    return functools.partial(decode_image_msg, max_pixels=max_pixels), "builtin"
