"""Crash-safe map saving with real processes: SIGKILL at every step of a save, and at random moments of saves in a
loop, always leaves the old map or the new one at the target; leftovers go at the next save; disk full is one error."""
from __future__ import annotations

import os
import random
import re
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import dsformer_ros.common.atomic as atomic
from dsformer_ros.common.atomic import OutputPathError, leftovers
from dsformer_ros.maps.placemap import MapError, PlaceMap, PlaceMetadata

REPO = Path(__file__).resolve().parents[1]


def _map(seed: int, n: int = 40, dim: int = 16) -> PlaceMap:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    i = np.arange(n)
    meta = PlaceMetadata(place_id=i, easting=500000.0 + 2.0 * i, northing=np.full(n, 5e6), zone_number=np.full(n, 32),
                         zone_letter=np.array(["U"] * n), lat=np.full(n, np.nan), lon=np.full(n, np.nan),
                         heading_deg=np.full(n, np.nan), stamp_ns=i * 10, source=np.array([f"s{k}" for k in i]))
    return PlaceMap.build(x, meta, model_variant=f"seed{seed}", checkpoint_sha256="ab" * 32, preprocessing={},
                          build_info={})


def _which(path: Path) -> str:
    """The model_variant ('seedN') of the map at `path`, loaded with every check on."""
    return PlaceMap.load(path).manifest.model_variant


def _save_steps(place_map: PlaceMap, target: Path, kill_at: int) -> int:
    """Save in a forked child that SIGKILLs itself at its `kill_at`-th step (an OS call or an atomic.py call);
    returns the number of steps the save took when it was not killed (kill_at < 0), else -signal."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            os.close(read_fd)
            steps = 0
            me = os.getpid()

            def profile(frame, event, arg):
                nonlocal steps
                step = (event == "c_call" and getattr(arg, "__module__", None) in ("posix", "_io", "io")) or (
                    event == "call" and frame.f_code.co_filename == atomic.__file__)
                if step:
                    steps += 1
                    if steps == kill_at:
                        os.kill(me, signal.SIGKILL)

            sys.setprofile(profile)
            place_map.save(target)
            sys.setprofile(None)
            os.write(write_fd, str(steps).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        text = fh.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return int(text)


@pytest.mark.slow
def test_a_kill_at_every_step_of_a_save_leaves_the_old_or_the_new_map(tmp_path: Path) -> None:
    old, new, later = _map(1), _map(2), _map(3)
    target = tmp_path / "map"
    old.save(target)
    total = _save_steps(new, target, -1)  # the steps of replacing an existing map, from a clean directory
    assert total > 100
    outcomes = []
    # every sixth step while the new copy is written, every step of the last 45 (fsync, swap, clean-up)
    kill_points = sorted(set(range(1, total + 1, 6)) | set(range(max(1, total - 45), total + 1)))
    for kill_at in kill_points:
        old.save(target)  # the old map and no leftovers: each kill point is the same instant of the same save
        assert _save_steps(new, target, kill_at) == -signal.SIGKILL
        outcomes.append(_which(target))  # never missing, never half written
    swap = outcomes.index("seed2")
    assert set(outcomes[:swap]) == {"seed1"} and set(outcomes[swap:]) == {"seed2"}, outcomes
    assert kill_points[swap] > total * 3 // 4  # most of a save writes the new copy; the swap comes near the end
    later.save(target)
    assert _which(target) == "seed3" and leftovers(target) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


_LOOP = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from test_map_save_kills import _map
    maps = [_map(1), _map(2)]
    i = 0
    while True:
        maps[i % 2].save(sys.argv[1])
        print("saved", flush=True)
        i += 1
""")


def test_random_sigkills_during_saves_in_a_loop(tmp_path: Path) -> None:
    target = tmp_path / "map"
    _map(1).save(target)
    rng = random.Random(1234)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    saw_leftovers = 0
    for _ in range(6):
        child = subprocess.Popen([sys.executable, "-c", _LOOP, str(target), str(REPO / "test")], stdout=subprocess.PIPE,
                                 env=env, cwd=REPO, text=True)
        try:
            started = time.monotonic()
            assert child.stdout.readline().strip() == "saved"
            assert child.stdout.readline().strip() == "saved"
            period = (time.monotonic() - started) / 2
            time.sleep(rng.uniform(0, 3 * period))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
            child.stdout.close()
        assert _which(target) in ("seed1", "seed2")
        saw_leftovers += bool(leftovers(target))
    _map(3).save(target)
    assert _which(target) == "seed3" and leftovers(target) == []


