"""Jinja2 rendering with the console's safety defaults.

- autoescape on for every template: each DICOM string (a PatientName with ``<script>`` in it)
  is shown as text;
- a Content-Security-Policy that allows no script at all, so even a template mistake cannot run
  one; the console needs none (auto-refresh is a ``<meta http-equiv="refresh">``);
- ``Cache-Control: no-store`` (pages carry patient data) and a ``Server-Timing`` header with the
  time spent in the handler, which bench/console.py reads.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from fastapi import Request
from fastapi.responses import HTMLResponse

from node import __version__

TEMPLATES = Path(__file__).parent / "templates"
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


def waited(since: datetime | None, now: datetime | None = None) -> str:
    """'3 h 12 min', '45 s': how long since ``since``."""
    if since is None:
        return ""
    if since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - since).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} d {hours % 24} h"


def when(value: Any) -> str:
    """An ISO string or datetime shown as 'YYYY-MM-DD HH:MM:SS UTC'."""
    if not value:
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def score(value: Any) -> str:
    if value is None:
        return "–"
    return f"{float(value):.3f}"


def dicom_date(value: str) -> str:
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if value and len(value) >= 8 and value[:8].isdigit() else value


def person_name(value: str) -> str:
    """DICOM PN 'FAMILY^GIVEN' as 'FAMILY, GIVEN' (still escaped by the template)."""
    parts = [p for p in (value or "").split("=")[0].split("^") if p]
    return ", ".join(parts[:2]) + (" " + " ".join(parts[2:]) if len(parts) > 2 else "") if parts else ""


def reason_text(code: str) -> str:
    """The no-assist reason code of a worklist row in words (the sentence the SR carries)."""
    from node.triage.policy import REASON_TEXT, NoAssistReason  # torch: only once a page needs it

    try:
        return REASON_TEXT[NoAssistReason(code)].removeprefix("No AI assessment: ")
    except ValueError:
        return code


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        waited=waited, when=when, score=score, dicom_date=dicom_date, person_name=person_name, reason_text=reason_text
    )
    env.globals.update(version=__version__)
    return env


ENV = _environment()


def render(
    request: Request,
    template: str,
    context: dict[str, Any],
    *,
    started: float | None = None,
    status_code: int = 200,
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    html = ENV.get_template(template).render(request=request, **context)
    out = dict(SECURITY_HEADERS, **(headers or {}))
    out["Cache-Control"] = "no-store"
    if started is not None:
        out["Server-Timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return HTMLResponse(html, status_code=status_code, headers=out)
