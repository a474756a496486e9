"""Where a decision becomes DICOM: the SR (via dicom_sr), stored like a received instance,
and the study's worklist row (priority HIGH or MEDIUM, never LOW).

UIDs of the SR are derived from the job, so a job retried after a crash produces the same
SR (stored once, the duplicate kept as the first copy): each job's answer exists exactly once.
"""

from __future__ import annotations


import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import Comprehensive3DSRStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid
from sqlalchemy import select

import dicom_sr
from dicom_sr import AlgorithmInfo, Code, FindingResult, ImageRef, SRReference, TriageResult
from node import __version__
from node.db.engine import Database
from node.config import ForwardDestination
from node.db.models import WorklistItem
from node.forward.outbox import enqueue_study
from node.store.ingest import Ingestor
from node.triage.model import ModelIdentity
from node.triage.policy import REASON_TEXT, NoAssistReason, StudyDecision
from node.triage.profiles import TriageProfile

ALGORITHM_NAME = "triage-node MedSigLIP zero-shot triage"
SR_SERIES_NUMBER = 9901


@dataclass(frozen=True)
class StoredReport:
    sop_instance_uid: str
    series_instance_uid: str
    priority: str
    assist: bool
    reason: str


def image_ref(ds: Dataset) -> ImageRef:
    return ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))


def algorithm_info(identity: ModelIdentity | None, profile: TriageProfile, preprocessing_version: str,
                   preprocessing_description: str) -> AlgorithmInfo:
    return AlgorithmInfo(
        name=ALGORITHM_NAME, version=__version__,
        # No model loaded (a model-unavailable no-assist SR): say so; AlgorithmInfo needs non-empty text.
        model_id=identity.model_id if identity else "not loaded",
        model_revision=identity.revision if identity else "not loaded",
        weights_sha256=identity.weights_sha256 if identity else "not loaded",
        profile_name=profile.name, profile_version=profile.version,
        preprocessing_version=preprocessing_version,
        preprocessing_description=preprocessing_description,
        is_test_model=bool(identity and identity.is_test_model),
        probe_versions=profile.probe_versions())


def triage_result(decision: StudyDecision, profile: TriageProfile, images: list[Dataset],
                  algorithm: AlgorithmInfo) -> TriageResult:
    """Turn the policy's decision over ``images`` (the decide() input order) into the SR contract."""
    if not decision.assist:
        reason = decision.reason or NoAssistReason.MODEL_ERROR
        return TriageResult(assist=False, priority=dicom_sr.PRIORITY_MEDIUM,
                            no_assist_reason=Code(str(reason), "99TRIAGE", reason_meaning(reason)),
                            no_assist_text=REASON_TEXT[reason], findings=(), evaluated_images=(),
                            algorithm=algorithm)
    evaluated = tuple(image_ref(images[i]) for i in decision.evaluated)
    specs = {f.key: f for f in profile.findings}
    findings = tuple(
        FindingResult(finding=Code(*specs[s.key].code), state=dicom_sr.FindingState(str(s.state)),
                      score=float(s.score), threshold=float(specs[s.key].threshold),
                      urgent=specs[s.key].urgency == "high", source_images=evaluated)
        for s in decision.findings)
    return TriageResult(assist=True, priority=decision.priority, no_assist_reason=None, no_assist_text=None,
                        findings=findings, evaluated_images=evaluated, algorithm=algorithm)


def reason_meaning(reason: NoAssistReason) -> str:
    return {
        NoAssistReason.MODEL_UNAVAILABLE: "AI model not available",
        NoAssistReason.MODEL_ERROR: "AI model error",
        NoAssistReason.MODEL_TIMEOUT: "AI model timeout",
        NoAssistReason.NO_ELIGIBLE_IMAGE: "No eligible image for the triage profile",
        NoAssistReason.OUT_OF_DOMAIN: "Images outside the triage profile's domain",
        NoAssistReason.URGENT_INDETERMINATE: "Urgent finding indeterminate",
    }[reason]


def _encode(ds: Dataset) -> tuple[FileMetaDataset, bytes]:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return meta, buf.getvalue()


def current_report(db: Database, study_uid: str) -> WorklistItem | None:
    with db.session() as session:
        return session.execute(select(WorklistItem).where(WorklistItem.study_instance_uid == study_uid)).scalar_one_or_none()


def write_report(db: Database, ingestor: Ingestor, *, job_id: int, job_queued_at: datetime, study_context: Dataset,
                 evidence: list[Dataset], result: TriageResult, own_ae: str,
                 forward: Sequence[ForwardDestination] = ()) -> StoredReport:
    """Build the SR, store it durably and indexed (without re-opening the study), update the worklist
    and, in the same transaction, queue the SR (and the study, per ``send``) for each [[forward]]."""
    study_uid = str(study_context.StudyInstanceUID)
    sop_uid = generate_uid(entropy_srcs=["triage-node-sr", study_uid, str(job_id)])
    series_uid = generate_uid(entropy_srcs=["triage-node-sr-series", study_uid, str(job_id)])
    previous = current_report(db, study_uid)
    predecessor = None
    if previous is not None and previous.sr_sop_instance_uid and previous.job_id != job_id:
        predecessor = SRReference(study_uid, previous.sr_series_instance_uid, str(Comprehensive3DSRStorage),
                                  previous.sr_sop_instance_uid)
    sr = dicom_sr.build_triage_sr(
        result, study_context, evidence, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1, software_versions=__version__, predecessor=predecessor)
    meta, body = _encode(sr)
    outcome = ingestor.store(meta, body, calling_ae=own_ae, touch_stability=False)
    if not outcome.ok:
        raise RuntimeError(f"could not store the SR: 0x{outcome.status:04X} {outcome.reason}")
    reason = "" if result.assist else (result.no_assist_reason.value if result.no_assist_reason else "")
    summary = json.dumps([{"finding": f.finding.meaning, "state": str(f.state), "score": round(f.score, 4),
                           "urgent": f.urgent} for f in result.findings])
    now = datetime.now(timezone.utc)
    with db.write_lock, db.session() as session, session.begin():
        item = session.execute(select(WorklistItem).where(
            WorklistItem.study_instance_uid == study_uid)).scalar_one_or_none()
        if item is None:
            item = WorklistItem(study_instance_uid=study_uid, job_id=job_id, queued_at=job_queued_at,
                                triaged_at=now, priority=result.priority,
                                ups_sop_instance_uid=generate_uid(entropy_srcs=["triage-node-ups", study_uid]),
                                procedure_step_state="SCHEDULED", transaction_uid="", state_changed_at=now)
            session.add(item)
        item.priority = result.priority
        item.assist = result.assist
        item.reason = reason
        item.profile = result.algorithm.profile_name
        item.sr_sop_instance_uid = sop_uid
        item.sr_series_instance_uid = series_uid
        item.job_id = job_id
        item.findings = summary
        item.queued_at = job_queued_at
        item.triaged_at = now
        if forward:
            enqueue_study(session, forward, study_uid=study_uid, sr_sop_instance_uid=sop_uid, now=now)
    return StoredReport(sop_uid, series_uid, result.priority, result.assist, reason)


__all__ = ["StoredReport", "algorithm_info", "triage_result", "write_report"]
