"""A policy decision as the SR contract (``dicom_sr.TriageResult``): every score that was
computed, with the value that decides "present" and the indeterminate band, each image's domain
score and preprocessing, the algorithm and profile that produced them, and the no-assist reason.

Kept apart from the writing (node/results/write.py) because it is pure: it reads no file and
writes no row, so it can be checked without a database.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from pydicom.dataset import Dataset

import dicom_sr
from dicom_sr import AlgorithmInfo, Code, FindingResult, ImageAssessment, ImageRef, TriageResult
from node import __version__
from node.triage.model_api import ModelIdentity
from node.triage.policy import REASON_TEXT, NoAssistReason, StudyDecision
from node.triage.profiles import FindingSpec, TriageProfile

ALGORITHM_NAME = "triage-node MedSigLIP zero-shot triage"
#: Model id, revision and weights of an SR written while no model was loaded (model-unavailable).
NOT_LOADED = "not loaded"


def image_ref(ds: Dataset) -> ImageRef:
    return ImageRef(str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.SeriesInstanceUID))


def algorithm_info(
    identity: ModelIdentity | None, profile: TriageProfile, preprocessing_version: str, preprocessing_description: str
) -> AlgorithmInfo:
    return AlgorithmInfo(
        name=ALGORITHM_NAME,
        version=__version__,
        # No model loaded (a model-unavailable no-assist SR): say so; AlgorithmInfo needs non-empty text.
        model_id=identity.model_id if identity else NOT_LOADED,
        model_revision=identity.revision if identity else NOT_LOADED,
        weights_sha256=identity.weights_sha256 if identity else NOT_LOADED,
        profile_name=profile.name,
        profile_version=profile.version,
        preprocessing_version=preprocessing_version,
        preprocessing_description=preprocessing_description,
        is_test_model=bool(identity and identity.is_test_model),
        # Issue 13: whether the operating points were tuned on local data for these weights.
        calibration=profile.calibration_state(identity.weights_sha256 if identity else None).text,
        probe_versions=profile.probe_versions(),
    )


def deciding_threshold(spec: FindingSpec) -> float:
    """The score above which the finding is "present".

    Profiles keep ``low <= threshold <= high`` and a score inside the band is indeterminate, so
    "present" always means a score above the band's upper limit: that, not the configured
    threshold, is what the SR reports as the threshold (with the band beside it).
    """
    return max(float(spec.threshold), float(spec.indeterminate_band[1]))


def finding_result(spec: FindingSpec, score: float, state: str, evaluated: tuple[ImageRef, ...]) -> FindingResult:
    low, high = spec.indeterminate_band
    return FindingResult(
        finding=Code(*spec.code),
        state=dicom_sr.FindingState(str(state)),
        score=float(score),
        threshold=deciding_threshold(spec),
        band_low=float(low),
        band_high=float(high),
        urgent=spec.urgency == "high",
        source_images=evaluated,
    )


def image_assessments(
    decision: StudyDecision, images: list[Dataset], preprocessing: Sequence[str]
) -> tuple[ImageAssessment, ...]:
    """One entry per image given to the model (decide() order), with what the model said of it."""
    scores = decision.domain_scores
    return tuple(
        ImageAssessment(
            image=image_ref(ds),
            preprocessing=preprocessing[i],
            evaluated=i in decision.evaluated,
            domain_score=float(scores[i]) if i < len(scores) else None,
        )
        for i, ds in enumerate(images)
    )


def triage_result(
    decision: StudyDecision,
    profile: TriageProfile,
    images: list[Dataset],
    algorithm: AlgorithmInfo,
    preprocessing: Sequence[str] = (),
) -> TriageResult:
    """Turn the policy's decision over ``images`` (the decide() input order) into the SR contract.

    ``preprocessing`` describes each image of ``images`` (same order); when it is empty the
    images were not given to the model and are not listed. Every computed score is kept, also
    on a no-assist decision (e.g. the urgent finding whose score fell in its band).
    """
    evaluated = tuple(image_ref(images[i]) for i in decision.evaluated)
    specs = {f.key: f for f in profile.findings}
    state = profile.calibration_state(None if algorithm.weights_sha256 == NOT_LOADED else algorithm.weights_sha256)
    findings = tuple(
        dataclasses.replace(
            finding_result(specs[s.key], s.score, str(s.state), evaluated),
            calibration=profile.finding_calibration(s.key, state),
        )
        for s in decision.findings
    )
    assessed = image_assessments(decision, images, preprocessing) if preprocessing else ()
    if not decision.assist:
        reason = decision.reason or NoAssistReason.MODEL_ERROR
        return TriageResult(
            assist=False,
            priority=dicom_sr.PRIORITY_MEDIUM,
            no_assist_reason=Code(str(reason), "99TRIAGE", reason_meaning(reason)),
            no_assist_text=REASON_TEXT[reason],
            findings=findings,
            evaluated_images=evaluated if assessed else (),
            algorithm=algorithm,
            images=assessed,
        )
    return TriageResult(
        assist=True,
        priority=decision.priority,
        no_assist_reason=None,
        no_assist_text=None,
        findings=findings,
        evaluated_images=evaluated,
        algorithm=algorithm,
        images=assessed,
    )


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


__all__ = [
    "ALGORITHM_NAME",
    "algorithm_info",
    "deciding_threshold",
    "finding_result",
    "image_assessments",
    "image_ref",
    "keep_raise",
    "reason_meaning",
    "triage_result",
]