def test_stale_leftovers_with_a_reused_pid_do_not_break_saving(tmp_path: Path) -> None:
    target = tmp_path / "map"
    _map(1).save(target)
    for name in (f".map.old-{os.getpid()}", ".map.old-1", ".map.x1y2.tmp", ".map.old"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "descriptors.npy").write_bytes(b"stale")
    _map(2).save(target)
    assert _which(target) == "seed2" and leftovers(target) == []


def test_a_kill_between_two_renames_is_restored(tmp_path: Path) -> None:
    """Filesystems without RENAME_EXCHANGE use two renames; a kill between them leaves `.map.old`, which the next
    save of the target puts back first, so even a save that then fails leaves the old map in place."""
    target = tmp_path / "map"
    _map(1).save(target)
    os.rename(target, tmp_path / ".map.old")  # the state right after the first of the two renames
    failing = _map(2)
    failing.descriptors[30, 0] = np.nan  # found while the save streams the rows
    with pytest.raises(MapError, match="descriptor row 30 is not finite"):
        failing.save(target)
    assert _which(target) == "seed1" and leftovers(target) == []


def test_a_load_after_a_kill_between_two_renames_restores_the_old_map(tmp_path: Path) -> None:
    """A node restarted before the next save finds the map the interrupted save moved aside, as that save would."""
    target = tmp_path / "map"
    _map(1).save(target)
    os.rename(target, tmp_path / ".map.old")  # the state right after the first of the two renames
    assert _which(target) == "seed1" and leftovers(target) == []
    _map(2).save(target)
    assert _which(target) == "seed2" and leftovers(target) == []


def test_files_are_fsynced_before_the_swap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    _map(1).save(tmp_path / "map")
    names = {Path(p).name for p in synced}
    assert {"descriptors.npy", "index.faiss", "manifest.json", "places.source.npy"} <= names
    assert str(tmp_path) in synced  # the parent directory, after the rename


def _save_with_file_size_limit(place_map: PlaceMap, target: Path, limit: int) -> str:
    """Save in a forked child whose files may not grow beyond `limit` bytes (writes fail as on a full disk)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            try:
                place_map.save(target)
                message = "saved"
            except (MapError, OutputPathError) as exc:
                message = f"{type(exc).__name__}: {exc}"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
                message = f"UNEXPECTED {type(exc).__name__}: {exc}"
            os.write(write_fd, message.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        message = fh.read()
    os.waitpid(pid, 0)
    return message


@pytest.mark.parametrize("limit", [3000, 20000])
def test_disk_full_is_one_error_line_and_keeps_the_old_map(tmp_path: Path, limit: int) -> None:
    target = tmp_path / "map"
    _map(1).save(target)
    message = _save_with_file_size_limit(_map(2, n=600, dim=64), target, limit)
    assert message.startswith(("MapError: cannot write map", "OutputPathError: cannot write")), message
    assert "\n" not in message
    assert _which(target) == "seed1" and leftovers(target) == []


def test_a_write_over_the_file_size_limit_counts_the_bytes_of_the_file(tmp_path: Path) -> None:
    """The first file the save writes hits the limit: the message counts its bytes (numpy's own writer reported
    '600 requested and 359 written', array items against a partial count)."""
    message = _save_with_file_size_limit(_map(2, n=600, dim=64), tmp_path / "map", 3000)
    found = re.search(r"File too large after (\d+) of the (\d+) bytes of places\.place_id\.npy", message)
    assert found and int(found[1]) == 3000 and int(found[2]) == 128 + 600 * 8, message


def test_a_save_in_progress_is_neither_blocked_nor_cleaned_by_another(tmp_path: Path) -> None:
    target = tmp_path / "map"
    with atomic.atomic_directory(target) as tmp:
        (tmp / "note.txt").write_text("outer")
        _map(2).save(target)  # a second save of the same target while the first is writing
        assert (tmp / "note.txt").read_text() == "outer"
        assert _which(target) == "seed2"
    assert (target / "note.txt").read_text() == "outer" and leftovers(target) == []
