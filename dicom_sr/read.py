"""Read a triage SR written by :func:`dicom_sr.build.build_triage_sr` back into a :class:`TriageResult`.

The reader trusts codes (scheme and value), never code meanings or the order of
items, so that an SR that went through a PACS, or was written by a later
version with reworded meanings, still reads. Anything it cannot account for is
a :class:`TriageSRError`, never a silently partial result.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import TypeVar

from highdicom.sr import (
    CodeContentItem,
    CodedConcept,
    Comprehensive3DSR,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
)
from highdicom.sr.enum import ValueTypeValues
from highdicom.sr.utils import find_content_items
from pydicom import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.uid import Comprehensive3DSRStorage

from . import codes
from .params import decode_parameters
from .result import (
    NOT_CALIBRATED_TEXT,
    AlgorithmInfo,
    Code,
    FindingResult,
    ImageAssessment,
    ImageRef,
    SRReference,
    TriageResult,
)


class TriageSRError(ValueError):
    """The dataset is not a triage SR, or one this reader cannot make sense of."""


def _code(concept: CodedConcept) -> Code:
    return Code(value=concept.value, scheme=concept.scheme_designator, meaning=concept.meaning)


_T = TypeVar("_T")


def _one(items: Sequence[_T], what: str) -> _T:
    if len(items) != 1:
        raise TriageSRError(f"expected exactly one {what}, found {len(items)}")
    return items[0]


def _coded_value(group: MeasurementsAndQualitativeEvaluations, name: CodedConcept) -> CodedConcept | None:
    matches = group.get_qualitative_evaluations(name=name)
    if not matches:
        return None
    # the CODE content item itself: highdicom annotates QualitativeEvaluation.value as a number
    item = _one(matches, f"{name.meaning!r} item")[0]
    if not isinstance(item, CodeContentItem):
        raise TriageSRError(f"{name.meaning!r} item is not a CODE content item")
    return item.value


def _texts(group: MeasurementsAndQualitativeEvaluations, name: CodedConcept) -> list[str]:
    items = find_content_items(group[0], name=name, value_type=ValueTypeValues.TEXT)
    return [item.TextValue for item in items]


def _number(group: MeasurementsAndQualitativeEvaluations, name: CodedConcept) -> float:
    return float(_one(group.get_measurements(name=name), f"{name.meaning!r} measurement").value)


def _optional_number(group: MeasurementsAndQualitativeEvaluations, name: CodedConcept) -> float | None:
    return _number(group, name) if group.get_measurements(name=name) else None


def _evidence_series(ds: Dataset) -> dict[str, str]:
    """SOP Instance UID -> Series Instance UID, from the SR's evidence sequences."""
    out: dict[str, str] = {}
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in ds.get(keyword, []):
            for series in study.get("ReferencedSeriesSequence", []):
                for sop in series.get("ReferencedSOPSequence", []):
                    out[sop.ReferencedSOPInstanceUID] = series.SeriesInstanceUID
    return out


def _images(group: MeasurementsAndQualitativeEvaluations, series_of: dict[str, str]) -> tuple[ImageRef, ...]:
    return tuple(
        ImageRef(
            sop_class_uid=str(image.referenced_sop_class_uid),
            sop_instance_uid=str(image.referenced_sop_instance_uid),
            series_instance_uid=series_of.get(str(image.referenced_sop_instance_uid), ""),
        )
        for image in group.source_images
    )


def _algorithm(group: MeasurementsAndQualitativeEvaluations) -> AlgorithmInfo:
    name = _one(_texts(group, pydicom_codes.DCM.AlgorithmName), "Algorithm Name")
    version = _one(_texts(group, pydicom_codes.DCM.AlgorithmVersion), "Algorithm Version")
    try:
        return decode_parameters(name, version, _texts(group, pydicom_codes.DCM.AlgorithmParameters))
    except ValueError as exc:
        raise TriageSRError(str(exc)) from exc


