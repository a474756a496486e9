"""Append-only audit writer: one event a line, hash-chained, chain head mirrored in the database.

Why a file *and* a database row: the file is what operators tail and ship; the head row
lets `audit verify` notice a file whose tail was cut off (a truncated chain is otherwise
still a valid chain). Identifiers (patient id, study UID) belong here, never in the
operational log.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import structlog

from node.audit.chain import GENESIS_HASH, canonical, entry_hash
from node.audit.events import EventCode
from node.db.engine import Database
from node.db.models import AuditHead


@dataclass(frozen=True)
class Participant:
    """An active participant: a peer AE, our application, an HTTP client."""

    user_id: str  # AE title, or process name
    role: str  # "source" | "destination" | "application" | "requestor"
    is_requestor: bool = False
    network_address: str = ""


@dataclass(frozen=True)
class AuditObject:
    """A participant object: a patient, a study, a query, a node."""

    type: str  # "patient" | "study" | "query" | "node" | "report" | "job"
    id: str
    details: dict[str, Any] = field(default_factory=dict)


class AuditLog:
    """Thread-safe and process-safe appender. Reopens the existing chain at start (continues seq
    and hash).

    Several processes may append to one file (``serve`` and a CLI command a person runs beside
    it, e.g. ``worklist clear``): each append holds an exclusive ``flock`` on the file and, when
    the file grew since this process last wrote, first re-reads the tail, so the chain never
    forks into two lines with one ``seq``.
    """

    def __init__(self, path: Path, database: Database, *, source_id: str, fsync: bool = True) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.source_id = source_id
        self.fsync = fsync
        self.host = socket.gethostname()
        self._lock = threading.Lock()
        self._log = structlog.get_logger("audit")
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the process lifetime
        with self._file_lock():
            self._seq, self._prev = self._read_tail()
            self._size = os.fstat(self._file.fileno()).st_size

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def _read_tail(self) -> tuple[int, str]:
        """Last seq and hash in the file (the chain continues from the file, the source of truth)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return 0, GENESIS_HASH
        import json

        last = b""
        with open(self.path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            pos = max(0, end - 65536)
            f.seek(pos)
            lines = [line for line in f.read().splitlines() if line.strip()]
            last = lines[-1] if lines else b""
        if not last:
            return 0, GENESIS_HASH
        try:
            entry = json.loads(last)
            return int(entry["seq"]), str(entry["hash"])
        except (ValueError, KeyError):
            # A torn last line (crash mid-write): `audit verify` reports it; continue after it.
            return 0, GENESIS_HASH

    def record(
        self,
        event: EventCode,
        *,
        event_type: tuple[str, str] | None = None,
        action: str = "E",
        outcome: int = 0,
        outcome_desc: str = "",
        participants: list[Participant] | tuple[Participant, ...] = (),
        objects: list[AuditObject] | tuple[AuditObject, ...] = (),
        detail: str = "",
    ) -> dict[str, Any]:
        """Append one event and return the line as written."""
        with self._lock, self._file_lock():
            if os.fstat(self._file.fileno()).st_size != self._size:  # another process appended
                self._seq, self._prev = self._read_tail()
            entry: dict[str, Any] = {
                "seq": self._seq + 1,
                "ts": datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                "event_id": {"code": event.code, "system": "DCM", "meaning": event.meaning},
                "event_type": (
                    {"code": event_type[0], "system": "DCM", "meaning": event_type[1]} if event_type else None
                ),
                "action": action,
                "outcome": outcome,
                "outcome_desc": outcome_desc,
                "source": {"id": self.source_id, "host": self.host},
                "participants": [asdict(p) for p in participants],
                "objects": [asdict(o) for o in objects],
                "detail": detail,
                "prev_hash": self._prev,
            }
            entry["hash"] = entry_hash(entry)
            self._file.write(canonical(entry) + b"\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._seq, self._prev = entry["seq"], entry["hash"]
            self._size = os.fstat(self._file.fileno()).st_size
            self._store_head()
            return entry

    def _store_head(self) -> None:
        key = str(self.path.resolve())
        with self.database.write_lock, self.database.session() as session, session.begin():
            head = session.get(AuditHead, key)
            if head is None:
                session.add(AuditHead(log_path=key, seq=self._seq, hash=self._prev))
            else:
                head.seq, head.hash = self._seq, self._prev

    def close(self) -> None:
        with self._lock:
            self._file.close()
