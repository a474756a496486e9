"""The named states the index keeps as text columns. ``StrEnum`` values are the strings already
stored, so rows written before these names existed read the same and no migration is needed."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """A triage job (``triage_job.state``): queued -> running -> done | failed; a running job of a
    dead worker goes back to queued (rule 3)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


#: Jobs a worker still has to answer (queue depth).
OPEN_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)


class StabilityState(StrEnum):
    """A study's quiet-period clock (``study.stability_state``): receiving until no instance came
    for ``quiet_seconds``, then stable (and a job is queued); a late instance makes it receiving again."""

    RECEIVING = "receiving"
    STABLE = "stable"


__all__ = ["OPEN_JOB_STATES", "JobState", "StabilityState"]
