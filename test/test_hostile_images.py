"""Hostile and broken camera payloads: every input decodes to RGB uint8 or raises ImageDecodeError, never anything
else, and no payload makes the decoder allocate more than the pixel limit (sizes are read from the header first)."""
from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from dsformer_ros.inference.image_codec import (
    MAX_PIXELS,
    RAW_ENCODINGS,
    ImageDecodeError,
    check_compressed,
    compressed_size,
    decode_compressed,
    decode_image,
)
from dsformer_ros.inference.preprocess import ImageError, read_image

FUZZ = settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL_LIMIT = 10_000  # pixels: the 60 x 80 test image fits, any larger claim must be refused from the header


def _scene(height: int = 60, width: int = 80) -> np.ndarray:
    """A textured RGB image (gradients and a checkerboard), so JPEG and PNG keep real structure."""
    y, x = np.mgrid[0:height, 0:width]
    checker = (((y // 8) + (x // 8)) % 2) * 120
    return np.stack([(x * 3) % 256, (y * 4) % 256, checker + 60], axis=-1).astype(np.uint8)


def _encode(ext: str, rgb: np.ndarray, *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))
    assert ok
    return buf.tobytes()


RGB = _scene()
JPEG = _encode(".jpg", RGB, cv2.IMWRITE_JPEG_QUALITY, 90)
PROGRESSIVE = _encode(".jpg", RGB, cv2.IMWRITE_JPEG_PROGRESSIVE, 1)
PNG = _encode(".png", RGB)


def _with_jpeg_size(data: bytes, width: int, height: int) -> bytes:
    """`data` with the frame header (SOF0/SOF2) patched to claim width x height."""
    buf = bytearray(data)
    for marker in (b"\xff\xc0", b"\xff\xc2"):
        at = buf.find(marker)
        if at >= 0:
            buf[at + 5 : at + 7] = height.to_bytes(2, "big")
            buf[at + 7 : at + 9] = width.to_bytes(2, "big")
            return bytes(buf)
    raise AssertionError("no SOF marker")


def _with_png_size(data: bytes, width: int, height: int) -> bytes:
    buf = bytearray(data)
    buf[16:20] = width.to_bytes(4, "big")
    buf[24 - 4 : 24] = height.to_bytes(4, "big")
    return bytes(buf)


def _accepts_or_refuses(decode) -> np.ndarray | None:
    """Run a decode: an RGB image or None for ImageDecodeError; any other exception fails the test."""
    try:
        out = decode()
    except ImageDecodeError as exc:
        text = str(exc)
        kind = "pixel limit" if "above the limit" in text else "zero size" if "zero size" in text else text.split()[:2]
        event(f"refused: {' '.join(kind) if isinstance(kind, list) else kind}")
        return None
    event("decoded")
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    return out


def test_header_sizes_are_read_without_decoding() -> None:
    assert compressed_size("jpeg", JPEG) == (80, 60)
    assert compressed_size("jpeg", PROGRESSIVE) == (80, 60)
    assert compressed_size("png", PNG) == (80, 60)


@pytest.mark.parametrize("side", [23170, 40000, 65535])
def test_small_jpeg_claiming_a_huge_image_is_refused_before_decoding(side: int) -> None:
    bomb = _with_jpeg_size(JPEG, side, side)
    started = time.perf_counter()
    expected = f"{side}x{side} = {side * side} pixels, above the limit of {MAX_PIXELS}"
    with pytest.raises(ImageDecodeError, match=expected):
        decode_compressed("jpeg", bomb)
    assert time.perf_counter() - started < 0.5  # refused from the header: no 3 GB allocation, no 8 s stall


def test_png_claiming_a_huge_image_is_refused_before_decoding() -> None:
    with pytest.raises(ImageDecodeError, match="40000x40000 = 1600000000 pixels, above the limit"):
        decode_compressed("png", _with_png_size(PNG, 40000, 40000))


def test_the_pixel_limit_is_configurable_and_covers_raw_images() -> None:
    assert decode_compressed("jpeg", JPEG, max_pixels=80 * 60).shape == (60, 80, 3)
    with pytest.raises(ImageDecodeError, match="80x60 = 4800 pixels, above the limit of 4799"):
        decode_compressed("jpeg", JPEG, max_pixels=4799)
    with pytest.raises(ImageDecodeError, match="above the limit of 4799"):
        decode_image("rgb8", 60, 80, 240, RGB.tobytes(), max_pixels=4799)
    with pytest.raises(ImageDecodeError, match="above the limit"):  # the check every decoder runs first
        check_compressed("jpeg", _with_jpeg_size(JPEG, 9000, 9000))


def test_read_image_refuses_a_bomb_file_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "bomb.jpg"
    path.write_bytes(_with_jpeg_size(JPEG, 40000, 40000))
    with pytest.raises(ImageError, match=f"image {path} cannot be decoded: JPEG image is 40000x40000"):
        read_image(path)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ImageError, match="not a JPEG or PNG file"):
        read_image(tmp_path / "text.jpg")


@FUZZ
@given(trailer=st.binary(min_size=1, max_size=4096), progressive=st.booleans())
def test_jpeg_with_bytes_after_the_end_marker_is_accepted(trailer: bytes, progressive: bool) -> None:
    """Cameras append metadata after the end-of-image marker; the image is the same with or without it."""
    base = PROGRESSIVE if progressive else JPEG
    expected = decode_compressed("jpeg", base)
    assert np.array_equal(decode_compressed("jpeg", base + trailer), expected)


@pytest.mark.parametrize("cut", [2, 20, len(JPEG) // 2, len(JPEG) - 2])
def test_truncated_jpeg_is_refused(cut: int) -> None:
    with pytest.raises(ImageDecodeError, match="corrupt JPEG"):
        decode_compressed("jpeg", JPEG[:cut])


@FUZZ
@given(width=st.integers(0, 65535), height=st.integers(0, 65535), kind=st.sampled_from(["jpeg", "progressive", "png"]))
def test_any_claimed_size_above_the_limit_is_refused_from_the_header(width: int, height: int, kind: str) -> None:
    if kind == "png":
        data = _with_png_size(PNG, width, height)
    else:
        data = _with_jpeg_size(PROGRESSIVE if kind == "progressive" else JPEG, width, height)
    fmt = "png" if kind == "png" else "jpeg"
    if width == 0 or height == 0:
        with pytest.raises(ImageDecodeError, match="zero size"):
            decode_compressed(fmt, data, max_pixels=SMALL_LIMIT)
    elif width * height > SMALL_LIMIT:
        with pytest.raises(ImageDecodeError, match="above the limit"):
            decode_compressed(fmt, data, max_pixels=SMALL_LIMIT)
    else:
        out = _accepts_or_refuses(lambda: decode_compressed(fmt, data, max_pixels=SMALL_LIMIT))
        assert out is None or out.shape[0] * out.shape[1] <= SMALL_LIMIT


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("cut"), st.integers(0, 1 << 20), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.integers(0, 255)),
    st.tuples(st.just("delete"), st.integers(0, 1 << 20), st.integers(1, 64)),
)


def _mutate(data: bytes, mutations: list[tuple[str, int, int]]) -> bytes:
    buf = bytearray(data)
    for kind, at, value in mutations:
        if not buf:
            break
        at %= len(buf)
        if kind == "flip":
            buf[at] ^= value
        elif kind == "cut":
            del buf[at:]
        elif kind == "insert":
            buf.insert(at, value)
        else:
            del buf[at : at + value]
    return bytes(buf)


@FUZZ
@given(
    base=st.sampled_from(["jpeg", "progressive", "png"]),
    fmt=st.sampled_from(["jpeg", "png", "bgr8; jpeg compressed bgr8", "rgb8; png compressed rgb8", "JPG"]),
    mutations=st.lists(_mutation, min_size=1, max_size=6),
)
def test_mutated_compressed_payloads_decode_or_raise_image_decode_error(base: str, fmt: str, mutations) -> None:
    data = _mutate({"jpeg": JPEG, "progressive": PROGRESSIVE, "png": PNG}[base], mutations)
    out = _accepts_or_refuses(lambda: decode_compressed(fmt, data, max_pixels=SMALL_LIMIT))
    assert out is None or out.shape[0] * out.shape[1] <= SMALL_LIMIT


@FUZZ
@given(fmt=st.one_of(st.sampled_from(["jpeg", "png", "rgb8; jpeg compressed bgr8"]), st.text(max_size=30)),
       data=st.one_of(st.binary(max_size=512), st.binary(max_size=512).map(lambda b: b"\xff\xd8\xff" + b),
                      st.binary(max_size=512).map(lambda b: b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + b)))
def test_random_compressed_messages_raise_image_decode_error(fmt: str, data: bytes) -> None:
    assert _accepts_or_refuses(lambda: decode_compressed(fmt, data, max_pixels=SMALL_LIMIT)) is None


@FUZZ
@given(
    encoding=st.one_of(st.sampled_from(sorted(RAW_ENCODINGS) + ["16UC1", "bayer_rggb8", "yuv422"]),
                       st.text(max_size=8)),
    height=st.integers(-5, 1 << 40),
    width=st.integers(-5, 1 << 40),
    step=st.integers(-5, 1 << 40),
    data=st.one_of(st.binary(max_size=2048), st.lists(st.integers(0, 255), max_size=64)),
    big=st.integers(0, 1),
)
def test_raw_image_fields_decode_or_raise_image_decode_error(encoding, height, width, step, data, big) -> None:
    out = _accepts_or_refuses(lambda: decode_image(encoding, height, width, step, data, big, max_pixels=SMALL_LIMIT))
    assert out is None or out.shape[:2] == (height, width)


@FUZZ
@given(channels=st.sampled_from(sorted(RAW_ENCODINGS)), height=st.integers(1, 12), width=st.integers(1, 12),
       pad=st.integers(0, 9), extra=st.integers(0, 9))
def test_consistent_raw_images_always_decode(channels: str, height: int, width: int, pad: int, extra: int) -> None:
    n, depth, _ = RAW_ENCODINGS[channels]
    step = width * n * depth + pad
    data = np.random.default_rng(height * 100 + width).integers(0, 256, step * height + extra, dtype=np.uint8)
    assert decode_image(channels, height, width, step, data.tobytes()).shape == (height, width, 3)
