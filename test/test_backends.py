"""ONNX export and the descriptor backends: ONNX Runtime computes what PyTorch computes, provenance travels, errors are clear.

Models have random non-zero iRPE tables, position embeddings (and DINOv2 LayerScale gammas), small transformers
and are exported at a non-square size other than their native one, so the in-graph position-embedding resizing and
the iRPE bucket tables of a rectangular grid are both exercised.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dsformer_ros.common.cpus import physical_cores
from dsformer_ros.inference.backends import BackendError, load_backend
from dsformer_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend, session_options
from dsformer_ros.inference.export import check_exportable, export_onnx
from dsformer_ros.inference.extractor import DescriptorExtractor
from dsformer_ros.inference.onnx_metadata import ExportError
from dsformer_ros.inference.preprocess import PreprocessConfig
from dsformer_ros.model.checkpoint import save_checkpoint
from dsformer_ros.model.dsformer import build_model, preset
from dsformer_ros.model.loading import load_model

pytestmark = pytest.mark.slow  # ONNX exports of every variant (make test-fast leaves them out)

pytest.importorskip("onnxruntime")
REPO = Path(__file__).resolve().parents[1]

# variant -> (native image size of the small test config, non-square export size)
SIZES = {
    "resnet50": ((64, 64), (64, 96)),
    "efficientnet_lite0": ((96, 96), (96, 128)),
    "dinov2": ((42, 56), (56, 84)),
}


def _random_model(variant: str, seed: int = 0) -> torch.nn.Module:
    config = dataclasses.replace(preset(variant), image_size=SIZES[variant][0], embed_dim=64, num_heads=2,
                                 num_layers=1, descriptor_dim=32)
    torch.manual_seed(seed)
    model = build_model(config).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lookup_table_weight" in name or "pos_embed" in name:
                param.copy_(torch.randn(param.shape, generator=g) * 0.5)
            elif name.endswith(("ls1.gamma", "ls2.gamma")):
                param.copy_(0.2 + 0.3 * torch.rand(param.shape, generator=g))
    model.checkpoint_sha256 = f"{seed:064x}"
    model.provenance = {"source": "test_backends"}
    return model


@pytest.mark.parametrize("variant", list(SIZES))
def test_onnxruntime_equals_torch(variant, tmp_path):
    model = _random_model(variant)
    size = SIZES[variant][1]
    info = export_onnx(model, tmp_path / "m.onnx", size, exporter="legacy", verify=False)
    backend = OnnxRuntimeBackend(tmp_path / "m.onnx", threads=1)
    assert backend.input_size == size and info.input_size == size
    x = torch.randn(3, 3, *size, generator=torch.Generator().manual_seed(7))
    with torch.inference_mode():
        expected = model(x)
    for batch in (x, x[:1]):  # the batch dimension is dynamic
        got = backend.forward(batch)
        assert got.shape == (batch.shape[0], 32)
        assert (got - expected[: batch.shape[0]]).abs().max().item() <= 1e-5


def test_dynamo_export_carries_the_provenance(tmp_path):
    """The default exporter; the metadata says variant, dim, input size, normalisation and the checkpoint hash."""
    import onnx

    model = _random_model("efficientnet_lite0", seed=3)
    export_onnx(model, tmp_path / "lite.onnx", (96, 128))
    props = {p.key: json.loads(p.value) for p in onnx.load(str(tmp_path / "lite.onnx")).metadata_props}
    assert props["dsformer.variant"] == "efficientnet_lite0" and props["dsformer.descriptor_dim"] == 32
    assert props["dsformer.input_size"] == [96, 128]
    assert props["dsformer.checkpoint_sha256"] == model.checkpoint_sha256
    assert props["dsformer.mean"] == list(model.config.mean) and props["dsformer.std"] == list(model.config.std)
    assert props["dsformer.preprocessing"]["size"] == [96, 128]
    assert props["dsformer.provenance"]["exporter"] == "dynamo" and props["dsformer.provenance"]["opset"] == 18
    backend = load_backend("onnxruntime", tmp_path / "lite.onnx", threads=1)
    assert backend.config == model.config and backend.checkpoint_sha256 == model.checkpoint_sha256
    x = torch.randn(2, 3, 96, 128)
    with torch.inference_mode():
        assert (backend.forward(x) - model(x)).abs().max().item() <= 1e-5
    assert not [p for p in tmp_path.iterdir() if p.name != "lite.onnx"], "no temporary files are left"


def test_extractor_on_onnxruntime_matches_torch_on_images(tmp_path):
    """Same descriptors from uint8 images through either backend; a size the export cannot take is refused."""
    model = _random_model("efficientnet_lite0", seed=5)
    export_onnx(model, tmp_path / "lite.onnx", exporter="legacy", verify=False)
    onnx_extractor = DescriptorExtractor(load_backend("onnxruntime", tmp_path / "lite.onnx", threads=1))
    torch_extractor = DescriptorExtractor(model)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) for _ in range(3)]
    np.testing.assert_allclose(onnx_extractor.describe(images), torch_extractor.describe(images), atol=1e-5)
    assert onnx_extractor.fingerprint == torch_extractor.fingerprint and onnx_extractor.config == model.config
    with pytest.raises(BackendError, match=r"gives 64x64 images but this onnxruntime model takes only 96x96.*"
                                           r"--image-size 64 64"):
        DescriptorExtractor(onnx_extractor.backend, PreprocessConfig(size=(64, 64)))
    short_side = DescriptorExtractor(onnx_extractor.backend, PreprocessConfig("short_side", short_side=96))
    with pytest.raises(BackendError, match="gives 96x128 images"):
        short_side.describe(images)


def test_onnxruntime_threads_and_wait_policy_are_deliberate():
    options = session_options()
    assert options.intra_op_num_threads == physical_cores()
    assert options.inter_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert session_options(threads=1, spinning=True).get_session_config_entry("session.intra_op.allow_spinning") == "1"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def test_export_cli_refuses_a_truncated_checkpoint_and_writes_nothing(tmp_path):
    model = load_model(variant="efficientnet_lite0", device="cpu", seed=2)
    save_checkpoint(tmp_path / "lite.pt", model)
    data = (tmp_path / "lite.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    result = _cli("export", "--checkpoint", str(tmp_path / "cut.pt"), "--format", "onnx", "--out",
                  str(tmp_path / "cut.onnx"))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsformer-vpr export: error: checkpoint "), result.stderr
    assert "truncated, corrupt or not a PyTorch file" in lines[0]
    result = _cli("export", "--checkpoint", str(tmp_path / "lite.pt"), "--format", "onnx", "--image-size", "16", "24",
                  "--out", str(tmp_path / "small.onnx"))
    assert result.returncode == 2 and "needs at least 32 pixels a side" in result.stderr, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.pt", "lite.pt"]


def test_sizes_that_cannot_be_exported_are_named():
    dino = _random_model("dinov2")
    with pytest.raises(ExportError, match="DINOv2 needs multiples of 14"):
        check_exportable(dino, (56, 80))
    resnet = _random_model("resnet50")
    with pytest.raises(ExportError, match="protobuf's 2 GiB limit"):
        check_exportable(resnet, (3200, 3200))
    check_exportable(resnet, (320, 480))


def test_backend_errors_say_what_to_do(tmp_path):
    model = _random_model("efficientnet_lite0")
    export_onnx(model, tmp_path / "lite.onnx", exporter="legacy", verify=False)
    with pytest.raises(BackendError, match="export it first with dsformer-vpr export --checkpoint"):
        load_backend("onnxruntime", tmp_path / "lite.pt")
    with pytest.raises(BackendError, match="is an ONNX model: run it with backend onnxruntime or tensorrt"):
        load_backend("torch", tmp_path / "lite.onnx")
    with pytest.raises(BackendError, match="runs on the CPU, not 'cuda'"):
        load_backend("onnxruntime", tmp_path / "lite.onnx", device="cuda")
    with pytest.raises(BackendError, match="runs fp32 on the CPU, not bf16"):
        load_backend("onnxruntime", tmp_path / "lite.onnx", precision="bf16")
    with pytest.raises(BackendError, match="'openvino' is not one of torch, onnxruntime, tensorrt"):
        load_backend("openvino", tmp_path / "lite.onnx")
    data = (tmp_path / "lite.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    with pytest.raises(BackendError, match="cannot be loaded"):
        load_backend("onnxruntime", tmp_path / "cut.onnx")
    import onnx

    proto = onnx.load(str(tmp_path / "lite.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(ExportError, match="not a DSFormer export"):
        load_backend("onnxruntime", tmp_path / "foreign.onnx")


def test_tensorrt_without_its_package_or_gpu_is_a_clear_error(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="needs the tensorrt package.*requirements-gpu.txt"):
            load_backend("tensorrt", tmp_path / "any.onnx")
        return
    if not torch.cuda.is_available():
        from dsformer_ros.common.devices import DeviceError

        with pytest.raises(DeviceError, match="CUDA is not available"):
            load_backend("tensorrt", tmp_path / "any.onnx")


def test_int8_export_keeps_descriptors_and_recall_on_real_images(tmp_path, corridor):
    """ONNX Runtime dynamic int8 (MatMul/Gemm weights): cosine >= 0.999 to fp32, Recall@1 within one point."""
    import csv

    model = load_model(variant="efficientnet_lite0", device="cpu", seed=0)
    export_onnx(model, tmp_path / "fp32.onnx", exporter="legacy", verify=False)
    info = export_onnx(model, tmp_path / "int8.onnx", exporter="legacy", quantize="int8")
    assert info.quantization == "int8"
    refs = sorted((corridor / "ref").glob("*.jpg"))[::2]
    queries = sorted((corridor / "query").glob("*.jpg"))[::2]
    with open(corridor / "ground_truth.csv") as fh:
        truth = {int(r["query_index"]): {int(x) for x in r["correct_ref_indices"].split()} for r in csv.DictReader(fh)}
    recall, descriptors = {}, {}
    for name in ("fp32", "int8"):
        backend = load_backend("onnxruntime", tmp_path / f"{name}.onnx", threads=1)
        assert backend.precision == name and backend.checkpoint_sha256 == model.checkpoint_sha256
        extractor = DescriptorExtractor(backend, batch_size=8)
        ref, query = extractor.describe_paths(refs), extractor.describe_paths(queries)
        best = (query @ ref.T).argmax(axis=1)
        recall[name] = np.mean([int(refs[b].stem) in truth[int(q.stem)] for q, b in zip(queries, best)])
        descriptors[name] = query
    assert np.sum(descriptors["fp32"] * descriptors["int8"], axis=1).min() >= 0.999
    assert recall["fp32"] - recall["int8"] <= 0.01, recall
