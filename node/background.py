"""One background loop: a daemon thread that calls a ``tick`` until it is stopped.

Why one helper: the triage worker and the forwarder each had their own copy of the same loop
(start a thread, call the round, log and survive any exception, sleep when idle, stop with a
bounded join). The copies drifted in small ways; here the rules are written once:

- ``tick()`` returns True when it did work: it is called again at once (a backlog drains
  without sleeping); False: the loop waits ``interval`` seconds, or less when stopped.
- an exception from ``tick`` (or ``setup``) is logged as ``error_event`` and the loop goes on:
  a database or network hiccup must not silently end a node's worker.
- ``stop()`` asks the loop to end and waits at most ``timeout`` seconds: a round in flight
  finishes (or is cut off by the process exit, the thread is a daemon); what it leaves
  half-done is recovered at the next start by its owner (job leases, outbox leases).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["BackgroundLoop"]


class BackgroundLoop:
    """A named daemon thread calling ``tick`` every ``interval`` seconds while idle."""

    def __init__(
        self,
        name: str,
        tick: Callable[[], bool],
        *,
        interval: float,
        log: Any,
        error_event: str,
        setup: Callable[[], object] | None = None,
    ) -> None:
        self.name = name
        self.interval = float(interval)
        self._tick = tick
        self._setup = setup
        self._log = log  # a structlog logger of the owner: the error line carries the owner's name
        self._error_event = error_event
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        """True once stop() was called: a long round may check it to leave work for the next start."""
        return self._stop.is_set()

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError(f"{self.name} was already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> bool:
        """Ask the loop to end and wait at most ``timeout`` seconds. True when the thread ended."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.alive

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``, woken by stop(). True when stopping."""
        return self._stop.wait(seconds)

    def _guarded(self, call: Callable[[], object]) -> object:
        try:
            return call()
        except Exception as exc:  # never let the loop die; the owner's rows stay visible for recovery
            self._log.error(self._error_event, error=type(exc).__name__, detail=str(exc)[:300])
            return False

    def _run(self) -> None:
        if self._setup is not None:
            self._guarded(self._setup)
        while not self._stop.is_set():
            worked = self._guarded(self._tick)
            if not worked:
                self._stop.wait(self.interval)
