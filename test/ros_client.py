"""A test-side rclpy node in its own context, spun on a thread: records messages, waits for them, calls services.

Shared by the node and launch tests (the node runs as a separate process; this is the other end of the DDS link).
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any, Callable, Protocol

import rclpy
from rclpy.executors import SingleThreadedExecutor

ANSWER_TIMEOUT_S = 60.0


class Process(Protocol):
    """A process under test: its Popen and its log so far."""

    proc: Any

    def log(self) -> str: ...


class RosClient:
    """An rclpy node in its own context, spun on a thread, recording what it receives."""

    def __init__(self, name: str) -> None:
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._cond = threading.Condition()
        self.received: dict[str, list[tuple[float, Any]]] = defaultdict(list)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # the context was shut down while spinning
                return

    def subscribe(self, msg_type: type, topic: str) -> None:
        """Record each message on `topic` as (monotonic arrival time, message)."""

        def on_message(msg: Any) -> None:
            with self._cond:
                self.received[topic].append((time.monotonic(), msg))
                self._cond.notify_all()

        self.node.create_subscription(msg_type, topic, on_message, 50)

    def messages(self, topic: str) -> list[tuple[float, Any]]:
        """What arrived on `topic` so far."""
        with self._cond:
            return list(self.received[topic])

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float, what: str, process: Process | None = None
    ) -> Any:
        """Wait until predicate() is truthy (re-checked on every message and every 0.2 s) and return its value."""
        deadline = time.monotonic() + timeout
        while True:
            with self._cond:
                result = predicate()
                if result:
                    return result
                if process is not None and process.proc.poll() is not None:
                    code = process.proc.returncode
                    raise AssertionError(f"node exited ({code}) while waiting for {what}:\n{process.log()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log = f"; the process's log ends:\n{process.log()[-4000:]}" if process is not None else ""
                    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{log}")
                self._cond.wait(min(remaining, 0.2))

    def call(self, srv_type: type, name: str, request: Any, timeout: float = ANSWER_TIMEOUT_S) -> Any:
        """Call a service and return its response."""
        client = self.node.create_client(srv_type, name)
        try:
            assert client.wait_for_service(timeout_sec=timeout), f"service {name} did not appear"
            done = threading.Event()
            future = client.call_async(request)
            future.add_done_callback(lambda _: done.set())
            assert done.wait(timeout), f"service {name} did not answer within {timeout:.0f} s"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        """Shut the context down."""
        rclpy.try_shutdown(context=self.context)
        self._thread.join(5.0)
