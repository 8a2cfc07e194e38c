"""decode_image / decode_compressed / decode_image_msg on real (rendered) street images and damaged payloads."""
from __future__ import annotations

import array
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dsformer_ros.inference.image_codec import ImageDecodeError, decode_compressed, decode_image, decode_image_msg
from dsformer_ros.inference.preprocess import read_image


@pytest.fixture(scope="module")
def rgb(traversals: Path) -> np.ndarray:
    return read_image(traversals / "ref" / "0000000.jpg")


@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_with_padded_rows(rgb: np.ndarray, encoding: str) -> None:
    h, w = rgb.shape[:2]
    order = {"rgb8": [0, 1, 2], "bgr8": [2, 1, 0], "rgba8": [0, 1, 2, 3], "bgra8": [2, 1, 0, 3]}[encoding]
    rgba = np.concatenate([rgb, np.full((h, w, 1), 255, np.uint8)], axis=2)
    pixels = rgba[:, :, order]
    row = w * pixels.shape[2]
    padded = np.zeros((h, row + 7), np.uint8)  # step > width * channels
    padded[:, :row] = pixels.reshape(h, row)
    out = decode_image(encoding, h, w, row + 7, padded.tobytes())
    assert out.dtype == np.uint8 and out.shape == (h, w, 3) and out.flags.c_contiguous
    assert np.array_equal(out, rgb)


def test_mono8_and_mono16(rgb: np.ndarray) -> None:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    assert np.array_equal(decode_image("mono8", h, w, w, array.array("B", gray.tobytes())), np.stack([gray] * 3, -1))
    wide = gray.astype(np.uint16) * 257
    for big in (0, 1):
        data = wide.astype(">u2" if big else "<u2").tobytes()
        out = decode_image("mono16", h, w, 2 * w, data, is_bigendian=big)
        assert np.array_equal(out[:, :, 0], gray)


def test_raw_errors(rgb: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    data = rgb.tobytes()
    with pytest.raises(ImageDecodeError, match="unsupported image encoding '16UC1'.*depth"):
        decode_image("16UC1", h, w, 2 * w, data)
    with pytest.raises(ImageDecodeError, match="unsupported image encoding 'bayer_rggb8'"):
        decode_image("bayer_rggb8", h, w, w, data)
    with pytest.raises(ImageDecodeError, match="step 100 is smaller than width\\*channels"):
        decode_image("rgb8", h, w, 100, data)
    with pytest.raises(ImageDecodeError, match=f"has {len(data) - 1} bytes, expected at least step\\*height"):
        decode_image("rgb8", h, w, 3 * w, data[:-1])
    with pytest.raises(ImageDecodeError, match="zero size: 0x120"):
        decode_image("rgb8", h, 0, 0, b"")


def test_compressed_jpeg_png_and_corruption(rgb: np.ndarray) -> None:
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    png = cv2.imencode(".png", bgr)[1]
    assert np.array_equal(decode_compressed("bgr8; png compressed bgr8", png), rgb)
    jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1]
    out = decode_compressed("jpeg", jpeg.tobytes())
    assert out.shape == rgb.shape and np.abs(out.astype(int) - rgb).mean() < 3
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_compressed("jpeg", jpeg[: jpeg.size // 2])
    with pytest.raises(ImageDecodeError, match="does not start with the JPEG marker"):
        decode_compressed("jpeg", b"not an image at all")
    with pytest.raises(ImageDecodeError, match="corrupt PNG"):
        decode_compressed("png", jpeg)
    damaged = png.copy()
    damaged[60:] = 7
    with pytest.raises(ImageDecodeError, match="corrupt PNG"):
        decode_compressed("png", damaged)
    with pytest.raises(ImageDecodeError, match="no data"):
        decode_compressed("jpeg", b"")
    with pytest.raises(ImageDecodeError, match="unsupported compressed image format 'theora'"):
        decode_compressed("theora", jpeg)
    with pytest.raises(ImageDecodeError, match="compressed depth"):
        decode_compressed("16UC1; compressedDepth png", png)


def test_message_dispatch_rosbags_and_plain(rgb: np.ndarray) -> None:
    from rosbags.typesys import Stores, get_typestore

    types = get_typestore(Stores.ROS2_KILTED).types
    h, w = rgb.shape[:2]
    header = types["std_msgs/msg/Header"](stamp=types["builtin_interfaces/msg/Time"](sec=1, nanosec=2), frame_id="c")
    raw = types["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                                         step=3 * w, data=rgb.reshape(-1))
    assert np.array_equal(decode_image_msg(raw), rgb)
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1]
    assert np.array_equal(decode_image_msg(SimpleNamespace(format="png", data=png.tobytes())), rgb)
    with pytest.raises(ImageDecodeError, match="neither a sensor_msgs/Image nor"):
        decode_image_msg(SimpleNamespace(data=b""))


def test_rclpy_messages(rgb: np.ndarray) -> None:
    msgs = pytest.importorskip("sensor_msgs.msg")
    h, w = rgb.shape[:2]
    raw = msgs.Image(height=h, width=w, encoding="bgr8", step=3 * w, data=rgb[:, :, ::-1].tobytes())
    assert np.array_equal(decode_image_msg(raw), rgb)
    png = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    assert np.array_equal(decode_image_msg(msgs.CompressedImage(format="png", data=png)), rgb)
