"""``Database.write()``: the one way the node writes. A block that ends commits; a block that
raises leaves nothing behind, and the writer lock is free again either way."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from node.db.engine import Database
from node.db.models import TriageJob
from node.db.states import JobState
from node.triage.jobs import queue_study


def test_write_commits_or_rolls_back(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    now = datetime.now(UTC)
    with db.write() as session:
        job, created = queue_study(session, "1.2.3", instance_count=2, now=now)
    assert created
    with pytest.raises(RuntimeError), db.write() as session:
        queue_study(session, "1.2.4", instance_count=1, now=now)
        raise RuntimeError("disk full")
    with db.write() as session:  # the lock was released; a queued job is reused, its count updated
        again, created = queue_study(session, "1.2.3", instance_count=3, now=now)
    assert not created and again.id == job.id
    with db.session() as session:
        rows = session.execute(select(TriageJob.study_instance_uid, TriageJob.state, TriageJob.instance_count)).all()
        assert rows == [("1.2.3", JobState.QUEUED, 3)]
        assert session.scalar(select(func.count()).select_from(TriageJob)) == 1
    db.dispose()
