"""Where a decision becomes DICOM and rows: the SR (via dicom_sr), stored like a received
instance, the summary card / PDF, the study's worklist row (node/worklist/rows.py) and, in the
same transaction, the outbox rows for every destination (node/forward/outbox.py).

A raise by an earlier SR that this one does not repeat is kept, and the SR says so (rule 5:
only a person lowers a raised study).

UIDs of the SR are derived from the job, so a job retried after a crash produces the same
SR (stored once, the duplicate kept as the first copy): each job's answer exists exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, generate_uid

import dicom_sr
from dicom_sr import SRReference, TriageResult
from node import __version__
from node.config import ForwardDestination
from node.db.engine import Database
from node.forward.outbox import enqueue_study
from node.own_instances import OWN_MANUFACTURER
from node.results.contract import keep_raise
from node.results.outputs import ResultOutputs, store_summary
from node.store.ingest import Ingestor, encode_own_instance
from node.worklist.rows import ReportRow, current_row, record_report

SR_SERIES_NUMBER = 9901


@dataclass(frozen=True)
class StoredReport:
    sop_instance_uid: str
    series_instance_uid: str
    priority: str  # the SR's (the AI's) priority, HIGH only when raised or kept
    assist: bool
    reason: str
    worklist_priority: str = ""  # the study's effective worklist priority after this SR
    priority_kept_from: str = ""


def _findings_json(result: TriageResult) -> str:
    return json.dumps(
        [
            {
                "finding": f.finding.meaning,
                "code": f.finding.value,
                "state": str(f.state),
                "score": round(f.score, 6),
                "threshold": f.threshold,
                "indeterminate_band": [f.band_low, f.band_high],
                "urgent": f.urgent,
                "calibration": f.calibration or result.algorithm.calibration,
            }
            for f in result.findings
        ]
    )


def _images_json(result: TriageResult) -> str:
    return json.dumps(
        [
            {
                "sop_instance_uid": a.image.sop_instance_uid,
                "domain_score": None if a.domain_score is None else round(a.domain_score, 6),
                "evaluated": a.evaluated,
                "preprocessing": a.preprocessing,
            }
            for a in result.images
        ]
    )


def write_report(
    db: Database,
    ingestor: Ingestor,
    *,
    job_id: int,
    job_queued_at: datetime,
    study_context: Dataset,
    evidence: list[Dataset],
    result: TriageResult,
    own_ae: str,
    forward: Sequence[ForwardDestination] = (),
    order_priority: str = "",
    outputs: ResultOutputs | None = None,
) -> StoredReport:
    """Build the SR, store it durably and indexed (without re-opening the study), store the summary
    card / PDF when configured, update the worklist and, in the same transaction, queue what each
    [[forward]] ``send`` names and the [[hl7]] / [[fhir]] messages (``outputs``; default: ``forward`` only).

    ``result`` is this job's own assessment; a raise of an earlier SR that nobody cleared is kept
    (the SR says so). ``order_priority`` is the order's own priority ("" when none is given)."""
    outputs = outputs or ResultOutputs(forward=tuple(forward))
    study_uid = str(study_context.StudyInstanceUID)
    sop_uid = generate_uid(entropy_srcs=["triage-node-sr", study_uid, str(job_id)])
    series_uid = generate_uid(entropy_srcs=["triage-node-sr-series", study_uid, str(job_id)])
    previous = current_row(db, study_uid)
    predecessor = None
    if previous is not None and previous.sr_sop_instance_uid and previous.job_id != job_id:
        predecessor = SRReference(
            study_uid, previous.sr_series_instance_uid, str(Comprehensive3DSRStorage), previous.sr_sop_instance_uid
        )
    if previous is not None and previous.raised_by_sr_uid != sop_uid:
        result = keep_raise(result, previous.raised_by_sr_uid)
    sr = dicom_sr.build_triage_sr(
        result,
        study_context,
        evidence,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=OWN_MANUFACTURER,
        manufacturer_model_name=OWN_MANUFACTURER,
        software_versions=__version__,
        predecessor=predecessor,
    )
    meta, body = encode_own_instance(sr)
    outcome = ingestor.store(meta, body, calling_ae=own_ae, touch_stability=False)
    if not outcome.ok:
        raise RuntimeError(f"could not store the SR: 0x{outcome.status:04X} {outcome.reason}")
    extras = store_summary(
        ingestor,
        outputs,
        result=result,
        study_context=study_context,
        evidence=evidence,
        sr_sop_instance_uid=sop_uid,
        job_id=job_id,
        own_ae=own_ae,
    )
    reason = "" if result.assist else (result.no_assist_reason.value if result.no_assist_reason else "")
    raises = result.priority == dicom_sr.PRIORITY_HIGH and result.priority_kept_from is None
    now = datetime.now(UTC)
    row = ReportRow(
        study_instance_uid=study_uid,
        job_id=job_id,
        queued_at=job_queued_at,
        sr_sop_instance_uid=sop_uid,
        sr_series_instance_uid=series_uid,
        raises=raises,
        order_priority=order_priority,
        assist=result.assist,
        reason=reason,
        profile=result.algorithm.profile_name,
        calibration=result.algorithm.calibration,
        findings_json=_findings_json(result),
        images_json=_images_json(result),
    )
    with db.write() as session:
        item = record_report(session, row, now=now)
        enqueue_study(
            session,
            outputs.forward,
            study_uid=study_uid,
            sr_sop_instance_uid=sop_uid,
            now=now,
            extras=extras,
            hl7=outputs.hl7,
            fhir=outputs.fhir,
            raises_priority=raises,
        )
        worklist_priority = item.priority
    return StoredReport(
        sop_uid, series_uid, result.priority, result.assist, reason, worklist_priority, result.priority_kept_from or ""
    )


__all__ = ["SR_SERIES_NUMBER", "StoredReport", "write_report"]
