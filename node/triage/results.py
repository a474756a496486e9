"""Where a decision becomes DICOM: the SR (via dicom_sr), stored like a received instance,
and the study's worklist row (its priority over time: node/worklist.py).

Every SR, assisted or not, carries every score that was computed: each finding's score with
the value that decides "present" and the indeterminate band, each image's domain score and
preprocessing. A raise by an earlier SR that this one does not repeat is kept, and the SR
says so (rule 5: only a person lowers a raised study).

UIDs of the SR are derived from the job, so a job retried after a crash produces the same
SR (stored once, the duplicate kept as the first copy): each job's answer exists exactly once.
"""

from __future__ import annotations


import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, generate_uid
from sqlalchemy import select

import dicom_sr
from dicom_sr import AlgorithmInfo, Code, FindingResult, ImageAssessment, ImageRef, SRReference, TriageResult
from node import __version__
from node.db.engine import Database
from node.config import ForwardDestination
from node.db.models import WorklistItem
from node.forward.outbox import enqueue_study
from node.store.ingest import Ingestor, encode_own_instance
from node.triage.model import ModelIdentity
from node.triage.outputs import ResultOutputs, store_summary
from node.triage.policy import REASON_TEXT, NoAssistReason, StudyDecision
from node.triage.profiles import FindingSpec, TriageProfile
from node.worklist import effective_priority

ALGORITHM_NAME = "triage-node MedSigLIP zero-shot triage"
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
        # Issue 13: whether the operating points were tuned on local data for these weights.
        calibration=profile.calibration_state(identity.weights_sha256 if identity else None).text,
        probe_versions=profile.probe_versions())


def deciding_threshold(spec: FindingSpec) -> float:
    """The score above which the finding is "present".

    Profiles keep ``low <= threshold <= high`` and a score inside the band is indeterminate, so
    "present" always means a score above the band's upper limit: that, not the configured
    threshold, is what the SR reports as the threshold (with the band beside it).
    """
    return max(float(spec.threshold), float(spec.indeterminate_band[1]))


def finding_result(spec: FindingSpec, score: float, state: str, evaluated: tuple[ImageRef, ...]) -> FindingResult:
    low, high = spec.indeterminate_band
    return FindingResult(finding=Code(*spec.code), state=dicom_sr.FindingState(str(state)), score=float(score),
                         threshold=deciding_threshold(spec), band_low=float(low), band_high=float(high),
                         urgent=spec.urgency == "high", source_images=evaluated)


def image_assessments(decision: StudyDecision, images: list[Dataset],
                      preprocessing: Sequence[str]) -> tuple[ImageAssessment, ...]:
    """One entry per image given to the model (decide() order), with what the model said of it."""
    scores = decision.domain_scores
    return tuple(
        ImageAssessment(image=image_ref(ds), preprocessing=preprocessing[i],
                        evaluated=i in decision.evaluated,
                        domain_score=float(scores[i]) if i < len(scores) else None)
        for i, ds in enumerate(images))


def triage_result(decision: StudyDecision, profile: TriageProfile, images: list[Dataset],
                  algorithm: AlgorithmInfo, preprocessing: Sequence[str] = ()) -> TriageResult:
    """Turn the policy's decision over ``images`` (the decide() input order) into the SR contract.

    ``preprocessing`` describes each image of ``images`` (same order); when it is empty the
    images were not given to the model and are not listed. Every computed score is kept, also
    on a no-assist decision (e.g. the urgent finding whose score fell in its band).
    """
    evaluated = tuple(image_ref(images[i]) for i in decision.evaluated)
    specs = {f.key: f for f in profile.findings}
    findings = tuple(finding_result(specs[s.key], s.score, str(s.state), evaluated) for s in decision.findings)
    assessed = image_assessments(decision, images, preprocessing) if preprocessing else ()
    if not decision.assist:
        reason = decision.reason or NoAssistReason.MODEL_ERROR
        return TriageResult(assist=False, priority=dicom_sr.PRIORITY_MEDIUM,
                            no_assist_reason=Code(str(reason), "99TRIAGE", reason_meaning(reason)),
                            no_assist_text=REASON_TEXT[reason], findings=findings,
                            evaluated_images=evaluated if assessed else (), algorithm=algorithm, images=assessed)
    return TriageResult(assist=True, priority=decision.priority, no_assist_reason=None, no_assist_text=None,
                        findings=findings, evaluated_images=evaluated, algorithm=algorithm, images=assessed)


def keep_raise(result: TriageResult, raised_by_sr_uid: str | None) -> TriageResult:
    """An earlier SR raised the study to HIGH and nobody cleared it: this result keeps it."""
    if not raised_by_sr_uid or result.priority == dicom_sr.PRIORITY_HIGH:
        return result
    return dataclasses.replace(result, priority=dicom_sr.PRIORITY_HIGH, priority_kept_from=raised_by_sr_uid)


def reason_meaning(reason: NoAssistReason) -> str:
    return {
        NoAssistReason.MODEL_UNAVAILABLE: "AI model not available",
        NoAssistReason.MODEL_ERROR: "AI model error",
        NoAssistReason.MODEL_TIMEOUT: "AI model timeout",
        NoAssistReason.NO_ELIGIBLE_IMAGE: "No eligible image for the triage profile",
        NoAssistReason.OUT_OF_DOMAIN: "Images outside the triage profile's domain",
        NoAssistReason.URGENT_INDETERMINATE: "Urgent finding indeterminate",
    }[reason]


