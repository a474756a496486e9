"""The worklist rows (table ``worklist_item``, owned here with node/worklist/ups.py): the row a
result writes, a person's clear of an AI raise, and the JSON that ``triage-node worklist``,
the ops API and the console show. The priority rule itself is node/worklist/priority.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.uid import generate_uid
from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_sr import NOT_CALIBRATED_TEXT, PRIORITY_MEDIUM
from node.db.engine import Database
from node.db.models import WorklistItem
from node.worklist.priority import effective_priority, priority_rank
from node.worklist.states import SCHEDULED


@dataclass(frozen=True)
class Cleared:
    """What a clear did: the raise it removed (if any) and the priority before and after."""

    study_instance_uid: str
    raised_by_sr_uid: str
    priority_before: str
    priority_after: str

    @property
    def changed(self) -> bool:
        return bool(self.raised_by_sr_uid)


def clear_raise_in_session(item: WorklistItem, *, by: str, reason: str, now: datetime | None = None) -> Cleared:
    """Remove the AI raise of ``item`` (inside the caller's transaction)."""
    before = item.priority
    raised = item.raised_by_sr_uid or ""
    if raised:
        item.raised_by_sr_uid = ""
        item.priority_kept = False
        item.cleared_at = now or datetime.now(UTC)
        item.cleared_by = by[:64]
        item.cleared_reason = reason
        item.priority = effective_priority(item.order_priority or "", raised=False)
    return Cleared(item.study_instance_uid, raised, before, item.priority)


def clear_raise(db: Database, study_uid: str, *, by: str, reason: str) -> Cleared | None:
    """A person clears a raised flag (``worklist clear``). None when the study has no row."""
    with db.write() as session:
        item = session.execute(
            select(WorklistItem).where(WorklistItem.study_instance_uid == study_uid)
        ).scalar_one_or_none()
        if item is None:
            return None
        return clear_raise_in_session(item, by=by, reason=reason)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat()


def row_json(r: WorklistItem) -> dict[str, Any]:
    return {
        "study_instance_uid": r.study_instance_uid,
        "priority": r.priority,
        "order_priority": r.order_priority or None,
        "ai_raised": bool(r.raised_by_sr_uid),
        "raised_by_sr_uid": r.raised_by_sr_uid or None,
        "priority_kept": bool(r.priority_kept),
        "assist": bool(r.assist),
        "reason": r.reason,
        "profile": r.profile,
        "sr_sop_instance_uid": r.sr_sop_instance_uid,
        "findings": json.loads(r.findings or "[]"),
        "images": json.loads(r.images or "[]"),
        "cleared": (
            {"at": _iso(r.cleared_at), "by": r.cleared_by, "reason": r.cleared_reason} if r.cleared_at else None
        ),
        "queued_at": _iso(r.queued_at),
        "triaged_at": _iso(r.triaged_at),
        **calibration_fields(r.calibration),
    }


def calibration_fields(statement: str) -> dict[str, Any]:
    """What a worklist row says of its operating points (issue 13): calibrated or not, in words.

    Rows written before the node recorded it (empty statement) count as not calibrated."""
    text = statement or NOT_CALIBRATED_TEXT
    return {"calibrated": not text.startswith(NOT_CALIBRATED_TEXT), "calibration": text}


def worklist(db: Database) -> list[dict[str, Any]]:
    """HIGH before MEDIUM before LOW; within a priority, the longest-waiting study first."""
    with db.session() as session:
        rows = session.execute(select(WorklistItem).order_by(priority_rank(), WorklistItem.queued_at)).scalars().all()
        return [row_json(r) for r in rows]


def study_row(session: Session, study_uid: str) -> WorklistItem | None:
    """The study's worklist row, if it was triaged."""
    return session.execute(
        select(WorklistItem).where(WorklistItem.study_instance_uid == study_uid)
    ).scalar_one_or_none()


def current_row(db: Database, study_uid: str) -> WorklistItem | None:
    """The study's worklist row as committed now (detached; read-only use)."""
    with db.session() as session:
        return study_row(session, study_uid)


@dataclass(frozen=True)
class ReportRow:
    """What one stored SR says for the study's row (node/results/write.py builds it)."""

    study_instance_uid: str
    job_id: int
    queued_at: datetime
    sr_sop_instance_uid: str
    sr_series_instance_uid: str
    raises: bool  # this SR's own urgent finding raises the study (not a kept raise)
    order_priority: str
    assist: bool
    reason: str
    profile: str
    calibration: str
    findings_json: str
    images_json: str


def record_report(session: Session, report: ReportRow, *, now: datetime) -> WorklistItem:
    """Create or update the study's row for a new SR (inside the caller's transaction).

    The row is the truth for a raise: an SR that raises sets it; any other keeps a raise that
    nobody cleared (``priority_kept``), and a clear that happened while the SR was built stays
    cleared (rule 5)."""
    uid = report.study_instance_uid
    item = study_row(session, uid)
    if item is None:
        item = WorklistItem(
            study_instance_uid=uid,
            job_id=report.job_id,
            queued_at=report.queued_at,
            triaged_at=now,
            priority=PRIORITY_MEDIUM,
            raised_by_sr_uid="",
            ups_sop_instance_uid=generate_uid(entropy_srcs=["triage-node-ups", uid]),
            procedure_step_state=SCHEDULED,
            transaction_uid="",
            state_changed_at=now,
        )
        session.add(item)
    if report.raises:
        item.raised_by_sr_uid, item.raised_at, item.priority_kept = report.sr_sop_instance_uid, now, False
    else:
        item.priority_kept = bool(item.raised_by_sr_uid)
    item.order_priority = report.order_priority
    item.priority = effective_priority(report.order_priority, raised=bool(item.raised_by_sr_uid))
    item.assist = report.assist
    item.reason = report.reason
    item.profile = report.profile
    item.calibration = report.calibration
    item.sr_sop_instance_uid = report.sr_sop_instance_uid
    item.sr_series_instance_uid = report.sr_series_instance_uid
    item.job_id = report.job_id
    item.findings = report.findings_json
    item.images = report.images_json
    item.queued_at = report.queued_at
    item.triaged_at = now
    return item
