"""A one-slot mailbox with a worker thread: the worker always takes the newest frame, older waiting ones are dropped.

This is how the node never falls behind a camera: the subscription callback only `put()`s; a frame that arrives
while the model is busy replaces the waiting one (counted as dropped). Statistics cover input rate, latency from
arrival to the end of processing (p50/p95 over a window), dropped, rejected and failed frames. No ROS needed.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

log = logging.getLogger(__name__)


class FrameRejected(ValueError):
    """Raised by a process function for a malformed frame: counted as rejected, the worker goes on."""


class RollingPercentiles:
    """Percentiles of the last `window` values (thread-safe)."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._values: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def add(self, value: float) -> None:
        """Record one value."""
        with self._lock:
            self._values.append(float(value))

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of the window; NaN when empty."""
        with self._lock:
            if not self._values:
                return float("nan")
            return float(np.percentile(np.fromiter(self._values, dtype=np.float64), q))

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)


@dataclass
class WorkerStats:
    """A snapshot of the worker's counters; latencies in milliseconds, NaN before the first frame."""

    received: int
    processed: int
    dropped: int
    rejected: int
    failed: int
    input_rate_hz: float
    latency_p50_ms: float
    latency_p95_ms: float
    last_reject_reason: str
    last_error: str
    busy: bool


class LatestFrameWorker:
    """Runs `process(item, arrival_monotonic)` on a worker thread, always on the newest item put()."""

    def __init__(
        self,
        process: Callable[[Any, float], None],
        latency_window: int = 100,
        rate_window_s: float = 5.0,
        name: str = "latest-frame-worker",
    ) -> None:
        if not rate_window_s > 0:
            raise ValueError(f"rate_window_s must be > 0, got {rate_window_s}")
        self._process = process
        self._latency = RollingPercentiles(latency_window)
        self._rate_window_s = rate_window_s
        self._arrivals: deque[float] = deque()
        self._first_arrival: float | None = None
        self._cond = threading.Condition()
        self._slot: tuple[Any, float] | None = None
        self._stopping = False
        self._busy = False
        self._received = self._processed = self._dropped = self._rejected = self._failed = 0
        self._last_reject_reason = ""
        self._last_error = ""
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def stop(self, timeout: float | None = None) -> bool:
        """Ask the worker to finish its current frame and exit; a waiting frame is discarded. True when it exited."""
        with self._cond:
            self._stopping = True
            self._slot = None
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        return not self._thread.is_alive()

    def put(self, item: Any) -> bool:
        """Offer a new frame; returns True when it replaced a waiting one (which is counted as dropped)."""
        now = time.monotonic()
        with self._cond:
            self._arrive(now)
            replaced = self._slot is not None
            if replaced:
                self._dropped += 1
            self._slot = (item, now)
            self._cond.notify()
        return replaced

    def count_dropped(self) -> None:
        """Count a frame discarded before reaching the mailbox (e.g. by a rate limit)."""
        with self._cond:
            self._arrive(time.monotonic())
            self._dropped += 1

    def count_rejected(self, reason: str) -> None:
        """Count a malformed frame that never reached the mailbox."""
        with self._cond:
            self._arrive(time.monotonic())
            self._rejected += 1
            self._last_reject_reason = reason

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                item, arrival = self._slot
                self._slot = None
                self._busy = True
            outcome = "processed"
            try:
                self._process(item, arrival)
            except FrameRejected as exc:
                outcome, message = "rejected", str(exc)
            except Exception as exc:  # the worker must survive any one bad frame; the error goes to diagnostics
                log.exception("processing a frame failed")
                outcome, message = "failed", f"{type(exc).__name__}: {exc}"
            done = time.monotonic()
            with self._cond:
                self._busy = False
                if outcome == "processed":
                    self._processed += 1
                    self._latency.add((done - arrival) * 1000.0)
                elif outcome == "rejected":
                    self._rejected += 1
                    self._last_reject_reason = message
                else:
                    self._failed += 1
                    self._last_error = message

    def _arrive(self, now: float) -> None:
        """Count one received frame (caller holds the lock)."""
        self._received += 1
        self._arrivals.append(now)
        self._trim_arrivals(now)
        if self._first_arrival is None:
            self._first_arrival = now

    def _trim_arrivals(self, now: float) -> None:
        while self._arrivals and self._arrivals[0] < now - self._rate_window_s:
            self._arrivals.popleft()

    def _input_rate(self, now: float) -> float:
        """Frames per second over the last rate_window_s (shorter right after the first frame)."""
        self._trim_arrivals(now)
        if self._first_arrival is None:
            return 0.0
        span = min(self._rate_window_s, now - self._first_arrival)
        return len(self._arrivals) / span if span > 0 else 0.0

    def stats(self) -> WorkerStats:
        """A consistent snapshot of counters, input rate and latency percentiles."""
        with self._cond:
            rate = self._input_rate(time.monotonic())
            counters = (self._received, self._processed, self._dropped, self._rejected, self._failed)
            reason, error, busy = self._last_reject_reason, self._last_error, self._busy
        return WorkerStats(
            *counters,
            input_rate_hz=rate,
            latency_p50_ms=self._latency.percentile(50),
            latency_p95_ms=self._latency.percentile(95),
            last_reject_reason=reason,
            last_error=error,
            busy=busy,
        )

    @property
    def alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()