_STATE_BY_CODE = [(concept, state) for state, concept in codes.STATE_CODES.items()]
_PRIORITY_BY_CODE = [(concept, priority) for priority, concept in codes.PRIORITY_CODES.items()]


def _lookup(concept: CodedConcept, table: list[tuple[CodedConcept, _T]], what: str) -> _T:
    for known, value in table:
        if concept == known:
            return value
    raise TriageSRError(f"unknown {what} code ({concept.value}, {concept.scheme_designator}, {concept.meaning!r})")


def _finding(group: MeasurementsAndQualitativeEvaluations, series_of: dict[str, str]) -> FindingResult:
    finding = group.finding_type
    if finding is None:
        raise TriageSRError("a finding group has no Finding item")
    state = _coded_value(group, finding)
    urgent = _coded_value(group, codes.URGENT)
    if state is None or urgent is None:
        raise TriageSRError(f"finding group {finding.meaning!r} lacks its state or urgency")
    if urgent not in (codes.YES, codes.NO):
        raise TriageSRError(f"finding group {finding.meaning!r}: urgency is neither Yes nor No")
    return FindingResult(
        finding=_code(finding),
        state=_lookup(state, _STATE_BY_CODE, "finding state"),
        score=_number(group, codes.SCORE),
        threshold=_number(group, codes.THRESHOLD),
        urgent=urgent == codes.YES,
        source_images=_images(group, series_of),
        band_low=_optional_number(group, codes.BAND_LOW),
        band_high=_optional_number(group, codes.BAND_HIGH),
    )


def _is_image_group(group: MeasurementsAndQualitativeEvaluations) -> bool:
    return bool(group.get_qualitative_evaluations(name=codes.EVALUATED))


def _image_assessment(group: MeasurementsAndQualitativeEvaluations, series_of: dict[str, str]) -> ImageAssessment:
    evaluated = _coded_value(group, codes.EVALUATED)
    if evaluated not in (codes.YES, codes.NO):
        raise TriageSRError("an image group's 'evaluated' item is neither Yes nor No")
    return ImageAssessment(
        image=_one(_images(group, series_of), "source image of an image group"),
        preprocessing=_one(_texts(group, codes.PREPROCESSING), "image preprocessing text"),
        evaluated=evaluated == codes.YES,
        domain_score=_optional_number(group, codes.DOMAIN_SCORE),
    )


_KEPT_UID = re.compile(r"earlier assessment ([0-9][0-9.]*[0-9])")


def _priority_kept_from(summary: MeasurementsAndQualitativeEvaluations) -> str | None:
    texts = _texts(summary, codes.PRIORITY_KEPT)
    if not texts:
        return None
    match = _KEPT_UID.search(_one(texts, "priority-kept text"))
    if match is None:
        raise TriageSRError("the priority-kept text names no SR")
    return match.group(1)


def is_triage_sr(ds: Dataset) -> bool:
    """Whether ``ds`` looks like an SR this library wrote (cheap check, no full parse)."""
    if ds.get("SOPClassUID") != Comprehensive3DSRStorage or "ContentSequence" not in ds:
        return False
    templates = ds.get("ContentTemplateSequence") or []
    return bool(templates) and templates[0].get("TemplateIdentifier") == "1500"


