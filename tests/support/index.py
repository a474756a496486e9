"""Reading what the node kept: index rows, jobs, worklist rows and audit lines (straight from the
database and the audit file, not through the code under test's own readers where avoidable)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

SR_MODALITY = "SR"


def index_snapshot(db: Any) -> dict[str, Any]:
    """Rows of the index as plain dicts keyed by UID (``db`` is a node.db.engine.Database)."""
    from sqlalchemy import select

    from node.db.models import Instance, Patient, Series, Study, TriageJob

    def rows(session: Any, model: Any) -> list[dict[str, Any]]:
        return [
            {c.name: getattr(obj, c.key) for c in model.__table__.columns}
            for obj in session.execute(select(model)).scalars()
        ]

    with db.session() as session:
        return {
            "patients": {(r["patient_id"], r["issuer"]): r for r in rows(session, Patient)},
            "studies": {r["study_instance_uid"]: r for r in rows(session, Study)},
            "series": {r["series_instance_uid"]: r for r in rows(session, Series)},
            "instances": {r["sop_instance_uid"]: r for r in rows(session, Instance)},
            "jobs": rows(session, TriageJob),
        }


def audit_entries(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def audit_codes(entries: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"]["code"] for e in entries]


def open_db(url: str):  # type: ignore[no-untyped-def]
    from node.db.engine import Database

    return Database(url, migrate=False)


def worklist_row(db, study_uid: str) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    from node.worklist.rows import worklist

    return next((row for row in worklist(db) if row["study_instance_uid"] == study_uid), None)


def study_instances(db, study_uid: str) -> list[tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    """(modality, sop_instance_uid, transfer_syntax_uid, path) of every indexed instance of a study."""
    from node.db.models import Instance, Series, Study

    with db.session() as session:
        rows = session.execute(
            select(Series.modality, Instance.sop_instance_uid, Instance.transfer_syntax_uid, Instance.path)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_uid)
            .order_by(Instance.id)
        ).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def sr_instances(db, study_uid: str) -> list[tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    return [row for row in study_instances(db, study_uid) if row[0] == SR_MODALITY]


def study_jobs(db, study_uid: str) -> list[Any]:  # type: ignore[no-untyped-def]
    from node.db.models import TriageJob

    with db.session() as session:
        return list(
            session.execute(select(TriageJob).where(TriageJob.study_instance_uid == study_uid).order_by(TriageJob.id))
            .scalars()
            .all()
        )
