"""Descriptor backends behind one interface: `torch` (a checkpoint), `onnxruntime` (CPU) and `tensorrt` (CUDA).

The ONNX backends run a model written by `dsformer-vpr export`; its metadata carries the source checkpoint's
SHA-256, so maps match it as they match the checkpoint. A backend whose package is missing is an error naming what
to install; nothing falls back to another backend.
"""
from __future__ import annotations

from pathlib import Path

from dsformer_ros.inference.backends.base import BACKENDS, BackendError, DescriptorBackend

__all__ = ["BACKENDS", "BackendError", "DescriptorBackend", "check_backend_name", "load_backend"]


def check_backend_name(name: str) -> None:
    """Raise BackendError unless `name` is one of BACKENDS."""
    if name not in BACKENDS:
        raise BackendError(f"backend: {name!r} is not one of {', '.join(BACKENDS)}")


def load_backend(
    backend: str,
    checkpoint: str | Path,
    device: str = "auto",
    precision: str = "fp32",
    threads: int = 0,
    spinning: bool = False,
    engine_cache_dir: str | Path = "",
    batch_size: int = 1,
) -> DescriptorBackend:
    """The model in `checkpoint` (a PyTorch checkpoint for torch, an exported .onnx otherwise) on its backend.

    threads/spinning: ONNX Runtime's intra-op threads (0: physical cores) and wait policy. engine_cache_dir and
    batch_size: where TensorRT engines are cached and the batch size they are tuned for.
    """
    check_backend_name(backend)
    checkpoint = Path(checkpoint)
    is_onnx = checkpoint.suffix.lower() == ".onnx"
    if backend == "torch":
        if is_onnx:
            raise BackendError(f"{checkpoint} is an ONNX model: run it with backend onnxruntime or tensorrt")
        from dsformer_ros.inference.backends.torch_backend import TorchBackend
        from dsformer_ros.model.loading import load_model

        return TorchBackend(load_model(checkpoint, device=device), precision)
    if not is_onnx:
        raise BackendError(
            f"backend {backend} runs an exported ONNX model, not {checkpoint}: export it first with "
            f"dsformer-vpr export --checkpoint {checkpoint} --format onnx --out {checkpoint.with_suffix('.onnx')}"
        )
    if backend == "onnxruntime":
        if device not in ("auto", "cpu"):
            raise BackendError(f"backend onnxruntime runs on the CPU, not {device!r} (use tensorrt on a GPU)")
        if precision != "fp32":
            raise BackendError(f"backend onnxruntime runs fp32 on the CPU, not {precision}")
        from dsformer_ros.inference.backends.onnxruntime_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(checkpoint, threads, spinning)
    from dsformer_ros.inference.backends.tensorrt_backend import TensorRTBackend

    return TensorRTBackend(checkpoint, device, precision, engine_cache_dir, opt_batch=batch_size,
                           max_batch=max(64, batch_size))
