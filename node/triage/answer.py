"""Stage 3 of the worker: answer each job. A decision becomes an SR, the worklist row and what is
forwarded (node/results/); then the job is finished, counted and audited.

Rule 6: every decision, no-assist included, is answered with an SR. Only a failure to write the
answer (disk, database, a study with no readable instance) sends a job back to the queue, and
after ``triage.max_attempts`` claims it is failed for good. A job sent back is not finished: it
keeps no ``finished_at``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from node import metrics
from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import MINOR_FAILURE, SUCCESS
from node.config import Settings
from node.db.engine import Database
from node.db.models import TriageJob
from node.db.states import JobState
from node.oplog import get_logger, study_ref
from node.results.contract import algorithm_info, triage_result
from node.results.outputs import ResultOutputs
from node.results.write import StoredReport, write_report
from node.store.ingest import Ingestor
from node.triage.batch import StudyWork
from node.triage.jobs import finish_job, requeue_job
from node.triage.model_api import ModelIdentity
from node.triage.policy import NoAssistReason, StudyDecision
from node.triage.preprocess import PREPROCESS_VERSION, preprocess_version
from node.worklist.priority import order_priority

log = get_logger("triage")

__all__ = ["Answerer", "preprocessing_summary"]

_MODEL_FAILED = (NoAssistReason.MODEL_ERROR, NoAssistReason.MODEL_TIMEOUT)


def preprocessing_summary(descriptions: list[str], version: str = PREPROCESS_VERSION) -> str:
    """The TID 4019 preprocessing parameter: the recipe shared by every image; each image's own
    description (window, size...) is in its image group of the SR."""
    if not descriptions:
        return f"{version}: no image preprocessed"
    if len(set(descriptions)) == 1:
        return descriptions[0]
    return f"{version}: {len(descriptions)} images, each described in its image group"


class Answerer:
    """Writes each job's answer and settles its row (done, requeued or failed) for one worker."""

    def __init__(self, settings: Settings, db: Database, ingestor: Ingestor, audit: AuditLog, worker_id: str) -> None:
        self.settings = settings
        self.db = db
        self.ingestor = ingestor
        self.audit = audit
        self.worker_id = worker_id
        self.outputs = ResultOutputs.of(settings)
        self._me = Participant(user_id=settings.dicom.ae_title, role="application")

    def answer(self, work: StudyWork, decision: StudyDecision, identity: ModelIdentity | None) -> None:
        """The SR for ``decision``; ``identity`` names the model the batch was run with (None: none loaded)."""
        try:
            report = self._write(work, decision, identity)
        except Exception as exc:  # any failure to write the answer: retried, then failed
            log.error("job_failed", job_id=work.job_id, error=type(exc).__name__, detail=str(exc)[:300])
            self.fail_or_retry(work, exc)
            return
        if not finish_job(self.db, work.job_id, JobState.DONE, worker_id=self.worker_id):
            # Our lease ran out and another worker retook the job: it writes the same SR (same
            # UIDs), so the answer still exists once; the row is theirs to finish.
            log.warning("job_retaken_meanwhile", job_id=work.job_id)
            return
        self._count(work, report)
        self._audit_answer(work, report)
        self.audit_job(work.study_uid, work.job_id, "triage job finished")
        log.info(
            "job_done",
            job_id=work.job_id,
            study_ref=study_ref(work.study_uid),
            priority=report.priority,
            worklist_priority=report.worklist_priority,
            priority_kept=bool(report.priority_kept_from),
            assist=report.assist,
            reason=report.reason,
            images=len(work.images),
        )

    def _write(self, work: StudyWork, decision: StudyDecision, identity: ModelIdentity | None) -> StoredReport:
        if not work.headers:
            raise RuntimeError("study has no readable instance")
        version = preprocess_version(work.profile.preprocessing)
        algorithm = algorithm_info(identity, work.profile, version, preprocessing_summary(work.preprocessing, version))
        # Every image given to the model is listed with its domain score and preprocessing.
        given = work.preprocessing if decision.domain_scores or decision.reason in _MODEL_FAILED else []
        result = triage_result(decision, work.profile, work.images, algorithm, given)
        evidence = list(work.images) if given else []
        context = work.images[0] if work.images else work.headers[0]
        return write_report(
            self.db,
            self.ingestor,
            job_id=work.job_id,
            job_queued_at=work.queued_at,
            study_context=context,
            evidence=evidence,
            result=result,
            own_ae=self.settings.dicom.ae_title,
            order_priority=order_priority(work.headers),
            outputs=self.outputs,
        )

    @staticmethod
    def _count(work: StudyWork, report: StoredReport) -> None:
        metrics.SRS_WRITTEN.labels(report.priority).inc()
        if not report.assist:
            metrics.NO_ASSIST.labels(report.reason).inc()
        queued = work.queued_at if work.queued_at.tzinfo else work.queued_at.replace(tzinfo=UTC)
        metrics.TRIAGE_LATENCY.observe((datetime.now(UTC) - queued).total_seconds())

    def _audit_answer(self, work: StudyWork, report: StoredReport) -> None:
        patient_id = str(work.headers[0].get("PatientID", ""))
        self.audit.record(
            EventCode.INSTANCES_TRANSFERRED,
            action="C",
            outcome=SUCCESS,
            outcome_desc=(
                f"SR created: priority {report.priority}"
                + (f" (kept from SR {report.priority_kept_from})" if report.priority_kept_from else "")
                + f", worklist priority {report.worklist_priority}, "
                + ("AI assessment" if report.assist else f"no AI assessment ({report.reason})")
            ),
            participants=[self._me],
            objects=[
                AuditObject(type="patient", id=patient_id),
                AuditObject(
                    type="study",
                    id=work.study_uid,
                    details={
                        "job_id": work.job_id,
                        "profile": work.profile.name,
                        "images_evaluated": len(work.images),
                        "skipped": work.skipped[:50],
                    },
                ),
                AuditObject(
                    type="report",
                    id=report.sop_instance_uid,
                    details={
                        "priority": report.priority,
                        "worklist_priority": report.worklist_priority,
                        "priority_kept_from": report.priority_kept_from,
                        "assist": report.assist,
                        "reason": report.reason,
                    },
                ),
            ],
        )

    def fail_or_retry(self, work: StudyWork, exc: Exception) -> None:
        """Back to the queue (not finished), or failed once the job was claimed max_attempts times."""
        with self.db.session() as session:
            job = session.get(TriageJob, work.job_id)
            attempts = job.attempts if job else self.settings.triage.max_attempts
        if attempts >= self.settings.triage.max_attempts:
            finish_job(self.db, work.job_id, JobState.FAILED, f"{type(exc).__name__}: {exc}", worker_id=self.worker_id)
        else:
            requeue_job(self.db, work.job_id, f"{type(exc).__name__}: {exc}", worker_id=self.worker_id)
        self.audit_job(work.study_uid, work.job_id, f"triage job error: {type(exc).__name__}", outcome=MINOR_FAILURE)

    def audit_job(self, study_uid: str, job_id: int, what: str, outcome: int = SUCCESS) -> None:
        self.audit.record(
            EventCode.APPLICATION_ACTIVITY,
            outcome=outcome,
            outcome_desc=what,
            participants=[self._me],
            objects=[AuditObject(type="study", id=study_uid, details={"job_id": job_id})],
        )
