"""Refusals (malformed or timed-out associations, over-limit connections, HTTP 401s) in the
audit log, aggregated per client so that an attack cannot flood it.

Why aggregated: a hostile peer can cause thousands of refusals a second; one audit line each
(each fsynced) would fill the disk and slow the node for everyone. The first refusal of a kind
from a client in a window is written at once (so an operator tailing the log sees the attack
start); further ones in the window are counted and written as one summary line when the window
closes (``flush``, called by a timer and at stop). The table of clients is bounded: past
``max_clients`` new clients are counted under one "other clients" row.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from node.audit.events import ACCESS_CONTROL_DECISION, MINOR_FAILURE, EventCode
from node.audit.log import AuditLog, AuditObject, Participant

OTHER_CLIENTS = "other clients"


@dataclass
class _Tally:
    first_detail: str
    count: int = 0  # refusals after the first, not yet written
    total: int = 1
    details: set[str] = field(default_factory=set)


class RefusalLedger:
    """Thread-safe; ``note`` is cheap (a dict update) except for the first of a window."""

    def __init__(self, audit: AuditLog, *, node_ae: str, window_seconds: float = 60.0, max_clients: int = 1024) -> None:
        self.audit = audit
        self.node_ae = node_ae
        self.window_seconds = window_seconds
        self.max_clients = max_clients
        self._lock = threading.Lock()
        self._tallies: dict[tuple[str, str], _Tally] = {}
        self._window_start = time.monotonic()

    def note(self, kind: str, client: str, detail: str, *, user: str = "") -> bool:
        """Record one refusal of ``kind`` ("association_timeout", "http_401", ...) by ``client``.

        True when this was the first of its window (written at once; callers log only those).
        """
        first = False
        with self._lock:
            pending = self._take() if time.monotonic() - self._window_start >= self.window_seconds else []
            key = (kind, client)
            if key not in self._tallies and len(self._tallies) >= self.max_clients:
                key = (kind, OTHER_CLIENTS)
            tally = self._tallies.get(key)
            if tally is None:
                self._tallies[key] = _Tally(first_detail=detail)
                first = True
            else:
                tally.count += 1
                tally.total += 1
                if len(tally.details) < 8:
                    tally.details.add(detail)
        for args in pending:
            self._write_summary(*args)
        if first:
            self._write(kind, key[1], detail, 1, user=user, summary=False)
        return first

    def flush(self) -> None:
        """Write the summaries of the window and start a new one."""
        with self._lock:
            pending = self._take()
        for args in pending:
            self._write_summary(*args)

    def _take(self) -> list[tuple[str, str, _Tally]]:
        out = [(kind, client, t) for (kind, client), t in self._tallies.items() if t.count]
        self._tallies = {}
        self._window_start = time.monotonic()
        return out

    def _write_summary(self, kind: str, client: str, tally: _Tally) -> None:
        details = sorted(tally.details) or [tally.first_detail]
        self._write(kind, client, "; ".join(details), tally.count, summary=True)

    def _write(self, kind: str, client: str, detail: str, count: int, *, user: str = "", summary: bool) -> None:
        desc = (
            f"{kind}: {count} more refusal(s) from this client in the last window" if summary else f"{kind}: {detail}"
        )
        self.audit.record(
            EventCode.SECURITY_ALERT,
            event_type=ACCESS_CONTROL_DECISION,
            outcome=MINOR_FAILURE,
            outcome_desc=desc[:500],
            participants=[
                Participant(user_id=user or "unknown", role="source", is_requestor=True, network_address=client),
                Participant(user_id=self.node_ae, role="destination"),
            ],
            objects=[
                AuditObject(type="node", id=client, details={"kind": kind, "count": count, "detail": detail[:500]})
            ],
        )
