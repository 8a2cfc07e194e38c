"""The node's decoder choice: built-in by default; the checks every decoder runs are the built-in decoder's own;
messages in foreign byte order are put into host order before cv_bridge (numpy 2 has no ndarray.newbyteorder).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest

sensor_msgs = pytest.importorskip("sensor_msgs.msg")

from dsformer_ros.inference.image_codec import (  # noqa: E402
    ImageDecodeError,
    check_compressed,
    check_raw_image,
    decode_image_msg,
)
from dsformer_ros.ros.frame_decoder import (  # noqa: E402
    HOST_IS_BIGENDIAN,
    cv_bridge_available,
    in_host_byte_order,
    make_decoder,
)
from dsformer_ros.ros.parameters import NodeSettings  # noqa: E402

Image, CompressedImage = sensor_msgs.Image, sensor_msgs.CompressedImage
RGB = np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)


def raw(encoding: str = "rgb8", step: int | None = None, data: bytes | None = None, **fields) -> Image:
    """An Image message of RGB (or explicitly given fields)."""
    height, width = fields.pop("height", RGB.shape[0]), fields.pop("width", RGB.shape[1])
    return Image(height=height, width=width, encoding=encoding, step=width * 3 if step is None else step,
                 data=RGB.tobytes() if data is None else data, **fields)


def test_the_builtin_decoder_is_the_default():
    assert NodeSettings().image_decoder == "builtin"
    decode, name = make_decoder(NodeSettings().image_decoder, compressed=False)
    assert name == "builtin" and decode.func is decode_image_msg  # bound to the node's max_image_pixels
    with pytest.raises(ValueError, match="image_decoder must be one of builtin, cv_bridge, got 'auto'"):
        make_decoder("auto", compressed=False)


@pytest.mark.skipif(cv_bridge_available(), reason="cv_bridge is installed here")
def test_cv_bridge_without_cv_bridge_is_a_clear_error():
    with pytest.raises(ValueError, match="cv_bridge is not installed"):
        make_decoder("cv_bridge", compressed=True)


def test_every_decoder_refuses_what_the_builtin_decoder_refuses_with_the_same_message():
    """The pre-conversion checks (run by cv_bridge too) reject each malformed message exactly as decoding does."""
    jpeg = cv2.imencode(".jpg", RGB)[1].tobytes()
    png = cv2.imencode(".png", RGB)[1].tobytes()
    bad_raw = {
        "encoding": raw("yuv422", step=32),
        "depth": raw("16UC1", step=32),
        "step": raw(step=47),
        "truncated": raw(data=RGB.tobytes()[:100]),
        "zero size": raw(height=0, width=0, step=0, data=b""),
    }
    for case, msg in bad_raw.items():
        with pytest.raises(ImageDecodeError) as decoded:
            decode_image_msg(msg)
        with pytest.raises(ImageDecodeError) as checked:
            check_raw_image(msg.encoding, msg.height, msg.width, msg.step, msg.data)
        assert str(checked.value) == str(decoded.value), case
    bad_compressed = {
        "format": CompressedImage(format="bmp", data=png),
        "depth": CompressedImage(format="16UC1; compressedDepth png", data=png),
        "empty": CompressedImage(format="jpeg", data=b""),
        "not a jpeg": CompressedImage(format="jpeg", data=png),
        "truncated jpeg": CompressedImage(format="jpeg", data=jpeg[: len(jpeg) // 2]),
        "not a png": CompressedImage(format="png", data=jpeg),
    }
    for case, msg in bad_compressed.items():
        with pytest.raises(ImageDecodeError) as decoded:
            decode_image_msg(msg)
        with pytest.raises(ImageDecodeError) as checked:
            check_compressed(msg.format, msg.data)
        assert str(checked.value) == str(decoded.value), case
    for msg in (raw(), raw("bgr8"), raw(step=50, data=np.zeros(12 * 50, np.uint8).tobytes())):
        check_raw_image(msg.encoding, msg.height, msg.width, msg.step, msg.data)
    assert check_compressed("jpeg", jpeg)[0] == "jpeg" and check_compressed("png", png)[0] == "png"


def test_foreign_byte_order_is_converted_to_host_order_with_the_same_pixels():
    """mono16 in the other byte order: swapped samples, host-order flag, identical decoded image; 8-bit: flag only."""
    samples = np.random.default_rng(5).integers(0, 65536, (6, 10), dtype=np.uint16)
    foreign = ">u2" if not HOST_IS_BIGENDIAN else "<u2"
    padded = np.zeros((6, 23), np.uint8)  # odd step: 3 bytes of padding per row
    padded[:, :20] = np.frombuffer(samples.astype(foreign).tobytes(), np.uint8).reshape(6, 20)
    msg = Image(height=6, width=10, encoding="mono16", is_bigendian=1 - HOST_IS_BIGENDIAN, step=23,
                data=padded.tobytes())
    native = in_host_byte_order(msg)
    assert native.is_bigendian == HOST_IS_BIGENDIAN and native.header == msg.header
    rows = np.frombuffer(bytes(native.data), np.uint8).reshape(6, 23)
    np.testing.assert_array_equal(np.ascontiguousarray(rows[:, :20]).view("=u2"), samples)
    np.testing.assert_array_equal(decode_image_msg(native), decode_image_msg(msg))

    rgb_foreign = raw(is_bigendian=1 - HOST_IS_BIGENDIAN)
    rgb_native = in_host_byte_order(rgb_foreign)
    assert rgb_native.is_bigendian == HOST_IS_BIGENDIAN and bytes(rgb_native.data) == RGB.tobytes()
    already = raw(is_bigendian=HOST_IS_BIGENDIAN)
    assert in_host_byte_order(already) is already
