"""The PyTorch backend: the DSFormer module itself (any input size, fp32/bf16/fp16 autocast, optional compile)."""
from __future__ import annotations

import torch

from dsformer_ros.inference.backends.base import BackendError, DescriptorBackend
from dsformer_ros.inference.precision import autocast, check_precision
from dsformer_ros.inference.preprocess import preprocess_config_for
from dsformer_ros.model.dsformer import DSFormer


class TorchBackend(DescriptorBackend):
    """Eager (or torch.compile'd) PyTorch on the module's device."""

    def __init__(self, model: DSFormer, precision: str = "fp32", channels_last: bool = False,
                 compile: bool = False) -> None:
        check_precision(precision)
        if not getattr(model, "checkpoint_sha256", ""):
            raise BackendError("the model has no checkpoint_sha256, which maps are matched by: load it with "
                               "load_model or untrained_model (or set the hash of its weights)")
        model = model.eval()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        super().__init__(
            name="torch",
            config=model.config,
            checkpoint_sha256=model.checkpoint_sha256,
            device=next(model.parameters()).device,
            precision=precision,
            preprocessing=preprocess_config_for(model.config),
            provenance=dict(getattr(model, "provenance", {})),
        )
        self.model = model
        self.channels_last = channels_last
        self._forward = torch.compile(model, dynamic=True) if compile else model

    @torch.inference_mode()
    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        """Normalised batch -> descriptors on the model's device."""
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with autocast(self.precision, self.device.type):
            return self._forward(batch).float()
