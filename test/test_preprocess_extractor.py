"""Preprocessing of camera arrays and the batched extractor on real images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import dsformer_ros
from dsformer_ros.inference.preprocess import ImageError, PreprocessConfig, as_rgb_uint8, preprocess, read_image


def test_bgr_and_rgb_give_the_same_tensor():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    cfg = PreprocessConfig(size=(32, 32))
    a = preprocess([rgb], cfg)
    b = preprocess([np.ascontiguousarray(rgb[:, :, ::-1])], cfg, bgr=True)
    assert torch.equal(a, b)
    assert a.shape == (1, 3, 32, 32)


def test_normalisation_values():
    cfg = PreprocessConfig(size=(2, 2), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    image = np.full((2, 2, 3), 255, dtype=np.uint8)
    assert torch.allclose(preprocess([image], cfg), torch.full((1, 3, 2, 2), 2.0))


def test_short_side_policy_keeps_aspect():
    cfg = PreprocessConfig(resize="short_side", short_side=224, multiple=14)
    assert cfg.output_size(480, 640) == (224, 294)
    assert cfg.output_size(640, 480) == (294, 224)
    tensor = preprocess([np.zeros((480, 640, 3), np.uint8)], cfg)
    assert tensor.shape == (1, 3, 224, 294)


def test_mono_and_rgba_inputs():
    assert as_rgb_uint8(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0] = 255
    assert as_rgb_uint8(bgra, bgr=True)[0, 0].tolist() == [0, 0, 255]


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.zeros((4, 5, 3), np.float32), "uint8"),
        (np.zeros((4, 5, 2), np.uint8), "shape"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
        ([[1, 2]], "numpy array"),
    ],
)
def test_bad_images_are_named(bad, message):
    with pytest.raises(ImageError, match=message):
        as_rgb_uint8(bad)


def test_read_image_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_image(tmp_path / "none.jpg")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ImageError, match="cannot be decoded"):
        read_image(broken)


def test_extractor_on_real_images(traversals):
    model = dsformer_ros.load_model(variant="efficientnet_lite0", device="cpu")
    extractor = dsformer_ros.DescriptorExtractor(model, batch_size=4)
    paths = sorted((traversals / "ref").glob("*.jpg"))[:6]
    by_path = extractor.describe_paths(paths)
    images = [read_image(p) for p in paths]
    one_by_one = np.concatenate([extractor.describe([im]) for im in images])
    assert by_path.dtype == np.float32 and by_path.shape == (6, 256)
    assert np.allclose(np.linalg.norm(by_path, axis=1), 1.0, atol=1e-5)
    assert np.allclose(by_path, one_by_one, atol=1e-5)
    # neighbouring frames of a traversal are more alike than distant ones
    sims = by_path @ by_path.T
    assert sims[0, 1] > sims[0, 5]
    # mixed sizes are batched by output size but stay in input order
    mixed = extractor.describe([images[0], np.zeros((100, 300, 3), np.uint8), images[1]])
    assert np.allclose(mixed[[0, 2]], by_path[:2], atol=1e-5)


def test_bf16_autocast_stays_close_to_fp32(traversals):
    model = dsformer_ros.load_model(variant="efficientnet_lite0", device="cpu")
    paths = sorted((traversals / "query").glob("*.jpg"))[:3]
    fp32 = dsformer_ros.DescriptorExtractor(model).describe_paths(paths)
    bf16 = dsformer_ros.DescriptorExtractor(model, precision="bf16", channels_last=True).describe_paths(paths)
    assert np.all(np.sum(fp32 * bf16, axis=1) > 0.99)


def test_cuda_request_is_honoured_or_refused():
    from dsformer_ros.common.devices import DeviceError

    if torch.cuda.is_available():
        assert dsformer_ros.resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(DeviceError, match="CUDA is not available"):
            dsformer_ros.resolve_device("cuda")
    assert dsformer_ros.resolve_device("cpu").type == "cpu"


def test_describe_cli_writes_descriptors(traversals, tmp_path):
    from dsformer_ros.model.checkpoint import save_checkpoint
    from training.cli import main

    model = dsformer_ros.load_model(variant="efficientnet_lite0", device="cpu", seed=5)
    ckpt = tmp_path / "lite.pt"
    save_checkpoint(ckpt, model)
    paths = [str(p) for p in sorted((traversals / "ref").glob("*.jpg"))[:3]]
    out = tmp_path / "d.npy"
    assert main(["describe", "--checkpoint", str(ckpt), *paths, "--out", str(out), "--device", "cpu"]) == 0
    written = np.load(out, allow_pickle=False)
    expected = dsformer_ros.DescriptorExtractor(model).describe_paths(paths)
    assert written.shape == (3, 256) and np.allclose(written, expected, atol=1e-5)
