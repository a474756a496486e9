"""The outbox: one row per (destination, instance), states pending -> sent | dead.

Claiming does not add a state: a claimed row keeps ``pending`` and gets ``next_attempt_at``
pushed out by a lease, so a forwarder that dies mid-send leaves rows that simply become due
again. Right before a batch is sent its rows are marked ``IN_FLIGHT`` (in ``last_error``); a row
that is claimed with that mark was being sent by a process that died before recording the answer
(kill -9 between the destination's Success and our commit). The forwarder asks the destination
(C-FIND) whether it already holds such an instance before sending it again, so an instance the
destination acknowledged is not delivered twice; a destination that cannot answer gets it again
(receivers accept the same SOP Instance UID twice). On PostgreSQL the
claim uses SELECT ... FOR UPDATE SKIP LOCKED, so several node processes share one outbox; on
SQLite the in-process writer lock serialises claims.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, overload

from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from node.config import FhirDestination, ForwardDestination, ForwardingSection, Hl7Destination
from node.db.engine import Database
from node.db.models import OutboxItem
from node.store.read import instances_of_study

PENDING, SENT, DEAD = "pending", "sent", "dead"
# last_error of a row whose batch is being sent right now (replaced by the outcome when recorded)
IN_FLIGHT = "in flight: sent by a forwarder that has not recorded the answer yet"
# prefix of last_error when an attempt failed without a definite answer (no response, association
# lost after sending, or an in-doubt row whose check could not be made): still in doubt
IN_DOUBT = "in doubt: "


def destination_key(dest: ForwardDestination) -> str:
    """How a destination is named in the outbox: ``AET@host:port``."""
    return f"{dest.ae_title}@{dest.host}:{dest.port}"


@overload
def _utc(value: datetime) -> datetime: ...
@overload
def _utc(value: datetime | None) -> datetime | None: ...
def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Claimed:
    """A claimed outbox row, detached from its session."""

    id: int
    destination: str
    kind: str
    study_instance_uid: str
    sop_instance_uid: str
    path: str
    attempts: int
    created_at: datetime
    in_doubt: bool = False  # the last process sending it died before recording the answer


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> int:
    """INSERT ... ON CONFLICT DO NOTHING (the unique (destination, sop) key makes enqueue idempotent)."""
    if not rows:
        return 0
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    added = 0
    for start in range(0, len(rows), 500):  # stay under SQLite's bound-parameter limit
        stmt = (
            insert(OutboxItem)
            .values(rows[start : start + 500])
            .on_conflict_do_nothing(index_elements=["destination", "sop_instance_uid"])
            .returning(OutboxItem.id)
        )
        added += len(session.execute(stmt).all())  # RETURNING lists only the rows really inserted
    return added


def hl7_key(dest: Hl7Destination) -> str:
    """How an HL7 destination is named in the outbox: ``hl7:host:port``."""
    return f"hl7:{dest.host}:{dest.port}"


def fhir_key(dest: FhirDestination) -> str:
    """How a FHIR destination is named in the outbox: ``fhir:<base url>`` (cut to the column's 128)."""
    return f"fhir:{dest.url}"[:128]


def priority_update_key(sr_sop_instance_uid: str) -> str:
    """The outbox key of an HL7 priority update (the unique key is destination + UID, and the ORU
    of the same SR already uses the SR's UID)."""
    return generate_uid(entropy_srcs=["triage-node-hl7-priority", sr_sop_instance_uid])


def enqueue_study(
    session: Session,
    destinations: Sequence[ForwardDestination],
    *,
    study_uid: str,
    sr_sop_instance_uid: str,
    sr_path: str | None = None,
    now: datetime | None = None,
    extras: Mapping[str, str] | None = None,
    hl7: Sequence[Hl7Destination] = (),
    fhir: Sequence[FhirDestination] = (),
    raises_priority: bool = False,
) -> int:
    """Queue, inside the caller's transaction, per [[forward]] destination what its ``send`` names
    (the SR, ``extras``' summary card "sc" and PDF "pdf" SOP Instance UIDs, the study's other
    instances), and per [[hl7]] / [[fhir]] destination one message row built from the SR when it is
    sent (plus an HL7 priority update when configured and this SR raised the priority: the model only
    ever raises one). Rows already queued (or sent) are left alone. Returns the number of new rows."""
    if not destinations and not hl7 and not fhir:
        return 0
    now = now or _now()
    extras = dict(extras or {})
    rows_of_study = [(i.sop_instance_uid, i.path) for i in instances_of_study(session, study_uid)]
    paths = {sop: path for sop, path in rows_of_study}
    if sr_path is None:
        sr_path = paths.get(sr_sop_instance_uid)
    if sr_path is None:
        raise RuntimeError(f"SR {sr_sop_instance_uid} is not indexed; cannot queue it for forwarding")
    ours = {sr_sop_instance_uid, *extras.values()}
    rows: list[dict[str, Any]] = []

    def row(key: str, kind: str, sop: str, path: str) -> dict[str, Any]:
        return dict(
            destination=key,
            kind=kind,
            study_instance_uid=study_uid,
            sop_instance_uid=sop,
            path=path,
            state=PENDING,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
            last_error="",
        )

    for dest in destinations:
        key = destination_key(dest)
        if "study" in dest.send:
            rows.extend(row(key, "instance", sop, path) for sop, path in rows_of_study if sop not in ours)
        if "sr" in dest.send:
            rows.append(row(key, "sr", sr_sop_instance_uid, sr_path))
        for kind in ("sc", "pdf"):
            if kind in dest.send and kind in extras:
                sop = extras[kind]
                if sop not in paths:
                    raise RuntimeError(f"{kind} {sop} is not indexed; cannot queue it for forwarding")
                rows.append(row(key, kind, sop, paths[sop]))
    for h in hl7:
        rows.append(row(hl7_key(h), "hl7-oru", sr_sop_instance_uid, sr_path))
        if h.priority_update and raises_priority:
            rows.append(row(hl7_key(h), "hl7-priority", priority_update_key(sr_sop_instance_uid), sr_path))
    for f in fhir:
        rows.append(row(fhir_key(f), "fhir", sr_sop_instance_uid, sr_path))
    return _insert_ignoring_duplicates(session, rows)


def claim_due(db: Database, *, limit: int, lease_seconds: float, now: datetime | None = None) -> list[Claimed]:
    """Take up to ``limit`` due pending rows (oldest first) and lease them for ``lease_seconds``."""
    now = now or _now()
    query = (
        select(OutboxItem)
        .where(OutboxItem.state == PENDING, OutboxItem.next_attempt_at <= now)
        .order_by(OutboxItem.next_attempt_at, OutboxItem.id)
        .limit(limit)
    )
    if not db.is_sqlite:
        query = query.with_for_update(skip_locked=True)
    with db.write() as session:
        items = list(session.execute(query).scalars().all())
        lease_until = now + timedelta(seconds=lease_seconds)
        for item in items:
            item.next_attempt_at = lease_until
        return [
            Claimed(
                i.id,
                i.destination,
                i.kind,
                i.study_instance_uid,
                i.sop_instance_uid,
                i.path,
                i.attempts,
                _utc(i.created_at),
                i.last_error == IN_FLIGHT or i.last_error.startswith(IN_DOUBT),
            )
            for i in items
        ]


def backoff_seconds(policy: ForwardingSection, attempts_before: int, *, jitter: bool = True) -> float:
    """initial * 2^attempts, capped at max_backoff; up to 10 % jitter so retries do not march in step."""
    delay = min(policy.initial_backoff_seconds * (2 ** min(attempts_before, 40)), policy.max_backoff_seconds)
    if jitter:
        delay *= 1 + random.uniform(0, 0.1)
    return min(delay, policy.max_backoff_seconds * 1.1)


def release(db: Database, ids: Iterable[int], now: datetime | None = None) -> None:
    """Hand claimed rows back unattempted (due now), e.g. when the forwarder stops mid-round."""
    ids = list(ids)
    if not ids:
        return
    now = now or _now()
    with db.write() as session:
        for item in session.execute(
            select(OutboxItem).where(OutboxItem.id.in_(ids), OutboxItem.state == PENDING)
        ).scalars():
            item.next_attempt_at = now


def renew_lease(
    db: Database, ids: Iterable[int], lease_seconds: float, now: datetime | None = None, *, in_flight: bool = False
) -> None:
    """Push the lease of rows this process is about to send (the forwarder's heartbeat); with
    ``in_flight`` also mark them IN_FLIGHT (committed before the first byte goes out)."""
    ids = list(ids)
    if not ids:
        return
    until = (now or _now()) + timedelta(seconds=lease_seconds)
    values: dict[str, Any] = {"next_attempt_at": until}
    if in_flight:
        values["last_error"] = IN_FLIGHT
    with db.write() as session:
        session.execute(update(OutboxItem).where(OutboxItem.id.in_(ids), OutboxItem.state == PENDING).values(**values))


def mark_sent(db: Database, ids: Iterable[int], now: datetime | None = None) -> None:
    ids = list(ids)
    if not ids:
        return
    now = now or _now()
    with db.write() as session:
        for item in session.execute(select(OutboxItem).where(OutboxItem.id.in_(ids))).scalars():
            item.state = SENT
            item.attempts += 1
            item.sent_at = now
            item.last_attempt_at = now
            item.last_error = ""


def mark_failed(
    db: Database,
    failures: dict[int, str],
    policy: ForwardingSection,
    now: datetime | None = None,
    *,
    jitter: bool = True,
) -> list[int]:
    """Record a failed attempt per row: retry after a backoff, or dead once older than max_age.
    Returns the ids that became dead letters."""
    if not failures:
        return []
    now = now or _now()
    dead: list[int] = []
    with db.write() as session:
        for item in session.execute(
            select(OutboxItem).where(OutboxItem.id.in_(list(failures))).order_by(OutboxItem.id)
        ).scalars():
            if item.state != PENDING:
                continue
            delay = backoff_seconds(policy, item.attempts, jitter=jitter)
            item.attempts += 1
            item.last_attempt_at = now
            item.last_error = failures[item.id][:2000]
            age = (now - _utc(item.created_at)).total_seconds()
            if age >= policy.max_age_seconds:
                item.state = DEAD
                dead.append(item.id)
            else:
                item.next_attempt_at = now + timedelta(seconds=delay)
    return dead


def _as_dict(item: OutboxItem) -> dict[str, Any]:
    nxt = _utc(item.next_attempt_at)
    return {
        "id": item.id,
        "destination": item.destination,
        "kind": item.kind,
        "study_instance_uid": item.study_instance_uid,
        "sop_instance_uid": item.sop_instance_uid,
        "state": item.state,
        "attempts": item.attempts,
        "last_error": item.last_error,
        "next_attempt_at": nxt.isoformat() if nxt and item.state == PENDING else None,
        "created_at": _utc(item.created_at).isoformat(),
    }


def list_items(db: Database, states: Sequence[str] = (PENDING, DEAD)) -> list[dict[str, Any]]:
    with db.session() as session:
        items = (
            session.execute(select(OutboxItem).where(OutboxItem.state.in_(list(states))).order_by(OutboxItem.id))
            .scalars()
            .all()
        )
        return [_as_dict(i) for i in items]


def requeue(db: Database, ids: Sequence[int] | None = None, now: datetime | None = None) -> list[int]:
    """Give dead letters (all of them when ``ids`` is None) a fresh start: pending, due now, and a
    new max-age window. Returns the ids requeued."""
    now = now or _now()
    query = select(OutboxItem).where(OutboxItem.state == DEAD).order_by(OutboxItem.id)
    if ids is not None:
        query = query.where(OutboxItem.id.in_(list(ids)))
    with db.write() as session:
        items = list(session.execute(query).scalars().all())
        for item in items:
            item.state = PENDING
            item.attempts = 0
            item.created_at = now
            item.next_attempt_at = now
        return [i.id for i in items]


__all__ = [
    "DEAD",
    "IN_DOUBT",
    "IN_FLIGHT",
    "PENDING",
    "SENT",
    "Claimed",
    "backoff_seconds",
    "claim_due",
    "destination_key",
    "enqueue_study",
    "list_items",
    "mark_failed",
    "mark_sent",
    "release",
    "renew_lease",
    "requeue",
]
