"""Inference and training precisions: their names (no torch needed) and the autocast context each one means."""
from __future__ import annotations

import contextlib

PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(name: str) -> None:
    """Raise ValueError naming the allowed precisions unless `name` is one of them."""
    if name not in PRECISIONS:
        raise ValueError(f"precision: {name!r} is not one of {', '.join(PRECISIONS)}")


def autocast(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """fp32: no autocast; bf16/fp16: torch.autocast to that dtype on `device_type` ('cpu' or 'cuda')."""
    import torch

    check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device_type, dtype=dtype)
