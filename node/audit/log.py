"""Append-only audit writer: one event a line, hash-chained, chain head mirrored in the database.

Why a file *and* a database row: the file is what operators tail and ship; the head row
lets `audit verify` notice a file whose tail was cut off (a truncated chain is otherwise
still a valid chain) and lines appended after it. Identifiers (patient id, study UID) belong
here, never in the operational log.

``serve`` opens the log as its owner (``exclusive=True``): a lock on ``<log>.owner`` held for
the process lifetime, so a second node started on the same files by mistake stops before it
writes. A person's CLI command beside the live node (``worklist clear``) opens it without
ownership. Every append, by the owner or not, holds an exclusive ``flock`` on the log itself and
first re-reads the tail when the file grew since this process last wrote, so the chain never
forks into two lines with one ``seq``.

At start (under the append lock) the writer looks at the tail: a torn last line (a crash mid-write) is moved aside to ``<log>.torn-<time>`` and the
chain continues from the last complete line, with an audit event saying so; one complete line
after the database head whose hash is the head's *pending* hash (a crash between the line's
fsync and the head's commit) is anchored. Any other line after the head is not: that is for
`audit verify` to report.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.audit.chain import GENESIS_HASH, canonical, entry_hash
from node.audit.events import EventCode
from node.audit.verify import head_key
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


class AuditLogBusy(RuntimeError):
    """Another process holds the audit log (a second node on the same files)."""


def last_line_span(f: Any) -> tuple[int, int]:
    """(start, end) of the last line of a binary file however long it is (end excludes "\n")."""
    f.seek(0, os.SEEK_END)
    end = f.tell()
    if end and _byte_at(f, end - 1) == b"\n":
        end -= 1
    pos = end
    step = 65536
    while pos > 0:
        start = max(0, pos - step)
        f.seek(start)
        chunk = f.read(pos - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return start + newline + 1, end
        pos = start
    return 0, end


def _byte_at(f: Any, offset: int) -> bytes:
    f.seek(offset)
    return f.read(1)


class AuditLog:
    """Thread-safe appender. Reopens the existing chain at start (continues seq and hash)."""

    def __init__(
        self, path: Path, database: Database, *, source_id: str, fsync: bool = True, exclusive: bool = True
    ) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.database = database
        self.source_id = source_id
        self.fsync = fsync
        self.host = socket.gethostname()
        self._lock = threading.Lock()
        self._log = structlog.get_logger("audit")
        self._owner = None
        if exclusive:
            self._owner = open(self.path.with_name(self.path.name + ".owner"), "ab")  # noqa: SIM115 - lifetime lock
            try:
                fcntl.flock(self._owner.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self._owner.close()
                raise AuditLogBusy(f"audit.path: {self.path} is held by another running triage-node") from None
        self._file = open(self.path, "ab")  # noqa: SIM115 - held open for the process lifetime
        self._last_ts = ""
        with self._file_lock():
            torn = self._move_torn_tail()
            self._seq, self._prev, self._last_ts = self._read_tail()
            anchored = exclusive and self._anchor_crash_line()
            self._size = os.fstat(self._file.fileno()).st_size
        if torn is not None:
            aside, size = torn
            self.record(
                EventCode.APPLICATION_ACTIVITY,
                outcome=4,
                outcome_desc=f"torn last audit line ({size} bytes, a crash mid-write) moved aside "
                f"to {aside.name}; the chain continues from seq {self._seq}",
                participants=[Participant(user_id=source_id, role="application")],
            )
        if anchored:
            self._log.info("audit_line_anchored", seq=self._seq)

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """The append lock: one line at a time, whichever process writes it."""
        fcntl.flock(self._file.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)

    def _move_torn_tail(self) -> tuple[Path, int] | None:
        """A last line that is not a complete JSON entry is cut off the log and kept beside it."""
        with open(self.path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return None
            start, end = last_line_span(f)
            f.seek(start)
            last = f.read(end - start)
            complete = size == end + 1  # ends with its newline
        if complete and _parses(last):
            return None
        aside = self.path.with_name(f"{self.path.name}.torn-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}")
        with open(aside, "wb") as out:
            out.write(last)
            out.flush()
            os.fsync(out.fileno())
        os.truncate(self.path, start)
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self._log.warning("audit_torn_line_moved_aside", size=len(last))
        return aside, len(last)

    def _read_tail(self) -> tuple[int, str, str]:
        """Last seq, hash and ts in the file (the chain continues from the file, the source of truth)."""
        with open(self.path, "rb") as f:
            if f.seek(0, os.SEEK_END) == 0:
                return 0, GENESIS_HASH, ""
            start, end = last_line_span(f)
            f.seek(start)
            entry = json.loads(f.read(end - start))
        return int(entry["seq"]), str(entry["hash"]), str(entry.get("ts", ""))

    def _anchor_crash_line(self) -> bool:
        """Anchor the file's last line when it is exactly one after the head and links to it."""
        with self.database.session() as session:
            head = session.get(AuditHead, head_key(self.host, self.path)) or session.get(
                AuditHead, str(self.path.resolve())
            )
            if head is None or head.seq + 1 != self._seq:
                return False
        with open(self.path, "rb") as f:
            start, end = last_line_span(f)
            f.seek(start)
            entry = json.loads(f.read(end - start))
        if entry.get("prev_hash") != head.hash or entry.get("hash") != head.pending_hash:
            return False
        self._store_head()
        return True

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
                self._seq, self._prev, self._last_ts = self._read_tail()
            entry: dict[str, Any] = {
                "seq": self._seq + 1,
                "ts": datetime.now(UTC).isoformat(timespec="microseconds"),
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
            self._store_pending(entry["hash"])
            self._file.write(canonical(entry) + b"\n")
            self._file.flush()
            if self.fsync:
                os.fsync(self._file.fileno())
            self._seq, self._prev, self._last_ts = entry["seq"], entry["hash"], entry["ts"]
            self._size = os.fstat(self._file.fileno()).st_size
            self._store_head()
            return entry

    def _store_pending(self, line_hash: str) -> None:
        """Commit the coming line's hash before the line is written (see ``_store_head``)."""
        self._upsert_head(pending_hash=line_hash)

    def _store_head(self) -> None:
        """Upsert this file's head row (keyed by host and path: several processes, one database).

        Two commits a line: the line's hash as *pending* before its fsync, the head after it. A
        process killed in between leaves one line after the head whose hash is the pending one:
        `audit verify` and the next start accept exactly that line, and no forged one.
        """
        self._upsert_head(pending_hash=None)

    def _upsert_head(self, *, pending_hash: str | None) -> None:
        values = {
            "log_path": head_key(self.host, self.path),
            "seq": self._seq,
            "hash": self._prev,
            "last_ts": self._last_ts,
            "pending_hash": pending_hash,
        }
        with self.database.write() as session:
            insert = sqlite_insert if self.database.is_sqlite else pg_insert
            session.execute(
                insert(AuditHead)
                .values(values)
                .on_conflict_do_update(
                    index_elements=["log_path"], set_={k: v for k, v in values.items() if k != "log_path"}
                )
            )

    def close(self) -> None:
        with self._lock:
            self._file.close()
            if self._owner is not None:
                self._owner.close()  # releases the ownership lock


def _parses(line: bytes) -> bool:
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and "seq" in entry and "hash" in entry
