"""The console's audit reader on a real audit log (node/audit AuditLog): the newest-first tail
across the 64 KiB read blocks, filters, one study's events, redaction, and a broken chain."""

from __future__ import annotations

import json
from pathlib import Path

from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.console import audit_read
from node.db.engine import Database


def test_tail_study_events_redaction_and_chain_status(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, db, source_id="test", fsync=False)
    me = Participant(user_id="TRIAGE_NODE", role="application")
    for i in range(400):  # ~180 KiB: the tail crosses several read blocks
        log.record(
            EventCode.INSTANCES_TRANSFERRED if i % 2 else EventCode.APPLICATION_ACTIVITY,
            outcome=4 if i % 7 == 0 else 0,
            outcome_desc=f"event {i} " + "x" * 300,
            participants=[me],
            objects=[
                AuditObject(type="patient", id=f"PAT-{i % 3}"),
                AuditObject(type="study", id=f"1.2.3.{i % 3}", details={"n": i}),
            ],
        )
    log.close()
    assert path.stat().st_size > 3 * audit_read.BLOCK

    every = audit_read.tail(path, limit=1000)
    assert [e["seq"] for e in every] == list(range(400, 0, -1))  # newest first, no line lost at block edges
    failures = audit_read.tail(path, limit=10, outcome="failure")
    assert len(failures) == 10 and all(e["outcome"] != 0 for e in failures)
    transfers = audit_read.tail(path, limit=5, code="110104")
    assert [e["seq"] for e in transfers] == [400, 398, 396, 394, 392]

    study = audit_read.study_events(path, "1.2.3.1")
    assert [e["seq"] for e in study][:3] == [398, 395, 392] and len(study) == 133
    assert audit_read.study_events(path, "1.2.3") == []  # a prefix of a UID is not that study

    hidden = audit_read.redact(study[0])
    assert hidden["objects"][0] == {"type": "patient", "id": audit_read.HIDDEN, "details": {}}
    assert "PAT-" not in json.dumps(hidden)

    chain = audit_read.ChainStatus()
    assert chain.get(path, db).ok
    lines = path.read_bytes().splitlines(keepends=True)
    lines[99] = lines[99].replace(b"event 99 ", b"event 98 ")
    path.write_bytes(b"".join(lines))
    broken = chain.get(path, db)  # the file changed: verified again
    assert not broken.ok and broken.bad_line == 100
    db.dispose()
