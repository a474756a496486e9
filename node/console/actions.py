"""What the console may change, each audited with the operator's console session id.

- requeue dead letters of the outbox (``node.forward.outbox.requeue``);
- re-triage a study: a new queued job (the worker answers it with a new SR that names its
  predecessor, as for a study that received more instances);
- clear the AI's raise of a study (``node.worklist.rows.clear_raise``), with the operator's reason.

The console has no user names, only the token: the audit log records the session id (a public
handle, not the cookie secret) and the browser's address, so a person can be traced through
the log from their login to each action.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select

from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import MINOR_FAILURE, SUCCESS
from node.console.sessions import ConsoleSession
from node.db.engine import Database
from node.db.models import Study
from node.forward.outbox import DEAD, list_items, requeue
from node.triage.jobs import queue_study
from node.worklist.rows import Cleared, clear_raise

LOGIN = ("110122", "Login")
LOGOUT = ("110123", "Logout")


def operator(session: ConsoleSession) -> Participant:
    return Participant(
        user_id=f"console-session:{session.sid}", role="requestor", is_requestor=True, network_address=session.client
    )


def audit_login(audit: AuditLog | None, *, ok: bool, client: str, sid: str = "", logout: bool = False) -> None:
    if audit is None:
        return
    who = Participant(
        user_id=f"console-session:{sid}" if sid else "console",
        role="requestor",
        is_requestor=True,
        network_address=client,
    )
    desc = ("console logout" if logout else "console login") + ("" if ok else ": wrong token")
    audit.record(
        EventCode.USER_AUTHENTICATION,
        event_type=LOGOUT if logout else LOGIN,
        outcome=SUCCESS if ok else MINOR_FAILURE,
        outcome_desc=desc,
        participants=[who],
    )


def requeue_dead(
    db: Database, audit: AuditLog, session: ConsoleSession, *, item_id: int | None = None, destination: str = ""
) -> list[int]:
    """Requeue one dead letter, every dead letter of ``destination``, or (neither given) all of them."""
    if item_id is not None:
        ids: list[int] | None = [item_id]
    elif destination:
        ids = [i["id"] for i in list_items(db, states=(DEAD,)) if i["destination"] == destination]
    else:
        ids = None
    done = requeue(db, ids) if ids is None or ids else []
    scope = (
        f"item {item_id}"
        if item_id is not None
        else f"every dead letter of {destination}"
        if destination
        else "every dead letter"
    )
    audit.record(
        EventCode.APPLICATION_ACTIVITY,
        action="U",
        outcome=SUCCESS if done or item_id is None else MINOR_FAILURE,
        outcome_desc=f"outbox requeue from the console ({scope}): {len(done)} item(s) requeued",
        participants=[operator(session)],
        objects=[AuditObject(type="outbox", id=destination or "all", details={"requeued": done[:200]})],
    )
    return done


def queue_retriage(db: Database, audit: AuditLog, session: ConsoleSession, study_uid: str) -> int | None:
    """Queue a new triage job for the study; None when it is not in the index. A job already
    queued for it is reused (it will read every instance anyway)."""
    now = datetime.now(UTC)
    with db.write() as s:
        study = s.execute(select(Study).where(Study.study_instance_uid == study_uid)).scalar_one_or_none()
        if study is None:
            return None
        job, created = queue_study(s, study_uid, instance_count=study.instance_count, now=now)
        reused = not created
        job_id = job.id
    audit.record(
        EventCode.APPLICATION_ACTIVITY,
        action="E",
        outcome=SUCCESS,
        outcome_desc=f"re-triage requested from the console: job {job_id}"
        + (" (already queued)" if reused else " queued"),
        participants=[operator(session)],
        objects=[AuditObject(type="study", id=study_uid, details={"job_id": job_id})],
    )
    return job_id


def clear_flag(db: Database, audit: AuditLog, session: ConsoleSession, study_uid: str, reason: str) -> Cleared | None:
    """A person clears the AI's raise (rule 5), as ``triage-node worklist clear`` does; audited the same way."""
    by = f"console-session:{session.sid}"
    cleared = clear_raise(db, study_uid, by=by, reason=reason)
    if cleared is None:
        return None
    audit.record(
        EventCode.PROCEDURE_RECORD,
        action="U",
        outcome=SUCCESS,
        outcome_desc=(
            f"worklist priority raise cleared by {by}: {cleared.priority_before} -> {cleared.priority_after}"
            if cleared.changed
            else f"worklist clear by {by}: nothing to clear (priority {cleared.priority_after})"
        ),
        participants=[operator(session)],
        objects=[
            AuditObject(
                type="study",
                id=cleared.study_instance_uid,
                details={
                    "reason": reason,
                    "cleared_raise": cleared.raised_by_sr_uid,
                    "priority_before": cleared.priority_before,
                    "priority_after": cleared.priority_after,
                },
            )
        ],
    )
    return cleared
