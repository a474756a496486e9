"""The reading worklist as the node keeps it: one row per triaged study, most urgent first."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import case, select

from node.db.engine import Database
from node.db.models import WorklistItem

PRIORITY_ORDER = {"HIGH": 0, "MEDIUM": 1}


def worklist(db: Database) -> list[dict[str, Any]]:
    """HIGH before MEDIUM; within a priority, the longest-waiting study first."""
    rank = case((WorklistItem.priority == "HIGH", 0), else_=1)
    with db.session() as session:
        rows = session.execute(select(WorklistItem).order_by(rank, WorklistItem.queued_at)).scalars().all()
        return [{
            "study_instance_uid": r.study_instance_uid,
            "priority": r.priority,
            "assist": bool(r.assist),
            "reason": r.reason,
            "profile": r.profile,
            "sr_sop_instance_uid": r.sr_sop_instance_uid,
            "findings": json.loads(r.findings or "[]"),
            "queued_at": r.queued_at.isoformat() if r.queued_at else None,
            "triaged_at": r.triaged_at.isoformat() if r.triaged_at else None,
            **calibration_fields(r.calibration),
        } for r in rows]


def calibration_fields(statement: str) -> dict[str, Any]:
    """What a worklist row says of its operating points (issue 13): calibrated or not, in words.

    Rows written before the node recorded it (empty statement) count as not calibrated."""
    from node.triage.profiles import NOT_CALIBRATED_TEXT

    text = statement or NOT_CALIBRATED_TEXT
    return {"calibrated": not text.startswith(NOT_CALIBRATED_TEXT), "calibration": text}
