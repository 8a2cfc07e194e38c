"""The TensorRT backend: an exported ONNX model built into a TensorRT engine (fp16 by default), cached on disk.

Why TensorRT's own Python API rather than ONNX Runtime's CUDA/TensorRT execution providers: robots run Jetsons,
where JetPack ships TensorRT and its Python bindings but no onnxruntime-gpu wheel on PyPI; the API needs no second
runtime whose CUDA, cuDNN and TensorRT builds must all match; and engines are explicit files we key and cache
ourselves. Inputs and outputs stay torch CUDA tensors (no extra CUDA Python package): the engine reads and writes
their memory on torch's current stream.

Engines are cached in `cache_dir` under a name made of the ONNX file's SHA-256, the GPU's name and compute
capability, the TensorRT version, the precision and the batch profile: a new model, GPU or TensorRT version
builds a new engine, anything else loads the cached one.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import torch

from dsformer_ros.common.atomic import atomic_write_bytes
from dsformer_ros.common.devices import resolve_device
from dsformer_ros.inference.backends.base import BackendError, DescriptorBackend
from dsformer_ros.inference.onnx_metadata import INPUT_NAME, OUTPUT_NAME, ExportedModel

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 4 << 30
PRECISION_FLAGS = {"fp32": None, "fp16": "FP16", "bf16": "BF16"}


def import_tensorrt() -> Any:
    """The tensorrt module, or BackendError naming what to install."""
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "backend tensorrt needs the tensorrt package on a CUDA machine: pip install -r requirements-gpu.txt "
            "(or pip install .[gpu]); on a Jetson it comes with JetPack"
        ) from None
    return tensorrt


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/dsformer_ros/tensorrt (~/.cache/... when XDG_CACHE_HOME is unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsformer_ros" / "tensorrt"


def engine_file_name(onnx_sha256: str, gpu_name: str, capability: tuple[int, int], trt_version: str,
                     precision: str, opt_batch: int, max_batch: int) -> str:
    """The cache key of one engine, as a file name."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower()
    return (f"{onnx_sha256[:16]}-{gpu}-sm{capability[0]}{capability[1]}-trt{trt_version}-{precision}"
            f"-b{opt_batch}-{max_batch}.engine")


def _onnx_metadata(data: bytes, path: Path) -> ExportedModel:
    import onnx

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise BackendError(f"ONNX model {path} cannot be read (truncated, corrupt or not ONNX): {exc}") from None
    return ExportedModel.from_props({p.key: p.value for p in proto.metadata_props}, str(path))


class TensorRTBackend(DescriptorBackend):
    """A TensorRT engine on one CUDA device; batches up to `max_batch`, tuned for `opt_batch`."""

    def __init__(self, path: str | Path, device: str = "auto", precision: str = "fp16", cache_dir: str | Path = "",
                 opt_batch: int = 1, max_batch: int = 64) -> None:
        trt = import_tensorrt()
        if precision not in PRECISION_FLAGS:
            raise BackendError(f"precision {precision!r}: backend tensorrt builds fp32, fp16 or bf16 engines")
        if not 1 <= opt_batch <= max_batch:
            raise BackendError(f"batch profile: need 1 <= opt_batch ({opt_batch}) <= max_batch ({max_batch})")
        cuda = resolve_device("cuda" if device == "auto" else device)
        if cuda.type != "cuda":
            raise BackendError(f"backend tensorrt runs on a CUDA GPU, not {device!r} (use onnxruntime on the CPU)")
        path = Path(path)
        if not path.is_file():
            raise BackendError(f"ONNX model {path} does not exist")
        data = path.read_bytes()
        info = _onnx_metadata(data, path)
        super().__init__(
            name="tensorrt",
            config=info.config,
            checkpoint_sha256=info.checkpoint_sha256,
            device=cuda,
            precision=precision,
            preprocessing=info.preprocessing,
            input_size=info.input_size,
            provenance=info.provenance,
        )
        self.max_batch = max_batch
        self._logger = trt.Logger(trt.Logger.WARNING)
        # the iRPE value term is a ScatterElements with reduction add, which TensorRT runs as a bundled plugin
        trt.init_libnvinfer_plugins(self._logger, "")
        index = cuda.index if cuda.index is not None else torch.cuda.current_device()
        name = engine_file_name(hashlib.sha256(data).hexdigest(), torch.cuda.get_device_name(index),
                                torch.cuda.get_device_capability(index), trt.__version__, precision, opt_batch,
                                max_batch)
        self.engine_path = Path(cache_dir or default_cache_dir()) / name
        with torch.cuda.device(index):
            engine_bytes = self._cached_or_built(trt, data, opt_batch, max_batch)
            self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_bytes)
            if self.engine is None:
                raise BackendError(f"TensorRT could not load the engine {self.engine_path}; delete it to rebuild")
            self.context = self.engine.create_execution_context()

    def _cached_or_built(self, trt: Any, data: bytes, opt_batch: int, max_batch: int) -> bytes:
        if self.engine_path.is_file():
            log.info("TensorRT engine from cache: %s", self.engine_path)
            return self.engine_path.read_bytes()
        log.info("building a TensorRT %s engine (batch %d..%d, tuned for %d); this takes minutes once",
                 self.precision, 1, max_batch, opt_batch)
        started = time.monotonic()
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(data):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT cannot parse the ONNX model: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        flag = PRECISION_FLAGS[self.precision]
        if flag is not None:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        height, width = self.input_size
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT_NAME, (1, 3, height, width), (opt_batch, 3, height, width),
                          (max_batch, 3, height, width))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise BackendError("TensorRT failed to build the engine (see its log above)")
        engine_bytes = bytes(serialized)
        atomic_write_bytes(self.engine_path, engine_bytes)
        log.info("built and cached %s in %.0f s", self.engine_path, time.monotonic() - started)
        return engine_bytes

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised batch -> descriptors on the GPU (float32), on torch's current stream."""
        self.check_input_size(tuple(batch.shape[-2:]), "this batch")
        if batch.shape[0] > self.max_batch:
            return torch.cat([self.forward(part) for part in batch.split(self.max_batch)])
        images = batch.to(self.device, torch.float32, non_blocking=True).contiguous()
        out = torch.empty((images.shape[0], self.config.descriptor_dim), dtype=torch.float32, device=self.device)
        self.context.set_input_shape(INPUT_NAME, tuple(images.shape))
        self.context.set_tensor_address(INPUT_NAME, images.data_ptr())
        self.context.set_tensor_address(OUTPUT_NAME, out.data_ptr())
        stream = torch.cuda.current_stream(self.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out
