"""What viewers, PACS and RIS need from the SR (issue 14): per image that a finding cites, a
whole-image TID 1410 group listing each finding's state and score (what OHIF draws as labels), placed
first; the Current Requested Procedure Evidence Sequence; the Referenced Request Sequence from the
study's order; still dciodvfy-clean and read back unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from highdicom.sr import Comprehensive3DSR
from pydicom.uid import generate_uid

from dicom_sr import read_triage_sr
from tests.support.sr import (
    Study,
    algorithm_info,
    assert_dciodvfy_clean,
    assert_same_result,
    assist_result,
    build_sr,
    save_and_reread,
)

PERCENT = ("%", "UCUM")


def test_image_level_groups_reference_the_images_that_drove_each_finding(study: Study, tmp_path: Path) -> None:
    result = assist_result(study)
    path, ds = save_and_reread(build_sr(result, study, study.images), tmp_path)
    assert_dciodvfy_clean(path)
    assert_same_result(read_triage_sr(ds), result)  # the study-level reading is unchanged

    report = Comprehensive3DSR.from_dataset(ds).content
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == 2  # one per cited image (PA cited by all findings, lateral by every other one)
    imaging = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    assert imaging.ContentSequence[0].ContentSequence[0].TextValue == groups[0].tracking_identifier  # first
    by_image = {}
    for group in groups:
        region = group.roi
        (source,) = [region.ContentSequence[0]]
        uid = source.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        outline = region.value
        assert np.array_equal(outline, [[0, 0], [16, 0], [16, 16], [0, 16], [0, 0]])  # the whole 16 x 16 image
        by_image[uid] = group
    assert set(by_image) == {study.pa.SOPInstanceUID, study.lateral.SOPInstanceUID}

    pa = by_image[study.pa.SOPInstanceUID]
    scores = {
        (m.name.value, m.name.scheme_designator): (float(m.value), (m.unit.value, m.unit.scheme_designator))
        for m in pa.get_measurements()
    }
    assert len(scores) == len(result.findings)
    for finding in result.findings:
        value, unit = scores[(finding.finding.value, finding.finding.scheme)]
        assert abs(value - round(finding.score * 100, 2)) < 1e-9 and unit == PERCENT
    from dicom_sr import FindingState
    from dicom_sr.codes import STATE_CODES

    state_of = {(f.finding.value, f.finding.scheme): f.state for f in result.findings}
    evaluations = pa.get_qualitative_evaluations()
    assert len(evaluations) == len(result.findings)
    for e in evaluations:
        assert e.value == STATE_CODES[state_of[(e.name.value, e.name.scheme_designator)]]
    assert state_of[(evaluations[0].name.value, evaluations[0].name.scheme_designator)] is FindingState.PRESENT
    first = pa.get_measurements()[0].name.meaning
    assert first in ("Lung nodule", "Pneumothorax")  # present findings first, highest score first
    assert pa.tracking_identifier.startswith("AI triage HIGH: ")
    assert not result.algorithm.is_test_model

    noise = dataclasses.replace(result, algorithm=dataclasses.replace(result.algorithm, is_test_model=True))
    (tmp_path / "test-model").mkdir()
    _, test_ds = save_and_reread(build_sr(noise, study, study.images), tmp_path / "test-model")
    labels = [
        g.tracking_identifier
        for g in Comprehensive3DSR.from_dataset(test_ds).content.get_planar_roi_measurement_groups()
    ]
    assert labels and all(label.startswith("TEST MODEL, scores are noise. AI triage HIGH: ") for label in labels)
    lateral = by_image[study.lateral.SOPInstanceUID]
    assert len(lateral.get_measurements()) == sum(1 for i in range(len(result.findings)) if i % 2)


def test_requested_procedure_evidence_and_referenced_request(study: Study, tmp_path: Path) -> None:
    result = assist_result(study)
    _, ds = save_and_reread(build_sr(result, study, study.images), tmp_path)
    (evidence,) = ds.CurrentRequestedProcedureEvidenceSequence
    assert evidence.StudyInstanceUID == study.pa.StudyInstanceUID
    listed = {
        s.ReferencedSOPInstanceUID for series in evidence.ReferencedSeriesSequence for s in series.ReferencedSOPSequence
    }
    assert listed == {study.pa.SOPInstanceUID, study.lateral.SOPInstanceUID}
    (request,) = ds.ReferencedRequestSequence
    assert (request.StudyInstanceUID, request.AccessionNumber) == (study.pa.StudyInstanceUID, "ACC0001")
    assert request.RequestedProcedureDescription == "XR CHEST"

    # an order given by Request Attributes: its procedure ID and code travel too
    from pydicom import Dataset

    item = Dataset()
    item.RequestedProcedureID = "RP-7"
    item.ScheduledProcedureStepID = "SPS-7"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID17", "RADLEX", "XR Chest 2 views"
    item.RequestedProcedureCodeSequence = [code]
    study.pa.RequestAttributesSequence = [item]
    path, ds = save_and_reread(build_sr(result, study, study.images), tmp_path)
    assert_dciodvfy_clean(path)
    (request,) = ds.ReferencedRequestSequence
    assert request.RequestedProcedureID == "RP-7"
    assert request.RequestedProcedureCodeSequence[0].CodeValue == "RPID17"

    # no accession number and no request: no Referenced Request (type 1C, the SR answers no known order)
    del study.pa.RequestAttributesSequence
    study.pa.AccessionNumber = ""
    _, ds = save_and_reread(build_sr(result, study, study.images, sop_instance_uid=generate_uid()), tmp_path)
    assert "ReferencedRequestSequence" not in ds


def test_no_assist_summary_card_and_pdf_validate(study: Study, tmp_path: Path) -> None:
    """The card of a no-assist result: the reason once, no findings table, no thumbnail; SC and PDF
    are valid instances of the study (dciodvfy)."""
    from pydicom.uid import ExplicitVRLittleEndian

    from dicom_sr import Code, TriageResult
    from dicom_sr.card import build_card_pdf, build_card_sc, card_pdf, card_text, render_card

    result = TriageResult(
        assist=False,
        priority="MEDIUM",
        no_assist_reason=Code("no-eligible-image", "99TRIAGE", "No eligible image"),
        no_assist_text="No AI assessment: no image fits the profile",
        findings=(),
        evaluated_images=(),
        algorithm=algorithm_info(is_test_model=True),
    )
    text = card_text(result, "1.2.3")
    assert text.priority.count("No AI assessment") == 1 and text.findings == ()
    assert "not raised" in text.priority and "MEDIUM" not in text.priority  # never "worklist priority MEDIUM"
    assert "TEST MODEL" in text.warning
    pixels = render_card(result, "1.2.3", None)
    sc = build_card_sc(
        result,
        study.pa,
        pixels,
        series_instance_uid=generate_uid(),
        series_number=9902,
        sop_instance_uid=generate_uid(),
        manufacturer="triage-node",
        software_versions="0.1.0",
    )
    pdf = build_card_pdf(
        card_pdf(pixels),
        study.pa,
        series_instance_uid=generate_uid(),
        series_number=9903,
        sop_instance_uid=generate_uid(),
        manufacturer="triage-node",
        software_versions="0.1.0",
    )
    from pydicom.dataset import FileMetaDataset

    for ds in (sc, pdf):
        if not hasattr(ds, "file_meta"):
            ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path, back = save_and_reread(ds, tmp_path)
        assert_dciodvfy_clean(path)
        assert (back.StudyInstanceUID, back.PatientID) == (study.pa.StudyInstanceUID, study.pa.PatientID)
    assert bytes(pdf.EncapsulatedDocument)[:4] == b"%PDF" and pdf.EncapsulatedDocumentLength <= len(
        pdf.EncapsulatedDocument
    )


def test_a_no_assist_result_draws_no_scores_on_the_image(study: Study, tmp_path: Path) -> None:
    """Viewers draw image-level groups as labels: a no-assist SR labels the image "No AI
    assessment (...)" and puts no finding score or state there (they stay at study level)."""
    import pytest

    from dicom_sr import Code, FindingResult, FindingState, ImageRef, TriageResult

    evaluated = (ImageRef(study.pa.SOPClassUID, study.pa.SOPInstanceUID, study.pa.SeriesInstanceUID),)
    finding = FindingResult(
        finding=Code("36118008", "SCT", "Pneumothorax"),
        state=FindingState.INDETERMINATE,
        score=0.55,
        threshold=0.6,
        urgent=True,
        source_images=evaluated,
        band_low=0.4,
        band_high=0.6,
    )
    result = TriageResult(
        assist=False,
        priority="MEDIUM",
        no_assist_reason=Code("urgent-finding-indeterminate", "99TRIAGE", "Urgent finding indeterminate"),
        no_assist_text="No AI assessment: an urgent finding is indeterminate.",
        findings=(finding,),
        evaluated_images=evaluated,
        algorithm=algorithm_info(),
    )
    path, ds = save_and_reread(build_sr(result, study, [study.pa]), tmp_path)
    assert_dciodvfy_clean(path)

    def walk(items):  # type: ignore[no-untyped-def]
        for item in items:
            yield item
            yield from walk(item.get("ContentSequence", []))

    image_groups = [
        g
        for g in walk(ds.ContentSequence)
        if g.ValueType == "CONTAINER" and any(i.ValueType == "SCOORD" for i in g.get("ContentSequence", []))
    ]
    assert image_groups, "the image still carries a label"
    for group in image_groups:
        items = group.ContentSequence
        label = next(i.TextValue for i in items if i.ConceptNameCodeSequence[0].CodeMeaning == "Tracking Identifier")
        assert label.startswith("No AI assessment")
        assert not [i for i in items if i.ValueType == "NUM"]
        assert not [i for i in items if i.ConceptNameCodeSequence[0].CodeValue == "36118008"]
    back = read_triage_sr(ds)
    assert back.findings[0].score == pytest.approx(0.55)  # the study-level score is still there
