"""CUDA only (skipped elsewhere; scripts/gpu_check.sh runs them): torch on the GPU and the TensorRT backend."""
from __future__ import annotations

import time

import pytest
import torch

from dsformer_ros.inference.backends import load_backend
from training.bench.backends import random_model
from dsformer_ros.inference.export import export_onnx
from dsformer_ros.inference.extractor import DescriptorExtractor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("variant", ["resnet50", "dinov2"])
def test_torch_on_cuda_matches_the_cpu_and_low_precision_stays_close(variant):
    model = random_model(variant, (224, 224))
    x = torch.randn(4, 3, 224, 224)
    with torch.inference_mode():
        cpu = model(x)
        model.cuda()
        gpu = DescriptorExtractor(model).describe_tensor(x).cpu()
        assert (gpu - cpu).abs().max().item() <= 1e-3
        for precision in ("fp16", "bf16"):
            low = DescriptorExtractor(model, precision=precision).describe_tensor(x).cpu()
            assert torch.nn.functional.cosine_similarity(low, cpu).min().item() >= 0.999, precision


@pytest.mark.parametrize("variant", ["resnet50", "dinov2"])
def test_tensorrt_fp16_engine_agrees_and_is_cached(variant, tmp_path):
    pytest.importorskip("tensorrt")
    model = random_model(variant, (224, 224))
    export_onnx(model, tmp_path / "m.onnx", image_size=(224, 224), exporter="legacy")
    x = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        expected = model(x)
    backend = load_backend("tensorrt", tmp_path / "m.onnx", device="cuda", precision="fp16",
                           engine_cache_dir=tmp_path / "engines", batch_size=8)
    assert backend.engine_path.is_file() and torch.cuda.get_device_name().split()[0].lower() in backend.engine_path.name
    got = backend.forward(x.cuda()).cpu()
    assert torch.nn.functional.cosine_similarity(got, expected).min().item() >= 0.999
    started = time.monotonic()
    again = load_backend("tensorrt", tmp_path / "m.onnx", device="cuda", precision="fp16",
                         engine_cache_dir=tmp_path / "engines", batch_size=8)
    assert time.monotonic() - started < 30, "the cached engine is loaded, not rebuilt"
    assert torch.equal(again.forward(x.cuda()).cpu(), got)
    assert len(list((tmp_path / "engines").iterdir())) == 1
