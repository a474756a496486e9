"""Synthetic chest studies and triage results for the SR tests (tests/sr), and the checks every
SR must pass (written, read back unchanged, dciodvfy-clean)."""

from __future__ import annotations

import dataclasses
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
    ImageRef,
    TriageResult,
    algorithm_device_uid,
    build_triage_sr,
    dciodvfy_available,
    run_dciodvfy,
)
from tests.support.ci import skip_or_fail

# --------------------------------------------------------------------------- synthetic study


def dx_image(study_uid: str, series_uid: str, number: int, view: str) -> Dataset:
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


def image_ref(ds: Dataset) -> ImageRef:
    return ImageRef(ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID)


def algorithm_info(is_test_model: bool = False) -> AlgorithmInfo:
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


def assist_result(study: Study, algorithm: AlgorithmInfo | None = None) -> TriageResult:
    evaluated = (image_ref(study.pa), image_ref(study.lateral))
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
        algorithm=algorithm or algorithm_info(),
    )


def build_sr(result: TriageResult, study: Study, evidence: list[Dataset], **kwargs) -> Dataset:
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


def save_and_reread(sr: Dataset, tmp_path: Path) -> tuple[Path, Dataset]:
    path = tmp_path / f"{sr.SOPInstanceUID}.dcm"
    sr.save_as(path, enforce_file_format=True)
    return path, pydicom.dcmread(path)


def assert_dciodvfy_clean(path: Path) -> None:
    if not dciodvfy_available():  # scripts/test.sh installs dicom3tools: CI must validate every SR
        skip_or_fail("dciodvfy (dicom3tools) not installed")
    report = run_dciodvfy(path)
    assert report.ok, "dciodvfy errors:\n" + "\n".join(report.errors)


def assert_same_result(actual: TriageResult, expected: TriageResult) -> None:
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


def assert_key_tags(ds: Dataset, study: Study, result: TriageResult) -> None:
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


def content_items(items):
    for item in items:
        yield item
        yield from content_items(item.get("ContentSequence", []))


def sr_texts(ds: Dataset) -> list[str]:
    return [i.TextValue for i in content_items(ds.ContentSequence) if i.ValueType == "TEXT"]


def sr_code_values(ds: Dataset) -> set[tuple[str, str]]:
    return {
        (i.ConceptCodeSequence[0].CodingSchemeDesignator, i.ConceptCodeSequence[0].CodeValue)
        for i in content_items(ds.ContentSequence)
        if i.ValueType == "CODE"
    }
