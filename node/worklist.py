"""The reading worklist as the node keeps it: one row per triaged study, most urgent first,
and the rule that sets its priority over time (DESIGN rule 5).

A study's worklist priority is the maximum of

- the order's own priority, read from the study's headers (Requested Procedure Priority, also
  inside Request Attributes Sequence, and Scheduled Procedure Step Priority: STAT/HIGH -> HIGH,
  ROUTINE/MEDIUM -> MEDIUM, LOW -> LOW; MEDIUM when the order names none), and
- HIGH while an SR of this node has raised the study (an urgent finding present) and no person
  has cleared that raise.

So a later SR that cannot assess, or assesses lower, never lowers the row: the raise is kept
and the SR says so. Only a person clears it: a UPS moved to COMPLETED or CANCELED, or
``triage-node worklist clear`` (both audited by their callers). The model never sets LOW; a LOW
order stays LOW unless the model raises it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import case, select

from node.db.engine import Database
from node.db.models import WorklistItem

HIGH, MEDIUM, LOW = "HIGH", "MEDIUM", "LOW"
PRIORITY_ORDER = {HIGH: 0, MEDIUM: 1, LOW: 2}

#: DICOM order priorities (Requested Procedure Priority 0040,1003; Scheduled Procedure Step
#: Priority 0074,1200) -> worklist priority.
ORDER_PRIORITY_MAP = {"STAT": HIGH, "HIGH": HIGH, "ROUTINE": MEDIUM, "MEDIUM": MEDIUM, "LOW": LOW}


def _order_values(ds: Dataset) -> Iterable[str]:
    for keyword in ("RequestedProcedurePriority", "ScheduledProcedureStepPriority"):
        value = ds.get(keyword)
        if value:
            yield str(value)
    for item in ds.get("RequestAttributesSequence") or []:
        value = item.get("RequestedProcedurePriority")
        if value:
            yield str(value)


def order_priority(headers: Iterable[Dataset]) -> str:
    """The order's own priority as the study's instances carry it ("" when none says).

    When instances disagree, the most urgent value wins: raising is the safe direction.
    """
    found = [ORDER_PRIORITY_MAP[v.strip().upper()] for ds in headers for v in _order_values(ds)
             if v.strip().upper() in ORDER_PRIORITY_MAP]
    return min(found, key=PRIORITY_ORDER.__getitem__) if found else ""


def effective_priority(order: str, raised: bool) -> str:
    """max(order priority or MEDIUM, HIGH while raised)."""
    if raised:
        return HIGH
    return order if order in PRIORITY_ORDER else MEDIUM


def priority_rank() -> Any:
    """SQL expression ordering HIGH, MEDIUM, LOW."""
    return case((WorklistItem.priority == HIGH, 0), (WorklistItem.priority == MEDIUM, 1), else_=2)


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
        item.cleared_at = now or datetime.now(timezone.utc)
        item.cleared_by = by[:64]
        item.cleared_reason = reason
        item.priority = effective_priority(item.order_priority or "", raised=False)
    return Cleared(item.study_instance_uid, raised, before, item.priority)


def clear_raise(db: Database, study_uid: str, *, by: str, reason: str) -> Cleared | None:
    """A person clears a raised flag (``worklist clear``). None when the study has no row."""
    with db.write_lock, db.session() as session, session.begin():
        item = session.execute(select(WorklistItem).where(
            WorklistItem.study_instance_uid == study_uid)).scalar_one_or_none()
        if item is None:
            return None
        return clear_raise_in_session(item, by=by, reason=reason)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is None:  # SQLite hands back naive datetimes; they were written in UTC
        value = value.replace(tzinfo=timezone.utc)
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
        "cleared": ({"at": _iso(r.cleared_at), "by": r.cleared_by, "reason": r.cleared_reason}
                    if r.cleared_at else None),
        "queued_at": _iso(r.queued_at),
        "triaged_at": _iso(r.triaged_at),
        **calibration_fields(r.calibration),
    }


def calibration_fields(statement: str) -> dict[str, Any]:
    """What a worklist row says of its operating points (issue 13): calibrated or not, in words.

    Rows written before the node recorded it (empty statement) count as not calibrated."""
    from node.triage.profiles import NOT_CALIBRATED_TEXT

    text = statement or NOT_CALIBRATED_TEXT
    return {"calibrated": not text.startswith(NOT_CALIBRATED_TEXT), "calibration": text}


def worklist(db: Database) -> list[dict[str, Any]]:
    """HIGH before MEDIUM before LOW; within a priority, the longest-waiting study first."""
    with db.session() as session:
        rows = session.execute(select(WorklistItem).order_by(priority_rank(), WorklistItem.queued_at)).scalars().all()
        return [row_json(r) for r in rows]
