"""The ONNX Runtime backend: an exported model on the CPU (fp32, or int8 from export --quantize int8), with thread
count and wait policy chosen on purpose.

- intra-op threads = the physical cores this process may use (SMT siblings share one FPU pipeline: more threads
  than cores only add synchronisation), one inter-op thread, sequential execution;
- no spinning (`session.intra_op.allow_spinning = 0`): idle pool threads sleep instead of busy-waiting, which on a
  robot would steal the shared cores from SLAM and planning (and slow ourselves down under contention);
- every graph optimisation (ORT_ENABLE_ALL: constant folding, fusions, NCHWc conv layouts).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsformer_ros.common.cpus import physical_cores
from dsformer_ros.inference.backends.base import BackendError, DescriptorBackend
from dsformer_ros.inference.onnx_metadata import INPUT_NAME, OUTPUT_NAME, ExportedModel

log = logging.getLogger(__name__)


def import_onnxruntime() -> Any:
    """The onnxruntime module, or BackendError naming the package to install."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendError(
            "backend onnxruntime needs the onnxruntime package (pip install -r requirements.txt, or "
            "pip install onnxruntime==1.32.0)"
        ) from None
    return onnxruntime


def session_options(threads: int = 0, spinning: bool = False) -> Any:
    """SessionOptions for latency on shared CPUs: see the module docstring."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    return options


class OnnxRuntimeBackend(DescriptorBackend):
    """An exported DSFormer ONNX file run by ONNX Runtime's CPU execution provider."""

    def __init__(self, path: str | Path, threads: int = 0, spinning: bool = False) -> None:
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise BackendError(f"ONNX model {path} does not exist")
        options = session_options(threads, spinning)
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, Fail, ...)
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BackendError(
                f"ONNX model {path} cannot be loaded (truncated, corrupt or not ONNX): {first}"
            ) from None
        info = ExportedModel.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        super().__init__(
            name="onnxruntime",
            config=info.config,
            checkpoint_sha256=info.checkpoint_sha256,
            device=torch.device("cpu"),
            precision=info.quantization or "fp32",
            preprocessing=info.preprocessing,
            input_size=info.input_size,
            provenance=info.provenance,
        )
        self.path = path
        self.session = session
        self.threads = options.intra_op_num_threads
        log.info("ONNX Runtime %s: %s (%s), %d intra-op thread(s), spinning %s", ort.__version__, path,
                 self.precision, self.threads, "on" if spinning else "off")

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised CPU batch -> descriptors (CPU)."""
        self.check_input_size(tuple(batch.shape[-2:]), "this batch")
        array = np.ascontiguousarray(batch.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: array})[0])
