"""Files that are data, read safely: their SHA-256, and `torch.load` bounded against zip bombs and never running code.

`torch.save` writes a zip archive whose entries are stored uncompressed, so a real checkpoint expands to about its
own size; an archive that declares far more (deflated entries) is refused before torch allocates anything.
"""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path
from typing import Any

# A torch zip archive may declare at most this many bytes of content: twice the file plus the headers' slack.
_EXPANSION = 2
_SLACK_BYTES = 16 << 20


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file, streamed in chunks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_torch_archive_size(path: Path, what: str, error: type[Exception]) -> None:
    """Raise `error` when the torch zip archive at `path` declares more content than a torch.save file can hold."""
    size = path.stat().st_size
    try:
        if not zipfile.is_zipfile(path):  # raises too, for a damaged end record ("span multiple disks")
            return  # the legacy (pre-1.6) format: a pickle followed by raw storages, nothing compressed
        with zipfile.ZipFile(path) as archive:
            declared = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise error(f"{what} {path} cannot be read (corrupt zip archive): {_first_line(exc)}") from None
    if declared > _EXPANSION * size + _SLACK_BYTES:
        raise error(
            f"{what} {path} declares {declared} bytes of content in a {size}-byte file (a zip bomb?); "
            "torch.save never compresses, so it is refused"
        )


def load_torch_file(path: str | Path, what: str, error: type[Exception]) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU after the archive size check; any failure becomes `error`
    with one line naming the file (`what` says what it should be: 'checkpoint', 'resume state', ...)."""
    import torch

    path = Path(path)
    check_torch_archive_size(path, what, error)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types (KeyError, UnpicklingError, RuntimeError...) for bad files
        raise error(
            f"{what} {path} cannot be read (truncated, corrupt or not a PyTorch file): {_first_line(exc)}"
        ) from None
