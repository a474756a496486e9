"""Small server-drawn SVG bar charts (no JavaScript): one bar per sampling interval over the last hour.

The template draws what :func:`bar_chart` computes: rectangles in a fixed viewBox, the x axis
being the last hour (now at the right edge), the y axis scaled to the largest value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from node.console.samples import Point

WIDTH, HEIGHT, WINDOW = 360.0, 80.0, 3600.0


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    title: str


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    bars: list[Bar]
    peak: float
    latest: float | None
    width: float = WIDTH
    height: float = HEIGHT


def _nice(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def bar_chart(
    title: str, unit: str, points: Sequence[Point], value: Callable[[Point], float | None], now: datetime | None = None
) -> Chart:
    now = now or datetime.now(UTC)
    values = [(p, value(p)) for p in points]
    peak = max((v for _, v in values if v is not None), default=0.0)
    scale = (HEIGHT - 2) / peak if peak > 0 else 0.0
    bars = []
    for p, v in values:
        if v is None:
            continue
        right = WIDTH - (now - p.end).total_seconds() / WINDOW * WIDTH
        w = max(1.0, p.seconds / WINDOW * WIDTH - 0.5)
        h = max(0.5 if v > 0 else 0.0, v * scale)
        if right <= 0:
            continue
        bars.append(
            Bar(
                x=round(max(0.0, right - w), 2),
                y=round(HEIGHT - h, 2),
                w=round(w, 2),
                h=round(h, 2),
                title=f"{p.end:%H:%M:%S} UTC: {_nice(v)} {unit}",
            )
        )
    latest = next((v for _, v in reversed(values) if v is not None), None)
    return Chart(title=title, unit=unit, bars=bars, peak=peak, latest=latest)
