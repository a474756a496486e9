"""Turn a :class:`TriageResult` into a Comprehensive 3D SR (TID 1500 Imaging Measurement Report).

Layout of the content tree (all built with highdicom templates unless noted)::

    Imaging Measurement Report (TID 1500)
      Language, Observation Context with a Device observer (TID 1004: the model)
      Procedure reported (the imaging procedure analysed, as IHE AIR asks)
      Image Library (TID 1600) of the evaluated images
      Imaging Measurements
        Measurement Group "AI triage summary" (TID 1501)
          Tracking identifier, Algorithm Identification (TID 4019)
          AI assessment = provided | No AI assessment
          Priority = HIGH | MEDIUM
          [Reason for no AI assessment = <coded reason>]
          source images = all evaluated images
          TEXT Reason for no AI assessment   (hand-added, see below)
          [TEXT Priority kept from an earlier assessment <SR UID>]  (hand-added)
          TEXT Intended use disclaimer       (hand-added)
          [TEXT Test model warning]          (hand-added)
        Measurement Group per finding (TID 1501)
          Tracking identifier, Finding = <finding>, Algorithm Identification
          Score, Threshold Value, [band lower / upper limit] (TID 300, unit UCUM "1")
          <finding> = Present | Not detected | Indeterminate
          Urgent finding in triage profile = Yes | No
          source images = the images the finding's score came from
          [TEXT Operating point calibration]  (hand-added: calibrated on local data or not)
        Measurement Group per image given to the model (TID 1501)
          Tracking identifier "AI triage image", Algorithm Identification
          [In-domain score (TID 300)]
          Evaluated for findings = Yes | No
          TEXT Image preprocessing           (hand-added)
          source image = that image

The summary group exists so that every SR, including a no-assist one with no
findings at all, has the one measurement group that highdicom's
``MeasurementReport`` insists on, and so that study-level statements sit next
to the algorithm that made them.

Hand-built parts, because highdicom has no API for them:

* TEXT items inside a measurement group (TID 1501 allows TEXT qualitative
  evaluations; highdicom's ``QualitativeEvaluation`` only does CODE). They are
  highdicom ``TextContentItem`` objects appended to the group's content.
* The IHE AIR item of the Contributing Equipment Sequence: highdicom's
  ``ContributingEquipment`` refuses the 99IHE purpose code and has no Device
  UID, so it is a plain pydicom item appended after construction.
* The Coding Scheme Identification Sequence that declares ``99TRIAGE``.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as _dt
import uuid
from collections.abc import Sequence

import highdicom as hd
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    Comprehensive3DSR,
    DeviceObserverIdentifyingAttributes,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from highdicom.sr.enum import RelationshipTypeValues
from pydicom import Dataset
from pydicom.sr.codedict import codes as pydicom_codes

from . import codes
from .image_level import image_level_groups, referenced_request
from .params import encode_parameters
from .result import AlgorithmInfo, Code, FindingResult, ImageAssessment, ImageRef, SRReference, TriageResult

#: Namespace for the name-based UUIDs behind deterministic "2.25." UIDs.
_UID_NAMESPACE = uuid.UUID("0b9d6f0e-7f51-4b8e-9a53-5c7c2f3f7a10")

_SERIES_DESCRIPTION = "AI triage (research use only)"


def _uid_from_name(*parts: str) -> str:
    """A UID that is a pure function of ``parts`` (PS3.5 B.2: 2.25 + UUID as an integer)."""
    name = "\x1f".join(parts)
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, name).int}"


def algorithm_device_uid(algorithm: AlgorithmInfo) -> str:
    """The Device UID of the algorithm (AIR: it changes whenever the model changes).

    Derived from name, version, model id, revision, weights hash, profile and
    preprocessing, so the same model and settings always get the same UID and
    any change of weights gives a new one.
    """
    return _uid_from_name(
        "device",
        algorithm.name,
        algorithm.version,
        algorithm.model_id,
        algorithm.model_revision,
        algorithm.weights_sha256,
        algorithm.profile_name,
        algorithm.profile_version,
        algorithm.preprocessing_version,
        *((algorithm.probe_versions,) if algorithm.probe_versions else ()),
    )


def _coded(code: Code) -> CodedConcept:
    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _algorithm_identification(algorithm: AlgorithmInfo) -> AlgorithmIdentification:
    """TID 4019: name and version, and everything else rule 7 asks for as parameters."""
    return AlgorithmIdentification(
        name=algorithm.name,
        version=algorithm.version,
        parameters=encode_parameters(algorithm),
    )


def _source_images(refs: Sequence[ImageRef]) -> list[SourceImageForMeasurementGroup]:
    return [
        SourceImageForMeasurementGroup(
            referenced_sop_class_uid=ref.sop_class_uid,
            referenced_sop_instance_uid=ref.sop_instance_uid,
        )
        for ref in refs
    ]


def _text(name: CodedConcept, value: str) -> TextContentItem:
    return TextContentItem(name=name, value=value, relationship_type=RelationshipTypeValues.CONTAINS)


def _summary_group(
    result: TriageResult, algorithm_id: AlgorithmIdentification, sop_instance_uid: str
) -> MeasurementsAndQualitativeEvaluations:
    """The study-level statements: assessment status, priority, reason, disclaimer."""
    evaluations = [
        QualitativeEvaluation(
            name=codes.AI_ASSESSMENT,
            value=codes.ASSESSMENT_PROVIDED if result.assist else codes.NO_ASSESSMENT,
        ),
        QualitativeEvaluation(name=codes.PRIORITY, value=codes.PRIORITY_CODES[result.priority]),
    ]
    if result.no_assist_reason is not None:
        evaluations.append(
            QualitativeEvaluation(name=codes.NO_ASSESSMENT_REASON, value=_coded(result.no_assist_reason))
        )
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=_uid_from_name("summary", sop_instance_uid),
            identifier=codes.SUMMARY_TRACKING_ID,
        ),
        algorithm_id=algorithm_id,
        qualitative_evaluations=evaluations,
        source_images=_source_images(result.evaluated_images) or None,
    )
    texts = []
    if result.no_assist_text is not None:
        texts.append(_text(codes.NO_ASSESSMENT_REASON, result.no_assist_text))
    if result.priority_kept_from is not None:
        texts.append(_text(codes.PRIORITY_KEPT, codes.priority_kept_text(result.priority_kept_from)))
    texts.append(_text(codes.DISCLAIMER, codes.DISCLAIMER_TEXT))
    if result.algorithm.is_test_model:
        texts.append(_text(codes.TEST_MODEL, codes.TEST_MODEL_TEXT))
    group[0].ContentSequence.extend(texts)
    return group


def _finding_group(
    finding: FindingResult, algorithm_id: AlgorithmIdentification, sop_instance_uid: str, calibration: str = ""
) -> MeasurementsAndQualitativeEvaluations:
    """One finding: its state, score, threshold, urgency and the images it came from."""
    concept = _coded(finding.finding)
    measurements = [
        hd.sr.Measurement(name=codes.SCORE, value=finding.score, unit=codes.NO_UNITS),
        hd.sr.Measurement(name=codes.THRESHOLD, value=finding.threshold, unit=codes.NO_UNITS),
    ]
    if finding.band_low is not None and finding.band_high is not None:
        measurements += [
            hd.sr.Measurement(name=codes.BAND_LOW, value=finding.band_low, unit=codes.NO_UNITS),
            hd.sr.Measurement(name=codes.BAND_HIGH, value=finding.band_high, unit=codes.NO_UNITS),
        ]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=_uid_from_name("finding", sop_instance_uid, finding.finding.scheme, finding.finding.value),
            identifier=finding.finding.meaning,
        ),
        finding_type=concept,
        algorithm_id=algorithm_id,
        measurements=measurements,
        qualitative_evaluations=[
            QualitativeEvaluation(name=concept, value=codes.STATE_CODES[finding.state]),
            QualitativeEvaluation(name=codes.URGENT, value=codes.YES if finding.urgent else codes.NO),
        ],
        source_images=_source_images(finding.source_images) or None,
    )
    if calibration:  # issue 13: in words, next to the threshold it qualifies
        group[0].ContentSequence.append(_text(codes.CALIBRATION, calibration))
    return group


def _image_group(
    assessment: ImageAssessment, algorithm_id: AlgorithmIdentification, sop_instance_uid: str
) -> MeasurementsAndQualitativeEvaluations:
    """One image given to the model: its domain score, whether it was evaluated, its preprocessing."""
    measurements = None
    if assessment.domain_score is not None:
        measurements = [hd.sr.Measurement(name=codes.DOMAIN_SCORE, value=assessment.domain_score, unit=codes.NO_UNITS)]
    group = MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=_uid_from_name("image", sop_instance_uid, assessment.image.sop_instance_uid),
            identifier=codes.IMAGE_TRACKING_ID,
        ),
        algorithm_id=algorithm_id,
        measurements=measurements,
        qualitative_evaluations=[
            QualitativeEvaluation(name=codes.EVALUATED, value=codes.YES if assessment.evaluated else codes.NO),
        ],
        source_images=_source_images([assessment.image]),
    )
    group[0].ContentSequence.append(_text(codes.PREPROCESSING, assessment.preprocessing))
    return group


def _observation_context(algorithm: AlgorithmInfo, manufacturer: str) -> ObservationContext:
    """TID 1001/1004: the observer is the model, a device, identified by its Device UID."""
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=pydicom_codes.DCM.Device,
            observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
                uid=algorithm_device_uid(algorithm),
                name=algorithm.name,
                manufacturer_name=manufacturer,
                model_name=algorithm.model_id,
            ),
        )
    )


def _procedure_reported(study_context: Dataset, override: Code | None) -> CodedConcept:
    """AIR: the imaging procedure analysed, taken from the study when it says, else generic imaging."""
    if override is not None:
        return _coded(override)
    for keyword in ("ProcedureCodeSequence", "RequestedProcedureCodeSequence"):
        items = study_context.get(keyword)
        if items:
            item = items[0]
            if item.get("CodeValue") and item.get("CodingSchemeDesignator") and item.get("CodeMeaning"):
                return CodedConcept(
                    value=item.CodeValue,
                    scheme_designator=item.CodingSchemeDesignator,
                    meaning=item.CodeMeaning,
                )
    return codes.IMAGING_PROCEDURE


def _library_images(evidence: Sequence[Dataset]) -> list[Dataset]:
    """The evidence images highdicom can describe in the Image Library (TID 1600).

    highdicom's descriptors need attributes that real headers may lack (for DX:
    Patient Orientation, Imager Pixel Spacing); an image it cannot describe is
    left out of the library rather than failing the whole SR. It stays in the
    evidence and in the groups' source images.
    """
    usable = []
    for ds in evidence:
        try:
            hd.sr.ImageLibraryEntryDescriptors(ds)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            continue
        usable.append(ds)
    return usable


def _air_equipment_item(algorithm: AlgorithmInfo, manufacturer: str, when: _dt.datetime) -> Dataset:
    """The algorithm as IHE AIR Rev 1.1 section 6.5.3.1 wants it in Contributing Equipment."""
    purpose = Dataset()
    purpose.CodeValue = codes.AIR_PROCESSING_ALGORITHM.value
    purpose.CodingSchemeDesignator = codes.AIR_PROCESSING_ALGORITHM.scheme_designator
    purpose.CodeMeaning = codes.AIR_PROCESSING_ALGORITHM.meaning
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = manufacturer
    item.ManufacturerModelName = algorithm.name[:64]
    item.SoftwareVersions = algorithm.version[:64]
    item.DeviceUID = algorithm_device_uid(algorithm)
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    description = (
        f"{algorithm.name} {algorithm.version}: model {algorithm.model_id} "
        f"revision {algorithm.model_revision}, weights sha256 {algorithm.weights_sha256}, "
        f"profile {algorithm.profile_name} {algorithm.profile_version}, "
        f"preprocessing {algorithm.preprocessing_version}"
    )
    if algorithm.probe_versions:
        description += f", linear probes {algorithm.probe_versions}"
    if algorithm.is_test_model:
        description += ". RANDOM TEST MODEL: scores are meaningless"
    item.ContributionDescription = description[:1024]
    return item


def _coding_scheme_identification() -> list[Dataset]:
    items = []
    for designator, name, organization in (
        (codes.PRIVATE_SCHEME, codes.PRIVATE_SCHEME_NAME, codes.PRIVATE_SCHEME_ORGANIZATION),
        ("99IHE", "IHE codes", "IHE"),
    ):
        item = Dataset()
        item.CodingSchemeDesignator = designator
        item.CodingSchemeName = name
        item.CodingSchemeResponsibleOrganization = organization
        items.append(item)
    return items


#: Attributes highdicom reads from its first evidence dataset without a default (type 2 in image IODs).
_READ_BY_HIGHDICOM = (
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
)


def _highdicom_evidence(study_context: Dataset, evidence: Sequence[Dataset]) -> list[Dataset]:
    """The evidence list for highdicom, which needs at least one instance and a complete first one.

    With no evaluated image the study context instance stands in (Current
    Requested Procedure Evidence may list any instance of the procedure). A
    first dataset that lacks a type 2 attribute highdicom reads is copied with
    the attribute empty, rather than letting a sloppy header fail the SR.
    """
    items = list(evidence) or [study_context]
    missing = [keyword for keyword in _READ_BY_HIGHDICOM if keyword not in items[0]]
    if missing:
        first = copy.deepcopy(items[0])
        for keyword in missing:
            setattr(first, keyword, "")
        items[0] = first
    return items


def _character_set(result: TriageResult, study_context: Dataset, extra: Sequence[str]) -> str | list[str] | None:
    """Keep the study's character set unless our own text needs more; then UTF-8.

    ASCII is a subset of every DICOM character set, so only non-ASCII text we
    add (reason text, code meanings, algorithm strings) can need ISO_IR 192.
    """
    ours = [result.no_assist_text or "", *extra, *(a.preprocessing for a in result.images)]
    if result.no_assist_reason is not None:
        ours.append(result.no_assist_reason.meaning)
    for finding in result.findings:
        ours.append(finding.finding.meaning)
    ours.extend(str(v) for v in dataclasses.astuple(result.algorithm))
    if all(text.isascii() for text in ours):
        charset = study_context.get("SpecificCharacterSet")
        if charset is None or isinstance(charset, str):
            return charset
        return [str(term) for term in charset]  # a multi-valued one (code extensions)
    return "ISO_IR 192"


def _check_evidence(result: TriageResult, study_context: Dataset, evidence: Sequence[Dataset]) -> None:
    """Refuse mismatches early, with a message that says what is wrong."""
    for keyword in ("StudyInstanceUID", "PatientID"):
        if keyword not in study_context:
            raise ValueError(f"study_context lacks {keyword}")
    by_uid: dict[str, Dataset] = {}
    for ds in evidence:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID"):
            if keyword not in ds:
                raise ValueError(f"an evidence dataset lacks {keyword}")
        if ds.StudyInstanceUID != study_context.StudyInstanceUID:
            raise ValueError(
                f"evidence {ds.SOPInstanceUID} belongs to study {ds.StudyInstanceUID}, "
                f"not to {study_context.StudyInstanceUID}"
            )
        by_uid[ds.SOPInstanceUID] = ds
    refs = list(result.evaluated_images)
    refs.extend(a.image for a in result.images)
    for finding in result.findings:
        refs.extend(finding.source_images)
    for ref in refs:
        cited = by_uid.get(ref.sop_instance_uid)
        if cited is None:
            raise ValueError(f"image {ref.sop_instance_uid} is cited but not given as evidence")
        if cited.SOPClassUID != ref.sop_class_uid:
            raise ValueError(f"image {ref.sop_instance_uid}: SOP class differs from its evidence")
        if ref.series_instance_uid and cited.SeriesInstanceUID != ref.series_instance_uid:
            raise ValueError(f"image {ref.sop_instance_uid}: series differs from its evidence")
    if not evidence and not all(k in study_context for k in ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")):
        raise ValueError("with no evidence, study_context must be an instance of the study (SOP and series UIDs)")


def _software_versions(value: str | Sequence[str] | None) -> str | tuple[str, ...] | None:
    """highdicom wants a str or a tuple for the multi-valued Software Versions."""
    if value is None or isinstance(value, str):
        return value
    return tuple(value)


def _check_placement(
    study_context: Dataset,
    evidence: Sequence[Dataset],
    series_instance_uid: str,
    predecessor: SRReference | None,
) -> None:
    """The SR goes into a new series of the same study, and supersedes only an SR of that study."""
    image_series = {ds.SeriesInstanceUID for ds in evidence}
    image_series.add(study_context.get("SeriesInstanceUID"))
    if series_instance_uid in image_series:
        raise ValueError("the SR needs a new series, not the series of an image it reports on")
    if predecessor is not None and predecessor.study_instance_uid != study_context.StudyInstanceUID:
        raise ValueError("the predecessor SR belongs to another study")


def build_triage_sr(
    result: TriageResult,
    study_context: Dataset,
    evidence: Sequence[Dataset],
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    instance_number: int,
    manufacturer: str = "triage-node",
    manufacturer_model_name: str = "triage-node",
    software_versions: str | Sequence[str] | None = None,
    device_serial_number: str | None = None,
    institution_name: str | None = None,
    predecessor: SRReference | None = None,
    procedure_reported: Code | None = None,
    series_description: str | None = None,
    content_datetime: _dt.datetime | None = None,
) -> Comprehensive3DSR:
    """Build the Comprehensive 3D SR for one triage result.

    ``study_context`` is any instance header of the study; patient and study
    attributes are copied from it, so an SR can be made even when no image was
    evaluated. ``evidence`` are the headers of the evaluated images; every
    image the result cites must be among them. With no evidence the
    study_context instance is listed as the study's evidence (highdicom needs
    one, and Current Requested Procedure Evidence may list any instance of the
    procedure). ``predecessor`` names the SR this one supersedes.
    ``content_datetime`` should be when the analysis started (AIR); default now.

    Returns a highdicom ``Comprehensive3DSR``, which is a ``pydicom.Dataset``.
    """
    _check_evidence(result, study_context, evidence)
    _check_placement(study_context, evidence, series_instance_uid, predecessor)
    when = content_datetime or _dt.datetime.now()
    algorithm = result.algorithm
    algorithm_id = _algorithm_identification(algorithm)

    groups: list[MeasurementsAndQualitativeEvaluations | PlanarROIMeasurementsAndQualitativeEvaluations] = [
        _summary_group(result, algorithm_id, sop_instance_uid)
    ]
    groups.extend(
        _finding_group(f, algorithm_id, sop_instance_uid, f.calibration or algorithm.calibration)
        for f in result.findings
    )
    groups.extend(_image_group(a, algorithm_id, sop_instance_uid) for a in result.images)
    # Image-level groups first: viewers (OHIF) open an SR at its first group, which must have an image.
    groups[:0] = image_level_groups(result, evidence, algorithm_id, sop_instance_uid)
    report = MeasurementReport(
        observation_context=_observation_context(algorithm, manufacturer),
        procedure_reported=_procedure_reported(study_context, procedure_reported),
        imaging_measurements=groups,
        referenced_images=_library_images(evidence) or None,
    )

    if series_description is None:
        series_description = _SERIES_DESCRIPTION
        if algorithm.is_test_model:
            series_description = f"{codes.TEST_MODEL_SERIES_TAG} - AI triage"
    previous = None
    if predecessor is not None:
        previous_ds = Dataset()
        previous_ds.StudyInstanceUID = predecessor.study_instance_uid
        previous_ds.SeriesInstanceUID = predecessor.series_instance_uid
        previous_ds.SOPClassUID = predecessor.sop_class_uid
        previous_ds.SOPInstanceUID = predecessor.sop_instance_uid
        previous = [previous_ds]

    sr = Comprehensive3DSR(
        evidence=_highdicom_evidence(study_context, evidence),
        content=report,
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=manufacturer,
        manufacturer_model_name=manufacturer_model_name,
        software_versions=_software_versions(software_versions),
        device_serial_number=device_serial_number,
        institution_name=institution_name,
        series_description=series_description,
        is_complete=True,
        is_final=False,
        is_verified=False,
        previous_versions=previous,
        content_date=when.date(),
        content_time=when.time(),
        specific_character_set=_character_set(
            result, study_context, [manufacturer, manufacturer_model_name, institution_name or "", series_description]
        ),
    )
    # highdicom copied patient/study from evidence[0]; the study context is the authority.
    sr.copy_patient_and_study_information(study_context)
    # highdicom types this sequence as its ContributingEquipment, whose constructor accepts only DCM
    # purpose codes; the IHE AIR item (purpose 99IHE) is a valid item that class cannot build.
    sr.ContributingEquipmentSequence.append(_air_equipment_item(algorithm, manufacturer, when))  # type: ignore[arg-type]
    sr.CodingSchemeIdentificationSequence = _coding_scheme_identification()
    requests = referenced_request(study_context)
    if requests:
        sr.ReferencedRequestSequence = requests
    return sr
