"""The resume state of a training run (optimisers, classifiers, scaler, RNG states, epoch, config, metrics) as plain
data that `torch.load(weights_only=True)` reads, and the checks that make a resumed run continue exactly."""
from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsformer_ros.common.atomic import atomic_save
from dsformer_ros.common.config import ConfigError, to_dict
from dsformer_ros.common.datafiles import load_torch_file
from training.train.config import RESUME_MUTABLE_KEYS, TrainConfig

STATE_FORMAT = "dsformer_ros.train_state"
STATE_VERSION = 1


class ResumeError(ValueError):
    """A resume state is missing, foreign or does not belong to this run's checkpoint or configuration."""


def capture_rng() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states as tensors and plain numbers."""
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python_version": int(version),
        "python_state": torch.tensor(mt_state, dtype=torch.int64),
        "python_gauss": gauss,
        "numpy_kind": str(kind),
        "numpy_keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
        "numpy_pos": int(pos),
        "numpy_has_gauss": int(has_gauss),
        "numpy_cached_gaussian": float(cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Put back the generator states captured by `capture_rng`."""
    random.setstate((state["python_version"], tuple(int(x) for x in state["python_state"].tolist()),
                     state["python_gauss"]))
    np.random.set_state((state["numpy_kind"], state["numpy_keys"].numpy().astype(np.uint32), state["numpy_pos"],
                         state["numpy_has_gauss"], state["numpy_cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict[str, Any]) -> None:
    """Write the resume state atomically (tensors moved to the CPU)."""
    payload = {"format": STATE_FORMAT, "version": STATE_VERSION, **_to_cpu(state)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_save(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_state(path: str | Path) -> dict[str, Any]:
    """Read a resume state written by `save_state` (data only, on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise ResumeError(f"resume state {path} does not exist (was the run started with this out?)")
    state = load_torch_file(path, "resume state", ResumeError)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ResumeError(f"{path} is not a training resume state")
    if state.get("version") != STATE_VERSION:
        raise ResumeError(f"{path} has resume state version {state.get('version')}; this code reads {STATE_VERSION}")
    return state


def check_resume_config(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """Raise ConfigError naming the keys that differ from the interrupted run (other than the ones allowed to)."""
    old, new = _flatten(saved), _flatten(to_dict(cfg))
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and k not in RESUME_MUTABLE_KEYS)
    if changed:
        details = ", ".join(f"{k} (was {old.get(k)!r}, now {new.get(k)!r})" for k in changed[:5])
        raise ConfigError(f"resume: the configuration differs from the interrupted run in {details}; "
                          f"only {', '.join(RESUME_MUTABLE_KEYS)} may change")


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
