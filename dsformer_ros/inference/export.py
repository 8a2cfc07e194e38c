"""Export a model as one ONNX file for a fixed input size, dynamic batch, provenance in metadata.

Both of torch's exporters work for all three variants with torch 2.14: `dynamo` (torch.export, opset 18, the
supported path and the default) and `legacy` (TorchScript tracing, opset 17, deprecated by torch but about three
times faster to export). The input size is fixed because the iRPE bucket tables and resized position embeddings
depend on the token grid; the batch dimension is free. The written model is checked against PyTorch with
ONNX Runtime before it replaces the output file (atomically).
"""
from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from dsformer_ros.common.atomic import atomic_write_bytes
from dsformer_ros.inference.onnx_metadata import (
    INPUT_NAME,
    OUTPUT_NAME,
    ExportedModel,
    ExportError,
)
from dsformer_ros.inference.preprocess import PreprocessConfig
from dsformer_ros.model.checkpoint import state_dict_sha256
from dsformer_ros.model.dsformer import DSFormer

log = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "legacy")
DEFAULT_OPSET = {"dynamo": 18, "legacy": 17}
PROTOBUF_LIMIT_BYTES = 2**31 - 1
VERIFY_TOLERANCE = 1e-4
INT8_MIN_COSINE = 0.999


def check_exportable(model: DSFormer, image_size: tuple[int, int]) -> None:
    """Raise ExportError when `image_size` cannot be exported for this model, saying why."""
    config = model.config
    stride = 14 if config.variant == "dinov2" else 32
    height, width = image_size
    if config.variant == "dinov2" and (height % 14 or width % 14):
        raise ExportError(f"image size {height}x{width}: DINOv2 needs multiples of 14 pixels")
    if min(height, width) < stride:
        raise ExportError(
            f"image size {height}x{width}: the {config.variant} backbone needs at least {stride} pixels a side"
        )
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    strides = config.strides
    tokens = [-(-height // s) * -(-width // s) for s in strides]
    # each scale's iRPE (L, L) int64 bucket table and its transpose become graph constants
    tables = sum(2 * 8 * n * n for n in tokens)
    if weights + tables > PROTOBUF_LIMIT_BYTES:
        raise ExportError(
            f"image size {height}x{width}: {max(tokens)} tokens per scale make {tables / 2**30:.1f} GiB of iRPE "
            f"bucket tables; with {weights / 2**30:.1f} GiB of weights the ONNX file would pass protobuf's 2 GiB limit"
        )


def _torch_export(model: DSFormer, example: torch.Tensor, path: Path, exporter: str, opset: int) -> None:
    names = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset)
    with warnings.catch_warnings():
        # shapes become constants on purpose (fixed input size); the legacy exporter's deprecation is documented above
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=4096)
            torch.onnx.export(model, (example,), str(path), dynamo=True, external_data=False,
                              dynamic_shapes={"images": {0: batch}}, **names)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, **names)


def _run_onnx(data: bytes, example: torch.Tensor) -> torch.Tensor:
    from dsformer_ros.inference.backends.onnxruntime_backend import import_onnxruntime

    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: example.numpy()})[0])


def _verify(data: bytes, example: torch.Tensor, expected: torch.Tensor) -> float:
    """Max abs difference between ONNX Runtime on `example` and PyTorch's `expected`; ExportError beyond tolerance."""
    diff = float((_run_onnx(data, example) - expected).abs().max())
    if not diff <= VERIFY_TOLERANCE:
        raise ExportError(f"the exported model differs from PyTorch by {diff:.2e} (tolerance {VERIFY_TOLERANCE})")
    return diff


def _quantize_int8(proto: Any, example: torch.Tensor, expected: torch.Tensor) -> tuple[bytes, float]:
    """Dynamic int8 quantization of the MatMul/Gemm weights; ExportError when cosine to fp32 drops below 0.999."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix="dsformer_quantize_") as tmp:
        quantized = Path(tmp) / "int8.onnx"
        quantize_dynamic(proto, quantized, op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8)
        data = onnx.load(str(quantized)).SerializeToString()
    cosine = float(torch.nn.functional.cosine_similarity(_run_onnx(data, example), expected, dim=1).min())
    if not cosine >= INT8_MIN_COSINE:
        raise ExportError(f"int8 quantization changes the descriptors too much: cosine {cosine:.5f} to fp32 "
                          f"(< {INT8_MIN_COSINE}); export fp32 instead")
    return data, cosine


def export_onnx(
    model: DSFormer,
    out: str | Path,
    image_size: tuple[int, int] | None = None,
    exporter: str = "dynamo",
    opset: int = 0,
    verify: bool = True,
    quantize: str = "",
) -> ExportedModel:
    """Write `model` as ONNX to `out`; returns what the metadata says (checkpoint_sha256 and provenance included)."""
    import onnx

    config = model.config
    image_size = tuple(image_size or config.image_size)
    check_exportable(model, image_size)
    opset = opset or DEFAULT_OPSET[exporter]
    model = model.to("cpu").eval()
    model.set_irpe_impl("fast")
    multiple = 14 if config.variant == "dinov2" else 1
    preprocessing = PreprocessConfig("square", image_size, min(image_size), multiple, tuple(config.mean),
                                     tuple(config.std))
    provenance = {**getattr(model, "provenance", {}), "exporter": exporter, "opset": opset,
                  "torch": torch.__version__, "onnx": onnx.__version__}
    sha = getattr(model, "checkpoint_sha256", "") or state_dict_sha256(model.state_dict())
    info = ExportedModel(config, image_size, sha, preprocessing, provenance, quantize)
    example = torch.randn(2, 3, *image_size, generator=torch.Generator().manual_seed(0))
    # eager first: it also fills the iRPE bucket-table cache with real tensors, which the exporters then embed
    with torch.inference_mode():
        expected = model(example)
    log.info("exporting %s at %dx%d with the %s exporter (opset %d)", config.variant, *image_size, exporter, opset)
    with tempfile.TemporaryDirectory(prefix="dsformer_export_") as tmp:
        raw = Path(tmp) / "model.onnx"
        try:
            _torch_export(model, example, raw, exporter, opset)
        except Exception as exc:  # the exporters raise many types; the first line says what failed
            other = "legacy" if exporter == "dynamo" else "dynamo"
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"the {exporter} exporter failed ({type(exc).__name__}: {first}); try --exporter "
                              f"{other}") from exc
        proto = onnx.load(str(raw))
    if verify:
        log.info("ONNX Runtime agrees with PyTorch to %.1e", _verify(proto.SerializeToString(), example, expected))
    if quantize == "int8":
        data, cosine = _quantize_int8(proto, example, expected)
        proto = onnx.load_from_string(data)
        log.info("int8 (dynamic, MatMul/Gemm weights): lowest cosine to fp32 %.5f", cosine)
    del proto.metadata_props[:]
    for key, value in info.to_props().items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"DSFormer {config.variant} descriptor, checkpoint sha256 {sha}"
    data = proto.SerializeToString()
    atomic_write_bytes(out, data)
    log.info("wrote %s (%.1f MB)", out, len(data) / 1e6)
    return info
