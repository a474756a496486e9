"""One stability tick, run by APScheduler every tick_seconds (and once at start-up).

The clock lives in the database (study.last_arrival_at), so a study whose quiet period ended
while the node was down is queued by the first tick after start (rule 3). A queued job that
has not started yet already covers late instances, so no second queued job is added for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update

from node.db.dml import rowcount
from node.db.engine import Database
from node.db.models import Study
from node.db.states import StabilityState
from node.triage.jobs import queue_study


@dataclass(frozen=True)
class QueuedJob:
    job_id: int
    study_instance_uid: str
    instance_count: int
    patient_pk: int


def queue_stable_studies(db: Database, quiet_seconds: float, now: datetime | None = None) -> list[QueuedJob]:
    now = now or datetime.now(UTC)
    cutoff = now - timedelta(seconds=quiet_seconds)
    queued: list[QueuedJob] = []
    with db.write() as session:
        rows = session.execute(
            select(Study.id, Study.study_instance_uid, Study.instance_count, Study.patient_pk, Study.last_arrival_at)
            .where(Study.stability_state == StabilityState.RECEIVING, Study.last_arrival_at <= cutoff)
            .order_by(Study.last_arrival_at)
            .with_for_update(skip_locked=True)
        ).all()
        for study_pk, uid, count, patient_pk, last_arrival in rows:
            # Only flip if no instance arrived since we read the row (another process may write).
            flipped = rowcount(
                session.execute(
                    update(Study)
                    .where(
                        Study.id == study_pk,
                        Study.stability_state == StabilityState.RECEIVING,
                        Study.last_arrival_at == last_arrival,
                    )
                    .values(stability_state=StabilityState.STABLE)
                )
            )
            if not flipped:
                continue
            job, created = queue_study(session, uid, instance_count=count, now=now)
            if created:
                queued.append(QueuedJob(job.id, uid, count, patient_pk))
    return queued