def current_report(db: Database, study_uid: str) -> WorklistItem | None:
    with db.session() as session:
        return session.execute(select(WorklistItem).where(WorklistItem.study_instance_uid == study_uid)).scalar_one_or_none()


def _findings_json(result: TriageResult) -> str:
    return json.dumps([{"finding": f.finding.meaning, "code": f.finding.value, "state": str(f.state),
                        "score": round(f.score, 6), "threshold": f.threshold,
                        "indeterminate_band": [f.band_low, f.band_high], "urgent": f.urgent}
                       for f in result.findings])


def _images_json(result: TriageResult) -> str:
    return json.dumps([{"sop_instance_uid": a.image.sop_instance_uid,
                        "domain_score": None if a.domain_score is None else round(a.domain_score, 6),
                        "evaluated": a.evaluated, "preprocessing": a.preprocessing} for a in result.images])


def write_report(db: Database, ingestor: Ingestor, *, job_id: int, job_queued_at: datetime, study_context: Dataset,
                 evidence: list[Dataset], result: TriageResult, own_ae: str,
                 forward: Sequence[ForwardDestination] = (), order_priority: str = "",
                 outputs: ResultOutputs | None = None) -> StoredReport:
    """Build the SR, store it durably and indexed (without re-opening the study), store the summary
    card / PDF when configured, update the worklist and, in the same transaction, queue what each
    [[forward]] ``send`` names and the [[hl7]] / [[fhir]] messages (``outputs``; default: ``forward`` only).

    ``result`` is this job's own assessment; a raise of an earlier SR that nobody cleared is kept
    (the SR says so). ``order_priority`` is the order's own priority ("" when none is given)."""
    outputs = outputs or ResultOutputs(forward=tuple(forward))
    study_uid = str(study_context.StudyInstanceUID)
    sop_uid = generate_uid(entropy_srcs=["triage-node-sr", study_uid, str(job_id)])
    series_uid = generate_uid(entropy_srcs=["triage-node-sr-series", study_uid, str(job_id)])
    previous = current_report(db, study_uid)
    predecessor = None
    if previous is not None and previous.sr_sop_instance_uid and previous.job_id != job_id:
        predecessor = SRReference(study_uid, previous.sr_series_instance_uid, str(Comprehensive3DSRStorage),
                                  previous.sr_sop_instance_uid)
    if previous is not None and previous.raised_by_sr_uid != sop_uid:
        result = keep_raise(result, previous.raised_by_sr_uid)
    sr = dicom_sr.build_triage_sr(
        result, study_context, evidence, series_instance_uid=series_uid, series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid, instance_number=1, software_versions=__version__, predecessor=predecessor)
    meta, body = encode_own_instance(sr)
    outcome = ingestor.store(meta, body, calling_ae=own_ae, touch_stability=False)
    if not outcome.ok:
        raise RuntimeError(f"could not store the SR: 0x{outcome.status:04X} {outcome.reason}")
    extras = store_summary(ingestor, outputs, result=result, study_context=study_context, evidence=evidence,
                           sr_sop_instance_uid=sop_uid, job_id=job_id, own_ae=own_ae)
    reason = "" if result.assist else (result.no_assist_reason.value if result.no_assist_reason else "")
    raises = result.priority == dicom_sr.PRIORITY_HIGH and result.priority_kept_from is None
    now = datetime.now(timezone.utc)
    with db.write_lock, db.session() as session, session.begin():
        item = session.execute(select(WorklistItem).where(
            WorklistItem.study_instance_uid == study_uid)).scalar_one_or_none()
        if item is None:
            item = WorklistItem(study_instance_uid=study_uid, job_id=job_id, queued_at=job_queued_at,
                                triaged_at=now, priority=result.priority, raised_by_sr_uid="",
                                ups_sop_instance_uid=generate_uid(entropy_srcs=["triage-node-ups", study_uid]),
                                procedure_step_state="SCHEDULED", transaction_uid="", state_changed_at=now)
            session.add(item)
        if raises:
            item.raised_by_sr_uid, item.raised_at, item.priority_kept = sop_uid, now, False
        else:  # the row is the truth: a clear that happened while this SR was built stays cleared
            item.priority_kept = bool(item.raised_by_sr_uid)
        item.order_priority = order_priority
        item.priority = effective_priority(order_priority, raised=bool(item.raised_by_sr_uid))
        item.assist = result.assist
        item.reason = reason
        item.profile = result.algorithm.profile_name
        item.calibration = result.algorithm.calibration
        item.sr_sop_instance_uid = sop_uid
        item.sr_series_instance_uid = series_uid
        item.job_id = job_id
        item.findings = _findings_json(result)
        item.images = _images_json(result)
        item.queued_at = job_queued_at
        item.triaged_at = now
        enqueue_study(session, outputs.forward, study_uid=study_uid, sr_sop_instance_uid=sop_uid, now=now,
                      extras=extras, hl7=outputs.hl7, fhir=outputs.fhir, raises_priority=raises)
        worklist_priority = item.priority
    return StoredReport(sop_uid, series_uid, result.priority, result.assist, reason, worklist_priority,
                        result.priority_kept_from or "")


__all__ = ["StoredReport", "algorithm_info", "deciding_threshold", "keep_raise", "triage_result", "write_report"]
