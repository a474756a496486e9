"""dicom_sr: build triage SRs from synthetic DX chest studies, write them, read them back, validate them.

No mocks: real pydicom datasets on disk, real highdicom, real dciodvfy.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from dicom_sr import (
    AlgorithmInfo,
    Code,
    FindingResult,
    FindingState,
    ImageAssessment,
    ImageRef,
    SRReference,
    TriageResult,
    TriageSRError,
    algorithm_device_uid,
    build_triage_sr,
    dciodvfy_available,
    read_predecessor,
    read_triage_sr,
    run_dciodvfy,
    sr_reference,
)

# --------------------------------------------------------------------------- synthetic study


def _dx_image(study_uid: str, series_uid: str, number: int, view: str) -> Dataset:
    """A small but complete-looking DX For Presentation chest image."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.StudyDate = "20240315"
    ds.SeriesDate = "20240315"
    ds.ContentDate = "20240315"
    ds.StudyTime = "101500"
    ds.SeriesTime = "101500"
    ds.ContentTime = "101512"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Acme Imaging"
    ds.ManufacturerModelName = "DR-9000"
    ds.DeviceSerialNumber = "SN-42"
    ds.SoftwareVersions = "4.2"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StudyDescription = "XR CHEST"
    ds.SeriesDescription = f"CHEST {view}"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "PID-0001"
    ds.IssuerOfPatientID = "HOSP"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.PatientAge = "054Y"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = "S1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.PatientOrientation = ["L", "F"] if view == "PA" else ["A", "F"]
    ds.ImageLaterality = "U"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 16
    ds.Columns = 16
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.BurnedInAnnotation = "NO"
    rng = np.random.default_rng(number)
    ds.PixelData = rng.integers(0, 4096, size=(16, 16), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@dataclasses.dataclass
class Study:
    """Headers of a two-view chest study as the node would hold them (read back, no pixels)."""

    pa: Dataset
    lateral: Dataset

    @property
    def images(self) -> list[Dataset]:
        return [self.pa, self.lateral]


def _ref(ds: Dataset) -> ImageRef:
    return ImageRef(ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID)


@pytest.fixture
def study(tmp_path: Path) -> Study:
    study_uid, series_uid = generate_uid(), generate_uid()
    headers = []
    for number, view in ((1, "PA"), (2, "LL")):
        path = tmp_path / f"dx{number}.dcm"
        _dx_image(study_uid, series_uid, number, view).save_as(path, enforce_file_format=True)
        headers.append(pydicom.dcmread(path, stop_before_pixels=True))
    return Study(*headers)


def _algorithm(is_test_model: bool = False) -> AlgorithmInfo:
    return AlgorithmInfo(
        name="MedSigLIP zero-shot triage",
        version="0.1.0",
        model_id="google/medsiglip-448",
        model_revision="5b1e0c6a1c5e8f7e2d9a4b3c2d1e0f9a8b7c6d5e",
        weights_sha256="9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
        profile_name="cxr-adult",
        profile_version="sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        preprocessing_version="medsiglip-pre-1",
        preprocessing_description=(
            "modality LUT; VOI window=tags; MONOCHROME1 inverted; 8 bit; pad; resize 448 bilinear"
        ),
        is_test_model=is_test_model,
    )


# 13 chest findings; the last two use a private test scheme on purpose (non-SCT codes must round-trip too).
_FINDINGS = [
    (Code("36118008", "SCT", "Pneumothorax"), FindingState.PRESENT, 0.91, True),
    (Code("60046008", "SCT", "Pleural effusion"), FindingState.NOT_DETECTED, 0.12, False),
    (Code("233604007", "SCT", "Pneumonia"), FindingState.INDETERMINATE, 0.48, False),
    (Code("8186001", "SCT", "Cardiomegaly"), FindingState.PRESENT, 0.77, False),
    (Code("46621007", "SCT", "Atelectasis"), FindingState.NOT_DETECTED, 0.05, False),
    (Code("19242006", "SCT", "Pulmonary edema"), FindingState.NOT_DETECTED, 0.21, True),
    (Code("95436008", "SCT", "Lung consolidation"), FindingState.INDETERMINATE, 0.5123456789, False),
    (Code("33737001", "SCT", "Fracture of rib"), FindingState.NOT_DETECTED, 0.0, False),
    (Code("87433001", "SCT", "Pulmonary emphysema"), FindingState.NOT_DETECTED, 0.3, False),
    (Code("51615001", "SCT", "Pulmonary fibrosis"), FindingState.NOT_DETECTED, 0.123456789012345, False),
    (Code("84089009", "SCT", "Hiatal hernia"), FindingState.NOT_DETECTED, 0.01, False),
    (Code("PNEUMOPERI", "99TEST", "Pneumoperitoneum"), FindingState.NOT_DETECTED, 0.2, True),
    (Code("LUNGNODULE", "99TEST", "Lung nodule"), FindingState.PRESENT, 1.0, False),
]


def _assist_result(study: Study, algorithm: AlgorithmInfo | None = None) -> TriageResult:
    evaluated = (_ref(study.pa), _ref(study.lateral))
    findings = tuple(
        FindingResult(
            finding=code,
            state=state,
            score=score,
            threshold=0.6,
            urgent=urgent,
            # the score is the max over images; say which image it came from
            source_images=evaluated[:1] if i % 2 == 0 else evaluated,
        )
        for i, (code, state, score, urgent) in enumerate(_FINDINGS)
    )
    return TriageResult(
        assist=True,
        priority="HIGH",
        no_assist_reason=None,
        no_assist_text=None,
        findings=findings,
        evaluated_images=evaluated,
        algorithm=algorithm or _algorithm(),
    )


def _build(result: TriageResult, study: Study, evidence: list[Dataset], **kwargs) -> Dataset:
    return build_triage_sr(
        result,
        study.pa,
        evidence,
        series_instance_uid=kwargs.pop("series_instance_uid", generate_uid()),
        series_number=9001,
        sop_instance_uid=kwargs.pop("sop_instance_uid", generate_uid()),
        instance_number=1,
        software_versions="0.1.0",
        **kwargs,
    )


# --------------------------------------------------------------------------- checks shared by every SR


def _save_and_reread(sr: Dataset, tmp_path: Path) -> tuple[Path, Dataset]:
    path = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def _assert_dciodvfy_clean(path: Path) -> None:
    if not dciodvfy_available():
        if os.environ.get("CI"):  # scripts/test.sh installs dicom3tools: CI must validate every SR
            pytest.fail("dciodvfy (dicom3tools) not installed and CI=true")
        pytest.skip("dciodvfy (dicom3tools) not installed")
    report = run_dciodvfy(path)
    assert report.ok, "dciodvfy errors:\n" + "\n".join(report.errors)


def _assert_same_result(actual: TriageResult, expected: TriageResult) -> None:
    """Equal, with scores compared to 1e-6 (they travel through DS/FD)."""
    assert len(actual.findings) == len(expected.findings)
    for got, want in zip(actual.findings, expected.findings, strict=True):
        assert got.score == pytest.approx(want.score, abs=1e-6)
        assert got.threshold == pytest.approx(want.threshold, abs=1e-6)
    snapped = tuple(
        dataclasses.replace(got, score=want.score, threshold=want.threshold)
        for got, want in zip(actual.findings, expected.findings, strict=True)
    )
    assert dataclasses.replace(actual, findings=snapped) == expected


def _assert_key_tags(ds: Dataset, study: Study, result: TriageResult) -> None:
    assert ds.Modality == "SR"
    assert ds.SOPClassUID == Comprehensive3DSRStorage
    assert ds.file_meta.MediaStorageSOPClassUID == Comprehensive3DSRStorage
    assert ds.PatientID == study.pa.PatientID
    assert ds.PatientName == study.pa.PatientName
    assert ds.PatientBirthDate == study.pa.PatientBirthDate
    assert ds.StudyInstanceUID == study.pa.StudyInstanceUID
    assert ds.AccessionNumber == study.pa.AccessionNumber
    assert ds.SeriesInstanceUID != study.pa.SeriesInstanceUID
    assert ds.Manufacturer == "triage-node"
    assert ds.VerificationFlag == "UNVERIFIED"
    assert ds.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert "ContributingEquipmentSequence" in ds
    air = [
        item
        for item in ds.ContributingEquipmentSequence
        if item.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
    ]
    assert len(air) == 1
    assert air[0].PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
    assert air[0].DeviceUID == algorithm_device_uid(result.algorithm)
    assert air[0].ManufacturerModelName == result.algorithm.name
    assert air[0].SoftwareVersions == result.algorithm.version
    assert result.algorithm.weights_sha256 in air[0].ContributionDescription


def _content_items(items):
    for item in items:
        yield item
        yield from _content_items(item.get("ContentSequence", []))


def _texts(ds: Dataset) -> list[str]:
    return [i.TextValue for i in _content_items(ds.ContentSequence) if i.ValueType == "TEXT"]


def _code_values(ds: Dataset) -> set[tuple[str, str]]:
    return {
        (i.ConceptCodeSequence[0].CodingSchemeDesignator, i.ConceptCodeSequence[0].CodeValue)
        for i in _content_items(ds.ContentSequence)
        if i.ValueType == "CODE"
    }


# --------------------------------------------------------------------------- tests


def test_assist_sr_with_13_findings_round_trips_and_validates(study: Study, tmp_path: Path) -> None:
    result = _assist_result(study)
    path, ds = _save_and_reread(_build(result, study, study.images), tmp_path)

    _assert_dciodvfy_clean(path)
    _assert_key_tags(ds, study, result)
    _assert_same_result(read_triage_sr(ds), result)
    assert "PredecessorDocumentsSequence" not in ds
    evidence = {
        sop.ReferencedSOPInstanceUID
        for series in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {study.pa.SOPInstanceUID, study.lateral.SOPInstanceUID}
    texts = _texts(ds)
    assert any(t.startswith("Research use only. Not for diagnostic use.") for t in texts)
    assert not any("TEST MODEL" in t for t in texts)
    assert "TEST MODEL" not in ds.SeriesDescription
    # the model never says absent or normal: not detected is SCT 260415000
    codes = _code_values(ds)
    assert ("SCT", "260415000") in codes
    assert ("SCT", "272519000") not in codes  # Absent
    assert ("DCM", "121054") not in codes  # Absent (DCM)
    assert ("SCT", "17621005") not in codes  # Normal
    # priority and provenance are in the content, readable without this library
    assert ("99TRIAGE", "HIGH") in codes
    params = [
        item.TextValue
        for item in _content_items(ds.ContentSequence)
        if item.ConceptNameCodeSequence[0].CodeValue == "111002"  # Algorithm Parameters
    ]
    algorithm = result.algorithm
    for needle in (algorithm.model_id, algorithm.model_revision, algorithm.weights_sha256,
                   algorithm.profile_name, algorithm.profile_version, algorithm.preprocessing_version):
        assert any(needle in p for p in params), needle


def test_no_assist_sr_when_no_image_qualifies(study: Study, tmp_path: Path) -> None:
    """No evidence at all: patient/study still come from the study context."""
    result = TriageResult(
        assist=False,
        priority="MEDIUM",
        no_assist_reason=Code("NOIMAGE", "99TRIAGE", "No image matches the triage profile"),
        no_assist_text="No image in the study matches profile cxr-adult (view LL not in PA/AP).",
        findings=(),
        evaluated_images=(),
        algorithm=_algorithm(),
    )
    path, ds = _save_and_reread(_build(result, study, []), tmp_path)

    _assert_dciodvfy_clean(path)
    _assert_key_tags(ds, study, result)
    back = read_triage_sr(ds)
    assert back == result
    assert back.priority == "MEDIUM" and not back.assist and back.findings == ()
    assert ("99TRIAGE", "NOASSESS") in _code_values(ds)
    assert ("99TRIAGE", "NOIMAGE") in _code_values(ds)
    assert result.no_assist_text in _texts(ds)
    assert any(t.startswith("Research use only.") for t in _texts(ds))


def test_no_assist_sr_with_indeterminate_findings(study: Study, tmp_path: Path) -> None:
    """Images were evaluated but a score fell in the indeterminate band: the evidence is still named."""
    evaluated = (_ref(study.pa),)
    result = TriageResult(
        assist=False,
        priority="MEDIUM",
        no_assist_reason=Code("INDETERMINATE", "99TRIAGE", "Score in indeterminate band"),
        no_assist_text=None,
        findings=(
            FindingResult(
                Code("36118008", "SCT", "Pneumothorax"), FindingState.INDETERMINATE, 0.55, 0.6, True, evaluated
            ),
        ),
        evaluated_images=evaluated,
        algorithm=_algorithm(),
    )
    path, ds = _save_and_reread(_build(result, study, [study.pa]), tmp_path)

    _assert_dciodvfy_clean(path)
    _assert_key_tags(ds, study, result)
    _assert_same_result(read_triage_sr(ds), result)


def test_retriage_sr_names_its_predecessor(study: Study, tmp_path: Path) -> None:
    first_result = dataclasses.replace(
        _assist_result(study),
        priority="MEDIUM",
        findings=(),
        evaluated_images=(_ref(study.pa),),
    )
    _, first = _save_and_reread(_build(first_result, study, [study.pa]), tmp_path)

    predecessor = sr_reference(first)
    result = _assist_result(study)
    path, ds = _save_and_reread(_build(result, study, study.images, predecessor=predecessor), tmp_path)

    _assert_dciodvfy_clean(path)
    _assert_key_tags(ds, study, result)
    assert "PredecessorDocumentsSequence" in ds
    item = ds.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == first.StudyInstanceUID
    assert item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert read_predecessor(ds) == predecessor
    assert read_predecessor(first) is None
    _assert_same_result(read_triage_sr(ds), result)


def test_test_model_sr_says_scores_mean_nothing(study: Study, tmp_path: Path) -> None:
    result = _assist_result(study, _algorithm(is_test_model=True))
    path, ds = _save_and_reread(_build(result, study, study.images), tmp_path)

    _assert_dciodvfy_clean(path)
    _assert_key_tags(ds, study, result)
    assert "TEST MODEL" in ds.SeriesDescription
    assert any("TEST MODEL" in t and "meaningless" in t for t in _texts(ds))
    back = read_triage_sr(ds)
    assert back.algorithm.is_test_model
    _assert_same_result(back, result)


@pytest.mark.parametrize("priority", ["LOW", "low", "ROUTINE", "STAT", ""])
def test_priority_other_than_high_or_medium_is_refused(study: Study, priority: str) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(_assist_result(study), priority=priority)


def test_triage_invariants_are_enforced(study: Study) -> None:
    result = _assist_result(study)
    reason = Code("TIMEOUT", "99TRIAGE", "Model timed out")
    with pytest.raises(ValueError, match="MEDIUM"):  # no-assist never raises priority
        dataclasses.replace(result, assist=False, no_assist_reason=reason)
    with pytest.raises(ValueError, match="reason"):  # no-assist must say why
        dataclasses.replace(result, assist=False, priority="MEDIUM")
    with pytest.raises(ValueError, match="urgent"):  # HIGH must be explained by an urgent present finding
        dataclasses.replace(result, findings=result.findings[1:])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dataclasses.replace(result.findings[0], score=1.5)
    with pytest.raises(ValueError, match="not evaluated"):
        dataclasses.replace(result, evaluated_images=(_ref(study.lateral),))


def test_cited_image_must_be_in_evidence(study: Study) -> None:
    with pytest.raises(ValueError, match="evidence"):
        _build(_assist_result(study), study, [study.lateral])


def test_device_uid_follows_the_weights() -> None:
    algorithm = _algorithm()
    assert algorithm_device_uid(algorithm) == algorithm_device_uid(_algorithm())
    changed = dataclasses.replace(algorithm, weights_sha256="0" * 64)
    assert algorithm_device_uid(changed) != algorithm_device_uid(algorithm)
    assert len(algorithm_device_uid(algorithm)) <= 64


def test_reader_refuses_what_is_not_a_triage_sr(study: Study, tmp_path: Path) -> None:
    with pytest.raises(TriageSRError):
        read_triage_sr(study.pa)
    _, ds = _save_and_reread(_build(_assist_result(study), study, study.images), tmp_path)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    with pytest.raises(TriageSRError):
        read_triage_sr(ds)


def test_sr_reference_points_at_the_sr(study: Study, tmp_path: Path) -> None:
    sop_uid, series_uid = generate_uid(), generate_uid()
    _, ds = _save_and_reread(
        _build(_assist_result(study), study, study.images, sop_instance_uid=sop_uid, series_instance_uid=series_uid),
        tmp_path,
    )
    assert sr_reference(ds) == SRReference(study.pa.StudyInstanceUID, series_uid, Comprehensive3DSRStorage, sop_uid)


def test_sloppy_study_context_and_non_ascii_text(study: Study, tmp_path: Path) -> None:
    """A bare header (type 2 attributes missing) and non-ASCII text still give a valid SR."""
    context = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "PatientID"):
        setattr(context, keyword, getattr(study.pa, keyword))
    context.SpecificCharacterSet = "ISO_IR 100"
    context.PatientName = "Müller^Jürgen"
    result = TriageResult(
        assist=False,
        priority="MEDIUM",
        no_assist_reason=Code("DOMAIN", "99TRIAGE", "Image fails the domain check"),
        no_assist_text="Bildqualität unzureichend – 画像",
        findings=(),
        evaluated_images=(),
        algorithm=_algorithm(),
    )
    sr = build_triage_sr(
        result,
        context,
        [],
        series_instance_uid=generate_uid(),
        series_number=9001,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    path, ds = _save_and_reread(sr, tmp_path)

    _assert_dciodvfy_clean(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == "Müller^Jürgen"
    assert ds.PatientID == study.pa.PatientID
    assert read_triage_sr(ds) == result


def test_study_character_set_is_kept_when_our_text_is_ascii(study: Study, tmp_path: Path) -> None:
    study.pa.PatientName = "Müller^Jürgen"
    _, ds = _save_and_reread(_build(_assist_result(study), study, study.images), tmp_path)
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert ds.PatientName == "Müller^Jürgen"


def test_sr_goes_into_a_new_series_and_supersedes_only_its_own_study(study: Study) -> None:
    with pytest.raises(ValueError, match="new series"):
        _build(_assist_result(study), study, study.images, series_instance_uid=study.pa.SeriesInstanceUID)
    elsewhere = SRReference(generate_uid(), generate_uid(), Comprehensive3DSRStorage, generate_uid())
    with pytest.raises(ValueError, match="another study"):
        _build(_assist_result(study), study, study.images, predecessor=elsewhere)


# --------------------------------------------------------------------------- issue 7: kept raise, every score


def _traceable_no_assist(study: Study, *, kept_from: str | None) -> TriageResult:
    """An urgent-indeterminate no-assist result with its scores, bands and per-image facts."""
    evaluated = (_ref(study.pa),)
    findings = (
        FindingResult(finding=Code("36118008", "SCT", "Pneumothorax"), state=FindingState.INDETERMINATE,
                      score=0.55, threshold=0.6, urgent=True, source_images=evaluated, band_low=0.4, band_high=0.6),
        FindingResult(finding=Code("60046008", "SCT", "Pleural effusion"), state=FindingState.NOT_DETECTED,
                      score=0.1, threshold=0.7, urgent=False, source_images=evaluated, band_low=0.3, band_high=0.7),
    )
    images = (
        ImageAssessment(image=_ref(study.pa), preprocessing="tn-pre-1: window(center=2048, width=4096)",
                        evaluated=True, domain_score=0.93),
        ImageAssessment(image=_ref(study.lateral), preprocessing="tn-pre-1: window(center=2000, width=4000)",
                        evaluated=False, domain_score=0.12),
    )
    return TriageResult(
        assist=False, priority="HIGH" if kept_from else "MEDIUM",
        no_assist_reason=Code("urgent-finding-indeterminate", "99TRIAGE", "Urgent finding indeterminate"),
        no_assist_text="No AI assessment: the score of an urgent finding is in its indeterminate band.",
        findings=findings, evaluated_images=evaluated, algorithm=_algorithm(), images=images,
        priority_kept_from=kept_from)


@pytest.mark.parametrize("kept_from", [None, "1.2.826.0.1.3680043.8.498.123456789"])
def test_no_assist_sr_keeps_every_score_band_domain_score_and_a_kept_high(
        study: Study, tmp_path: Path, kept_from: str | None) -> None:
    result = _traceable_no_assist(study, kept_from=kept_from)
    path, ds = _save_and_reread(_build(result, study, study.images), tmp_path)
    _assert_dciodvfy_clean(path)
    back = read_triage_sr(ds)
    assert back.priority_kept_from == kept_from and back.priority == result.priority
    assert [(f.band_low, f.band_high, f.threshold) for f in back.findings] == [(0.4, 0.6, 0.6), (0.3, 0.7, 0.7)]
    assert [f.score for f in back.findings] == pytest.approx([0.55, 0.1])
    assert [(a.image.sop_instance_uid, a.evaluated) for a in back.images] == [
        (study.pa.SOPInstanceUID, True), (study.lateral.SOPInstanceUID, False)]
    assert [a.domain_score for a in back.images] == pytest.approx([0.93, 0.12])
    assert [a.preprocessing for a in back.images] == [a.preprocessing for a in result.images]
    texts = _texts(ds)
    if kept_from:
        assert f"Priority kept HIGH from the earlier assessment {kept_from}: only a person clears a raised priority." \
            in texts
    else:
        assert not any("Priority kept" in t for t in texts)


def test_kept_priority_rules_are_enforced(study: Study) -> None:
    kept = _traceable_no_assist(study, kept_from="1.2.3")
    with pytest.raises(ValueError, match="only a HIGH priority can be kept"):
        dataclasses.replace(kept, priority="MEDIUM")
    with pytest.raises(ValueError, match="MEDIUM"):  # no-assist HIGH without a kept raise
        dataclasses.replace(kept, priority_kept_from=None)
    assist = _assist_result(study)
    without_urgent = dataclasses.replace(assist, findings=assist.findings[1:], priority_kept_from="1.2.3")
    assert without_urgent.priority == "HIGH"  # a kept HIGH explains itself
    with pytest.raises(ValueError, match="raise the priority to HIGH"):  # urgent present must raise
        dataclasses.replace(assist, priority="MEDIUM")
    with pytest.raises(ValueError, match="inside the indeterminate band"):
        dataclasses.replace(kept.findings[0], threshold=0.5)
    with pytest.raises(ValueError, match="exactly the images marked evaluated"):
        dataclasses.replace(kept, evaluated_images=())
    with pytest.raises(ValueError, match="domain score"):
        ImageAssessment(image=_ref(study.pa), preprocessing="x", evaluated=True, domain_score=None)
