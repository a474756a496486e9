"""Reading the audit log for the console: the newest lines first, one study's lines, chain status.

The log is a file of JSON lines that only grows (node/audit/log.py). The tail is read from
the end in blocks, so the audit page costs the same on a log of any size. A study's lines need
a pass over the whole file; a cheap substring test skips every line that does not name the
study before any JSON is parsed. The chain status is ``audit verify`` itself
(node/audit/verify.py), cached until the file changes.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.audit.verify import VerifyResult, verify_log
from node.db.engine import Database

BLOCK = 64 * 1024
HIDDEN = "(hidden: log in)"
#: Audit objects whose id or details identify a patient or carry query keys (names, birth dates).
IDENTIFYING_OBJECTS = ("patient", "query")


def _lines_backwards(path: Path) -> Iterator[bytes]:
    """Complete lines of ``path`` from the last to the first (a torn last line included)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        rest = b""
        while pos > 0:
            step = min(BLOCK, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step) + rest
            lines = chunk.split(b"\n")
            rest = lines[0]
            for line in reversed(lines[1:]):
                if line.strip():
                    yield line
        if rest.strip():
            yield rest


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        entry = json.loads(raw)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


def _matches(entry: dict[str, Any], code: str, outcome: str) -> bool:
    if code and (entry.get("event_id") or {}).get("code") != code:
        return False
    if outcome == "success" and entry.get("outcome") != 0:
        return False
    return not (outcome == "failure" and entry.get("outcome") == 0)


def tail(path: Path, *, limit: int = 200, code: str = "", outcome: str = "") -> list[dict[str, Any]]:
    """Up to ``limit`` entries, newest first, filtered by event code and outcome ("success"/"failure")."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for raw in _lines_backwards(path):
        entry = _parse(raw)
        if entry is None or not _matches(entry, code, outcome):
            continue
        out.append(entry)
        if len(out) >= limit:
            break
    return out


def study_events(path: Path, study_uid: str, *, limit: int = 200) -> list[dict[str, Any]]:
    """Entries naming ``study_uid`` as an audit object, newest first (at most ``limit``)."""
    path = Path(path)
    if not path.exists() or not study_uid:
        return []
    needle = study_uid.encode()
    found = []
    with open(path, "rb") as f:
        for raw in f:
            if needle not in raw:
                continue
            entry = _parse(raw)
            if entry and any(o.get("type") == "study" and o.get("id") == study_uid for o in entry.get("objects", [])):
                found.append(entry)
    found.reverse()
    return found[:limit]


def skipped_images(events: list[dict[str, Any]], sr_uid: str) -> list[tuple[str, str]]:
    """(SOP Instance UID, reason) of the images the triage behind ``sr_uid`` did not give the model,
    as the worker recorded them with that SR's creation."""
    for entry in events:
        objects = entry.get("objects", [])
        if not any(o.get("type") == "report" and o.get("id") == sr_uid for o in objects):
            continue
        for o in objects:
            if o.get("type") == "study":
                return [
                    (str(s[0]), str(s[1]))
                    for s in (o.get("details") or {}).get("skipped", [])
                    if isinstance(s, (list, tuple)) and len(s) == 2
                ]
    return []


def redact(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as a viewer who has not logged in may see it: patient and query objects hidden."""
    objects = [
        dict(o, id=HIDDEN, details={}) if o.get("type") in IDENTIFYING_OBJECTS else o for o in entry.get("objects", [])
    ]
    return dict(entry, objects=objects)


class ChainStatus:
    """``verify_log`` of the audit file, recomputed only when the file's size or mtime changed."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int, int] | None = None
        self._result: VerifyResult | None = None

    def get(self, path: Path, db: Database | None) -> VerifyResult:
        path = Path(path)
        try:
            st = path.stat()
            key: tuple[str, int, int] | None = (str(path), st.st_size, st.st_mtime_ns)
        except OSError:
            key = None
        with self._lock:
            if key is not None and key == self._key and self._result is not None:
                return self._result
        result = verify_log(path, db)
        with self._lock:
            self._key, self._result = key, result
        return result
