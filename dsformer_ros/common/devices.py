"""Device names and their resolution: 'auto', 'cpu', 'cuda' or 'cuda:N'; an unavailable device is an error."""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


class DeviceError(ValueError):
    """The device name is malformed or the device is not available; the message says which."""


def check_device_name(name: str) -> None:
    """Raise DeviceError unless `name` is auto, cpu, cuda or cuda:N (no torch needed)."""
    if not isinstance(name, str) or not DEVICE_PATTERN.fullmatch(name):
        raise DeviceError(f"device: {name!r} is not auto, cpu, cuda or cuda:N")


def resolve_device(device: "str | torch.device | None" = "auto") -> "torch.device":
    """'auto' -> CUDA when available, else CPU; an unavailable CUDA request is an error, not a silent CPU run."""
    import torch

    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_name(str(device))
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {str(device)!r} was requested but CUDA is not available (use 'cpu' or 'auto')")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return device
