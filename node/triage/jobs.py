"""The triage job queue (table ``triage_job``; its only writer): queue a study (the stability
tick, a re-triage from the console), claim (row lock; SKIP LOCKED on PostgreSQL), heartbeat,
finish, and take back jobs whose worker died (rule 3: a running job of a dead worker is retaken).

Several worker processes (on several hosts) share the table. A claimed job is leased: its
worker renews ``heartbeat_at`` while it works, and any worker retakes a running job whose
heartbeat is older than the lease (``triage.stale_job_seconds``). A worker that was only slow
and finishes after its job was retaken writes the same SR (its UIDs derive from the job id, so
the second store is a duplicate) and its ``finish_job`` no longer matches (the row names
another worker), so each job's answer exists once.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, true, update
from sqlalchemy.orm import Session

from node.db.dml import rowcount
from node.db.engine import Database
from node.db.models import TriageJob
from node.db.states import JobState


def _now() -> datetime:
    return datetime.now(UTC)


def queue_study(session: Session, study_uid: str, *, instance_count: int, now: datetime) -> tuple[TriageJob, bool]:
    """Queue a triage of the study (inside the caller's transaction); returns (job, created).

    A job already queued and not yet started is reused: it reads every instance of the study
    when it runs, so a second one would only answer twice. Its instance count is brought up to date.
    """
    pending = session.execute(
        select(TriageJob).where(TriageJob.study_instance_uid == study_uid, TriageJob.state == JobState.QUEUED)
    ).scalar_one_or_none()
    if pending is not None:
        pending.instance_count = instance_count
        return pending, False
    job = TriageJob(study_instance_uid=study_uid, state=JobState.QUEUED, queued_at=now, instance_count=instance_count)
    session.add(job)
    session.flush()
    return job, True


def claim_jobs(db: Database, worker_id: str, limit: int) -> list[TriageJob]:
    """Move up to ``limit`` queued jobs to running for this worker, oldest first."""
    now = _now()
    with db.write() as session:
        ids = (
            session.execute(
                select(TriageJob.id)
                .where(TriageJob.state == JobState.QUEUED)
                .order_by(TriageJob.queued_at, TriageJob.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
            .scalars()
            .all()
        )
        claimed = []
        for job_id in ids:
            moved = rowcount(
                session.execute(
                    update(TriageJob)
                    .where(TriageJob.id == job_id, TriageJob.state == JobState.QUEUED)
                    .values(
                        state=JobState.RUNNING,
                        started_at=now,
                        heartbeat_at=now,
                        worker=worker_id,
                        attempts=TriageJob.attempts + 1,
                    )
                )
            )
            if moved:
                claimed.append(session.get(TriageJob, job_id))
        return [job for job in claimed if job is not None]


def heartbeat(db: Database, job_ids: list[int], worker_id: str | None = None) -> int:
    """Renew the lease of our running jobs; returns how many still belong to us."""
    if not job_ids:
        return 0
    mine = (TriageJob.worker == worker_id) if worker_id is not None else true()
    with db.write() as session:
        return rowcount(
            session.execute(
                update(TriageJob)
                .where(TriageJob.id.in_(job_ids), TriageJob.state == JobState.RUNNING, mine)
                .values(heartbeat_at=_now())
            )
        )


def finish_job(db: Database, job_id: int, state: JobState, error: str = "", worker_id: str | None = None) -> bool:
    """Mark the job done/failed. With ``worker_id`` only while the job is still ours (not retaken)."""
    fence = (
        ((TriageJob.worker == worker_id) & (TriageJob.state == JobState.RUNNING)) if worker_id is not None else true()
    )
    with db.write() as session:
        return bool(
            rowcount(
                session.execute(
                    update(TriageJob)
                    .where(TriageJob.id == job_id, fence)
                    .values(state=state, finished_at=_now(), error=error[:2000])
                )
            )
        )


def requeue_job(db: Database, job_id: int, error: str, worker_id: str | None = None) -> None:
    """Back to the queue after a failure to write the answer: not finished, so no ``finished_at``."""
    fence = (
        ((TriageJob.worker == worker_id) & (TriageJob.state == JobState.RUNNING)) if worker_id is not None else true()
    )
    with db.write() as session:
        session.execute(
            update(TriageJob)
            .where(TriageJob.id == job_id, fence)
            .values(state=JobState.QUEUED, finished_at=None, error=error[:2000])
        )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _dead_here(worker: str, host_prefix: str) -> bool:
    """A worker id of this host (``host:pid:obj``) whose process no longer exists."""
    if not worker.startswith(host_prefix):
        return False
    try:
        pid = int(worker[len(host_prefix) :].split(":", 1)[0])
    except ValueError:
        return False
    return pid != os.getpid() and not _pid_alive(pid)


def requeue_orphans(
    db: Database, *, host_prefix: str, worker_id: str, stale_seconds: float, max_attempts: int
) -> tuple[int, int]:
    """Running jobs of a dead worker go back to the queue (or to failed after max_attempts).

    A worker is dead when its lease ran out (no heartbeat for ``stale_seconds``: another host
    or process died), or at once when its id names this host and a process id that no longer
    exists (we restarted). Another live process on this host keeps its jobs.
    """
    cutoff = _now() - timedelta(seconds=stale_seconds)
    with db.write() as session:
        rows = session.execute(
            select(TriageJob.id, TriageJob.worker, TriageJob.heartbeat_at, TriageJob.attempts)
            .where(TriageJob.state == JobState.RUNNING, TriageJob.worker != worker_id)
            .with_for_update(skip_locked=True)
        ).all()
        requeued = failed = 0
        for job_id, worker, beat, attempts in rows:
            beat = beat if beat is None or beat.tzinfo else beat.replace(tzinfo=UTC)
            if not ((beat is not None and beat < cutoff) or _dead_here(worker or "", host_prefix)):
                continue
            if attempts >= max_attempts:
                session.execute(
                    update(TriageJob)
                    .where(TriageJob.id == job_id)
                    .values(state=JobState.FAILED, finished_at=_now(), error="worker died too often on this job")
                )
                failed += 1
            else:
                session.execute(
                    update(TriageJob).where(TriageJob.id == job_id).values(state=JobState.QUEUED, finished_at=None)
                )
                requeued += 1
    return requeued, failed