def read_triage_sr(ds: Dataset) -> TriageResult:
    """Parse a triage SR into the :class:`TriageResult` it was built from.

    ``ImageRef.series_instance_uid`` is filled from the SR's evidence lists.
    Raises :class:`TriageSRError` (a ``ValueError``) for anything else.
    """
    if not is_triage_sr(ds):
        raise TriageSRError("not a Comprehensive 3D SR with a TID 1500 Measurement Report")
    try:
        report = Comprehensive3DSR.from_dataset(ds).content
        # highdicom parses the content as a MeasurementReport only when its root names TID 1500
        if not isinstance(report, MeasurementReport):
            raise TriageSRError("the SR content is not a TID 1500 Measurement Report")
        groups = report.get_image_measurement_groups()
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise TriageSRError(f"cannot parse the measurement report: {exc}") from exc

    summaries = [g for g in groups if g.get_qualitative_evaluations(name=codes.AI_ASSESSMENT)]
    summary = _one(summaries, "triage summary group")
    series_of = _evidence_series(ds)

    assessment = _coded_value(summary, codes.AI_ASSESSMENT)
    if assessment not in (codes.ASSESSMENT_PROVIDED, codes.NO_ASSESSMENT):
        raise TriageSRError(f"unknown AI assessment code {assessment}")
    priority_code = _coded_value(summary, codes.PRIORITY)
    if priority_code is None:
        raise TriageSRError("the summary group has no priority")
    reason = _coded_value(summary, codes.NO_ASSESSMENT_REASON)
    reason_texts = _texts(summary, codes.NO_ASSESSMENT_REASON)
    if len(reason_texts) > 1:
        raise TriageSRError("more than one free-text reason for no AI assessment")

    algorithm = _algorithm(summary)
    if bool(_texts(summary, codes.TEST_MODEL)) != algorithm.is_test_model:
        raise TriageSRError("the test-model warning and the is_test_model parameter disagree")
    findings = []
    images = []
    for group in groups:
        if group is summary:
            continue
        if _algorithm(group) != algorithm:
            raise TriageSRError("measurement groups name different algorithms")
        if _is_image_group(group):
            images.append(_image_assessment(group, series_of))
        else:
            stated = _texts(group, codes.CALIBRATION)
            if len(stated) > 1:
                raise TriageSRError("a finding has more than one calibration statement")
            finding = _finding(group, series_of)
            if stated and stated[0] != algorithm.calibration:
                # a finding of a calibrated profile that its evaluation did not tune says so itself
                if not stated[0].startswith(NOT_CALIBRATED_TEXT):
                    raise TriageSRError("a finding's calibration statement differs from the algorithm's")
                finding = dataclasses.replace(finding, calibration=stated[0])
            findings.append(finding)
    try:
        return TriageResult(
            assist=assessment == codes.ASSESSMENT_PROVIDED,
            priority=_lookup(priority_code, _PRIORITY_BY_CODE, "priority"),
            no_assist_reason=_code(reason) if reason is not None else None,
            no_assist_text=reason_texts[0] if reason_texts else None,
            findings=tuple(findings),
            evaluated_images=_images(summary, series_of),
            algorithm=algorithm,
            images=tuple(images),
            priority_kept_from=_priority_kept_from(summary),
        )
    except ValueError as exc:
        raise TriageSRError(f"the SR breaks a triage invariant: {exc}") from exc


def read_predecessors(ds: Dataset) -> tuple[SRReference, ...]:
    """Every document listed in the Predecessor Documents Sequence (0040,A360)."""
    out = []
    for study in ds.get("PredecessorDocumentsSequence", []):
        for series in study.get("ReferencedSeriesSequence", []):
            for sop in series.get("ReferencedSOPSequence", []):
                out.append(
                    SRReference(
                        study_instance_uid=study.StudyInstanceUID,
                        series_instance_uid=series.SeriesInstanceUID,
                        sop_class_uid=sop.ReferencedSOPClassUID,
                        sop_instance_uid=sop.ReferencedSOPInstanceUID,
                    )
                )
    return tuple(out)


def read_predecessor(ds: Dataset) -> SRReference | None:
    """The SR this one supersedes, or None. A triage SR supersedes at most one."""
    predecessors = read_predecessors(ds)
    if len(predecessors) > 1:
        raise TriageSRError("more than one predecessor; use read_predecessors")
    return predecessors[0] if predecessors else None


def sr_reference(ds: Dataset) -> SRReference:
    """The reference to pass as ``predecessor`` when a new SR supersedes ``ds``."""
    return SRReference(
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
    )
