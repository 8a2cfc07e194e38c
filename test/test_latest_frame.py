"""The one-slot mailbox worker: newest frame wins, drops/rejections/failures are counted, latency percentiles."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from dsformer_ros.localization.latest_frame import FrameRejected, LatestFrameWorker, RollingPercentiles

TIMEOUT_S = 20.0


def wait_until(predicate, what: str) -> None:
    """Poll until predicate() holds (fails after TIMEOUT_S)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def test_busy_worker_keeps_only_the_newest_frame_and_counts_drops() -> None:
    started, release = threading.Event(), threading.Event()
    processed: list[int] = []

    def process(item: int, arrival: float) -> None:
        started.set()
        release.wait(TIMEOUT_S)
        processed.append(item)

    worker = LatestFrameWorker(process)
    worker.start()
    try:
        assert worker.put(0) is False
        assert started.wait(TIMEOUT_S)
        replaced = [worker.put(i) for i in range(1, 6)]  # the worker is busy with frame 0
        assert replaced == [False, True, True, True, True]
        release.set()
        wait_until(lambda: worker.stats().processed == 2 and not worker.stats().busy, "two frames processed")
        assert processed == [0, 5]
        stats = worker.stats()
        assert (stats.received, stats.processed, stats.dropped) == (6, 2, 4)
    finally:
        release.set()
        assert worker.stop(TIMEOUT_S)


def handled(stats) -> int:
    """Frames the worker has finished with (processed, rejected or failed)."""
    return stats.processed + stats.rejected + stats.failed


def test_rejected_and_failed_frames_are_counted_and_the_worker_goes_on() -> None:
    def process(item: str, arrival: float) -> None:
        if item == "bad":
            raise FrameRejected("wrong encoding")
        if item == "boom":
            raise RuntimeError("model exploded")

    worker = LatestFrameWorker(process)
    worker.start()
    try:
        for item in ("bad", "boom", "good"):
            before = worker.stats()
            worker.put(item)
            wait_until(lambda: handled(worker.stats()) == before.received + 1, f"{item} handled")
        stats = worker.stats()
        assert (stats.rejected, stats.failed, stats.processed) == (1, 1, 1)
        assert stats.last_reject_reason == "wrong encoding"
        assert "RuntimeError: model exploded" in stats.last_error
        assert worker.alive
        worker.count_rejected("zero size")
        worker.count_dropped()
        stats = worker.stats()
        assert (stats.received, stats.rejected, stats.dropped, stats.last_reject_reason) == (5, 2, 1, "zero size")
    finally:
        assert worker.stop(TIMEOUT_S)
    assert not worker.alive


def test_latency_percentiles_and_input_rate() -> None:
    worker = LatestFrameWorker(lambda item, arrival: time.sleep(0.02), rate_window_s=5.0)
    assert np.isnan(worker.stats().latency_p50_ms) and worker.stats().input_rate_hz == 0.0
    worker.start()
    try:
        for i in range(5):
            worker.put(i)
            wait_until(lambda: worker.stats().processed == i + 1, "frame processed")
        stats = worker.stats()
        assert 15.0 <= stats.latency_p50_ms <= stats.latency_p95_ms
        assert stats.input_rate_hz > 0
    finally:
        worker.stop(TIMEOUT_S)


def test_rolling_percentiles_forget_old_values() -> None:
    window = RollingPercentiles(3)
    assert np.isnan(window.percentile(50))
    for value in (100.0, 1.0, 2.0, 3.0):
        window.add(value)
    assert len(window) == 3 and window.percentile(50) == 2.0 and window.percentile(100) == 3.0
    with pytest.raises(ValueError):
        RollingPercentiles(0)


def test_stop_discards_the_waiting_frame() -> None:
    release = threading.Event()
    seen: list[int] = []

    def process(item: int, arrival: float) -> None:
        seen.append(item)
        release.wait(TIMEOUT_S)

    worker = LatestFrameWorker(process)
    worker.start()
    worker.put(1)
    wait_until(lambda: seen == [1], "frame 1 started")
    worker.put(2)
    stopper = threading.Thread(target=worker.stop, args=(TIMEOUT_S,))
    stopper.start()
    release.set()
    stopper.join(TIMEOUT_S)
    assert not worker.alive and seen == [1]
