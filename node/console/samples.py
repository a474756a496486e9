"""The last hour of the node's own Prometheus metrics, for the health page's charts.

Prometheus counters only ever grow; a rate needs two readings. A daemon thread reads the
process registry (node/metrics.py) every ``interval`` seconds into a ring buffer that holds an
hour; the health page adds a reading when the newest one is older than ``fresh`` seconds, so
the charts are current when someone looks. The registry is one per process, and so is the
sampler.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime

from node.metrics import REGISTRY

INTERVAL_SECONDS = 30.0
WINDOW_SECONDS = 3600.0


@dataclass(frozen=True)
class Reading:
    at: float  # time.monotonic()
    wall: datetime
    stored: float  # instances stored (counter)
    triaged: float  # SRs written after a job (latency histogram count)
    latency_sum: float  # seconds, sum over those jobs


@dataclass(frozen=True)
class Point:
    """One interval between two readings: rates per minute and the mean triage latency."""

    end: datetime
    seconds: float
    ingest_per_min: float
    triage_per_min: float
    latency_s: float | None  # None when no job finished in the interval


def read_registry(now: float | None = None) -> Reading:
    def value(name: str, labels: dict[str, str] | None = None) -> float:
        return float(REGISTRY.get_sample_value(name, labels or {}) or 0.0)

    return Reading(
        at=time.monotonic() if now is None else now,
        wall=datetime.now(UTC),
        stored=value("triage_node_instances_received_total", {"outcome": "stored"}),
        triaged=value("triage_node_triage_latency_seconds_count"),
        latency_sum=value("triage_node_triage_latency_seconds_sum"),
    )


def points(readings: list[Reading]) -> list[Point]:
    out = []
    for a, b in itertools.pairwise(readings):
        dt = b.at - a.at
        if dt <= 0:
            continue
        jobs = b.triaged - a.triaged
        out.append(
            Point(
                end=b.wall,
                seconds=dt,
                ingest_per_min=max(0.0, b.stored - a.stored) * 60 / dt,
                triage_per_min=max(0.0, jobs) * 60 / dt,
                latency_s=(b.latency_sum - a.latency_sum) / jobs if jobs > 0 else None,
            )
        )
    return out


class MetricsSampler:
    def __init__(self, interval: float = INTERVAL_SECONDS, window: float = WINDOW_SECONDS) -> None:
        self.interval = interval
        self.window = window
        self._readings: deque[Reading] = deque(maxlen=int(window / interval) * 4 + 8)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="console-metrics", daemon=True)
        self.sample()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        reading = read_registry()
        with self._lock:
            self._readings.append(reading)
            while self._readings and reading.at - self._readings[0].at > self.window + self.interval:
                self._readings.popleft()

    def last_hour(self, fresh: float = 5.0) -> list[Point]:
        """Intervals of the last hour, oldest first, after a fresh reading if the newest is stale."""
        with self._lock:
            newest = self._readings[-1].at if self._readings else None
        if newest is None or time.monotonic() - newest > fresh:
            self.sample()
        with self._lock:
            readings = list(self._readings)
        cutoff = time.monotonic() - self.window
        return [p for p, r in zip(points(readings), readings[1:]) if r.at >= cutoff]


_SAMPLER = MetricsSampler()


def sampler() -> MetricsSampler:
    """The process's sampler, started on first use."""
    _SAMPLER.start()
    return _SAMPLER
