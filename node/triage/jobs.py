"""Job rows for the worker: claim (row lock; SKIP LOCKED on PostgreSQL), heartbeat, finish,
and take back jobs whose worker died (rule 3: a running job of a dead worker is retaken).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from sqlalchemy import or_, select, update

from node.db.engine import Database
from node.db.models import TriageJob


def _now() -> datetime:
    return datetime.now(timezone.utc)


def claim_jobs(db: Database, worker_id: str, limit: int) -> list[TriageJob]:
    """Move up to ``limit`` queued jobs to running for this worker, oldest first."""
    now = _now()
    with db.write_lock, db.session() as session, session.begin():
        ids = session.execute(
            select(TriageJob.id).where(TriageJob.state == "queued").order_by(TriageJob.queued_at, TriageJob.id)
            .limit(limit).with_for_update(skip_locked=True)).scalars().all()
        claimed = []
        for job_id in ids:
            moved = session.execute(
                update(TriageJob).where(TriageJob.id == job_id, TriageJob.state == "queued")
                .values(state="running", started_at=now, heartbeat_at=now, worker=worker_id,
                        attempts=TriageJob.attempts + 1)).rowcount
            if moved:
                claimed.append(session.get(TriageJob, job_id))
        return [job for job in claimed if job is not None]


def heartbeat(db: Database, job_ids: list[int]) -> None:
    with db.write_lock, db.session() as session, session.begin():
        session.execute(update(TriageJob).where(TriageJob.id.in_(job_ids), TriageJob.state == "running")
                        .values(heartbeat_at=_now()))


def finish_job(db: Database, job_id: int, state: str, error: str = "") -> None:
    with db.write_lock, db.session() as session, session.begin():
        session.execute(update(TriageJob).where(TriageJob.id == job_id)
                        .values(state=state, finished_at=_now(), error=error[:2000]))


def requeue_job(db: Database, job_id: int, error: str) -> None:
    """Back to the queue after a failure to write the answer: not finished, so no ``finished_at``."""
    with db.write_lock, db.session() as session, session.begin():
        session.execute(update(TriageJob).where(TriageJob.id == job_id)
                        .values(state="queued", finished_at=None, error=error[:2000]))


def requeue_orphans(db: Database, *, host_prefix: str, worker_id: str, stale_seconds: float,
                    max_attempts: int) -> tuple[int, int]:
    """Running jobs of a dead worker go back to the queue (or to failed after max_attempts).

    A worker is dead when its id names this host but not this process (we restarted), or
    when its heartbeat is older than ``stale_seconds`` (another host died).
    """
    cutoff = _now() - timedelta(seconds=stale_seconds)
    orphan = (TriageJob.state == "running") & (TriageJob.worker != worker_id) & or_(
        TriageJob.worker.startswith(host_prefix), TriageJob.heartbeat_at < cutoff)
    with db.write_lock, db.session() as session, session.begin():
        failed = session.execute(update(TriageJob).where(orphan, TriageJob.attempts >= max_attempts)
                                 .values(state="failed", finished_at=_now(),
                                         error="worker died too often on this job")).rowcount
        requeued = session.execute(update(TriageJob).where(orphan)
                                   .values(state="queued", finished_at=None)).rowcount
    return requeued, failed
