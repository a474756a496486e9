"""Counts for `triage-node status`: what is stored and where the jobs stand."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from node.db.engine import Database
from node.db.models import Instance, Series, Study, TriageJob
from node.db.states import JobState, StabilityState


def node_status(db: Database) -> dict[str, Any]:
    with db.session() as session:
        jobs = dict(session.execute(select(TriageJob.state, func.count()).group_by(TriageJob.state)).all())
        studies_by_state = dict(
            session.execute(select(Study.stability_state, func.count()).group_by(Study.stability_state)).all()
        )
        return {
            "studies": session.scalar(select(func.count()).select_from(Study)) or 0,
            "series": session.scalar(select(func.count()).select_from(Series)) or 0,
            "instances": session.scalar(select(func.count()).select_from(Instance)) or 0,
            "bytes": int(session.scalar(select(func.coalesce(func.sum(Instance.size_bytes), 0))) or 0),
            "studies_receiving": studies_by_state.get(StabilityState.RECEIVING, 0),
            "studies_stable": studies_by_state.get(StabilityState.STABLE, 0),
            "jobs": {str(state): jobs.get(state, 0) for state in JobState},
        }
