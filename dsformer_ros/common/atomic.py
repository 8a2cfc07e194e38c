"""Atomic file and directory writes: write to a temporary sibling, fsync, then rename over the target.

A process killed at any instant leaves the target as it was or as it is meant to be, never missing or half
written. Directories are swapped in one step with Linux `renameat2(RENAME_EXCHANGE)`; where the filesystem lacks
it, two renames are used and the next save puts the old directory back if a kill fell between them. Temporary
siblings left by killed processes are removed by the next save of the same target (flock: a save in progress holds
a lock on its temporary directory, so only the leftovers of dead processes go; cleaning and swapping happen under a
short lock on the parent directory). Write failures (disk full, no
permission, a path under a file) are one `OutputPathError` naming the target.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_OLD = ".old"


class OutputPathError(ValueError):
    """An output cannot be written where it was asked to go; the message names the path and the reason."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (and `root` itself), so a rename publishes durable content."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _os_error(target: Path, exc: OSError) -> OutputPathError:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) or exc.errno is None:
        reason = f"{reason} (is the disk or quota full?)"
    return OutputPathError(f"cannot write {target}: {reason}")


def check_output_file(target: str | Path) -> Path:
    """Raise OutputPathError unless `target` can become a file: not a directory, no file among its parents."""
    target = Path(target)
    if target.is_dir():
        raise OutputPathError(f"output {target} is a directory; name a file to write")
    _check_parents(target)
    return target


def check_output_directory(target: str | Path) -> Path:
    """Raise OutputPathError unless `target` can become a directory: not a file, no file among its parents."""
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise OutputPathError(f"output {target} exists and is not a directory")
    _check_parents(target)
    return target


def _check_parents(target: Path) -> None:
    for parent in target.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputPathError(f"output {target}: {parent} is a file, not a directory")
            return


def _make_parent(target: Path) -> None:
    _check_parents(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _os_error(target, exc) from None


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary file path beside `target`; on success it replaces `target`, on error it is removed."""
    target = check_output_file(target)
    _make_parent(target)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix + ".tmp", dir=target.parent)
    except OSError as exc:
        raise _os_error(target, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
        _fsync_dir(target.parent)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _os_error(target, exc) from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> None:
    """Write `data` to `target` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(target: str | Path, text: str) -> None:
    """Write `text` to `target` atomically."""
    atomic_write_bytes(target, text.encode("utf-8"))


def atomic_save(target: str | Path, writer: Callable[[Path], None], suffix: str = "") -> None:
    """Call `writer(tmp_path)` and move the result over `target` atomically (e.g. torch.save, np.save)."""
    with atomic_path(target, suffix=suffix) as tmp:
        writer(tmp)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step; False when this system or filesystem cannot (no renameat2 exchange)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _lock(path: Path, wait: bool = True) -> int | None:
    """An fd holding an exclusive flock on the directory `path` (the kernel drops it when the process dies);
    None when `wait` is False and another save holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the lock of `directory` (its temporary entries are created, cleaned and swapped under it)."""
    fd = _lock(directory)
    try:
        yield
    finally:
        os.close(fd)


def leftovers(target: str | Path) -> list[Path]:
    """Temporary siblings of `target` that saves left behind (killed processes): new or replaced copies."""
    target = Path(target)
    prefix = f".{target.name}."
    return sorted(
        p for p in target.parent.glob(f".{target.name}.*")
        if p.name.startswith(prefix) and (p.name.endswith(".tmp") or p.name[len(prefix):].startswith("old"))
    )


def _restore_old(target: Path) -> bool:
    """Under the parent's lock: put back the old directory a kill left between two renames; True when it did."""
    old = target.with_name(f".{target.name}{_OLD}")
    if os.path.lexists(target) or not old.is_dir():
        return False
    os.rename(old, target)
    log.warning("restored %s from %s (a save was killed half-way)", target, old.name)
    return True


def recover_interrupted_save(target: str | Path) -> bool:
    """Before reading the directory `target`: put back its old copy when a save was killed between its two renames
    (filesystems without an atomic exchange), as the next save would; True when it did. OutputPathError when the
    copy is there but cannot be moved back."""
    target = Path(target)
    old = target.with_name(f".{target.name}{_OLD}")
    if os.path.lexists(target) or not old.is_dir():
        return False
    try:
        with _locked(target.parent):
            return _restore_old(target)
    except OSError as exc:
        raise _os_error(target, exc) from None


def _recover_and_clean(target: Path) -> None:
    """Under the parent's lock: put back an old directory a kill left between two renames, then remove every
    leftover that no running save holds (a save in progress keeps a lock on its temporary directory)."""
    _restore_old(target)
    for path in leftovers(target):
        if path.is_dir() and not path.is_symlink():
            fd = _lock(path, wait=False)
            if fd is None:
                continue  # another process is saving into it right now
            try:
                log.info("removing %s, left by an interrupted save", path)
                shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory beside `target`; on success it replaces `target` as a whole, durably."""
    target = check_output_directory(target)
    _make_parent(target)
    try:
        with _locked(target.parent):
            _recover_and_clean(target)
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
            in_progress = _lock(tmp)
        try:
            yield tmp
            _fsync_tree(tmp)
            with _locked(target.parent):
                if not target.exists():
                    os.rename(tmp, target)
                elif not _exchange(tmp, target):
                    log.warning("%s: the filesystem cannot swap directories atomically; using two renames", target)
                    old = target.with_name(f".{target.name}{_OLD}")
                    os.rename(target, old)
                    os.rename(tmp, target)
                    os.rename(old, tmp)
                _fsync_dir(target.parent)
        finally:
            os.close(in_progress)
            shutil.rmtree(tmp, ignore_errors=True)  # the unfinished new copy, or the old one swapped out
    except OSError as exc:
        raise _os_error(target, exc) from None
