"""dicom_sr: build triage SRs from synthetic DX chest studies, write them, read them back, validate them.

No mocks: real pydicom datasets on disk, real highdicom, real dciodvfy.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    generate_uid,
)

from dicom_sr import (
    Code,
    FindingResult,
    FindingState,
    ImageAssessment,
    SRReference,
    TriageResult,
    TriageSRError,
    algorithm_device_uid,
    build_triage_sr,
    read_predecessor,
    read_triage_sr,
    sr_reference,
)
from tests.support.sr import (
    Study,
    algorithm_info,
    assert_dciodvfy_clean,
    assert_key_tags,
    assert_same_result,
    assist_result,
    build_sr,
    content_items,
    image_ref,
    save_and_reread,
    sr_code_values,
    sr_texts,
)

# --------------------------------------------------------------------------- tests


def test_assist_sr_with_13_findings_round_trips_and_validates(study: Study, tmp_path: Path) -> None:
    result = assist_result(study)
    path, ds = save_and_reread(build_sr(result, study, study.images), tmp_path)

    assert_dciodvfy_clean(path)
    assert_key_tags(ds, study, result)
    assert_same_result(read_triage_sr(ds), result)
    assert "PredecessorDocumentsSequence" not in ds
    evidence = {
        sop.ReferencedSOPInstanceUID
        for series in ds.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
        for sop in series.ReferencedSOPSequence
    }
    assert evidence == {study.pa.SOPInstanceUID, study.lateral.SOPInstanceUID}
    texts = sr_texts(ds)
    assert any(t.startswith("Research use only. Not for diagnostic use.") for t in texts)
    assert not any("TEST MODEL" in t for t in texts)
    assert "TEST MODEL" not in ds.SeriesDescription
    # the model never says absent or normal: not detected is SCT 260415000
    codes = sr_code_values(ds)
    assert ("SCT", "260415000") in codes
    assert ("SCT", "272519000") not in codes  # Absent
    assert ("DCM", "121054") not in codes  # Absent (DCM)
    assert ("SCT", "17621005") not in codes  # Normal
    # priority and provenance are in the content, readable without this library
    assert ("99TRIAGE", "HIGH") in codes
    params = [
        item.TextValue
        for item in content_items(ds.ContentSequence)
        if item.ConceptNameCodeSequence[0].CodeValue == "111002"  # Algorithm Parameters
    ]
    algorithm = result.algorithm
    for needle in (
        algorithm.model_id,
        algorithm.model_revision,
        algorithm.weights_sha256,
        algorithm.profile_name,
        algorithm.profile_version,
        algorithm.preprocessing_version,
    ):
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
        algorithm=algorithm_info(),
    )
    path, ds = save_and_reread(build_sr(result, study, []), tmp_path)

    assert_dciodvfy_clean(path)
    assert_key_tags(ds, study, result)
    back = read_triage_sr(ds)
    assert back == result
    assert back.priority == "MEDIUM" and not back.assist and back.findings == ()
    assert ("99TRIAGE", "NOASSESS") in sr_code_values(ds)
    assert ("99TRIAGE", "NOIMAGE") in sr_code_values(ds)
    assert result.no_assist_text in sr_texts(ds)
    assert any(t.startswith("Research use only.") for t in sr_texts(ds))


def test_no_assist_sr_with_indeterminate_findings(study: Study, tmp_path: Path) -> None:
    """Images were evaluated but a score fell in the indeterminate band: the evidence is still named."""
    evaluated = (image_ref(study.pa),)
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
        algorithm=algorithm_info(),
    )
    path, ds = save_and_reread(build_sr(result, study, [study.pa]), tmp_path)

    assert_dciodvfy_clean(path)
    assert_key_tags(ds, study, result)
    assert_same_result(read_triage_sr(ds), result)


def test_retriage_sr_names_its_predecessor(study: Study, tmp_path: Path) -> None:
    first_result = dataclasses.replace(
        assist_result(study),
        priority="MEDIUM",
        findings=(),
        evaluated_images=(image_ref(study.pa),),
    )
    _, first = save_and_reread(build_sr(first_result, study, [study.pa]), tmp_path)

    predecessor = sr_reference(first)
    result = assist_result(study)
    path, ds = save_and_reread(build_sr(result, study, study.images, predecessor=predecessor), tmp_path)

    assert_dciodvfy_clean(path)
    assert_key_tags(ds, study, result)
    assert "PredecessorDocumentsSequence" in ds
    item = ds.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == first.StudyInstanceUID
    assert item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert read_predecessor(ds) == predecessor
    assert read_predecessor(first) is None
    assert_same_result(read_triage_sr(ds), result)


def test_test_model_sr_says_scores_mean_nothing(study: Study, tmp_path: Path) -> None:
    result = assist_result(study, algorithm_info(is_test_model=True))
    path, ds = save_and_reread(build_sr(result, study, study.images), tmp_path)

    assert_dciodvfy_clean(path)
    assert_key_tags(ds, study, result)
    assert "TEST MODEL" in ds.SeriesDescription
    assert any("TEST MODEL" in t and "meaningless" in t for t in sr_texts(ds))
    back = read_triage_sr(ds)
    assert back.algorithm.is_test_model
    assert_same_result(back, result)


@pytest.mark.parametrize("priority", ["LOW", "low", "ROUTINE", "STAT", ""])
def test_priority_other_than_high_or_medium_is_refused(study: Study, priority: str) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(assist_result(study), priority=priority)


def test_triage_invariants_are_enforced(study: Study) -> None:
    result = assist_result(study)
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
        dataclasses.replace(result, evaluated_images=(image_ref(study.lateral),))


def test_cited_image_must_be_in_evidence(study: Study) -> None:
    with pytest.raises(ValueError, match="evidence"):
        build_sr(assist_result(study), study, [study.lateral])


def test_device_uid_follows_the_weights() -> None:
    algorithm = algorithm_info()
    assert algorithm_device_uid(algorithm) == algorithm_device_uid(algorithm_info())
    changed = dataclasses.replace(algorithm, weights_sha256="0" * 64)
    assert algorithm_device_uid(changed) != algorithm_device_uid(algorithm)
    assert len(algorithm_device_uid(algorithm)) <= 64


def test_reader_refuses_what_is_not_a_triage_sr(study: Study, tmp_path: Path) -> None:
    with pytest.raises(TriageSRError):
        read_triage_sr(study.pa)
    _, ds = save_and_reread(build_sr(assist_result(study), study, study.images), tmp_path)
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    with pytest.raises(TriageSRError):
        read_triage_sr(ds)


def test_sr_reference_points_at_the_sr(study: Study, tmp_path: Path) -> None:
    sop_uid, series_uid = generate_uid(), generate_uid()
    _, ds = save_and_reread(
        build_sr(assist_result(study), study, study.images, sop_instance_uid=sop_uid, series_instance_uid=series_uid),
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
        algorithm=algorithm_info(),
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
    path, ds = save_and_reread(sr, tmp_path)

    assert_dciodvfy_clean(path)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == "Müller^Jürgen"
    assert ds.PatientID == study.pa.PatientID
    assert read_triage_sr(ds) == result


def test_study_character_set_is_kept_when_our_text_is_ascii(study: Study, tmp_path: Path) -> None:
    study.pa.PatientName = "Müller^Jürgen"
    _, ds = save_and_reread(build_sr(assist_result(study), study, study.images), tmp_path)
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    assert ds.PatientName == "Müller^Jürgen"


def test_sr_goes_into_a_new_series_and_supersedes_only_its_own_study(study: Study) -> None:
    with pytest.raises(ValueError, match="new series"):
        build_sr(assist_result(study), study, study.images, series_instance_uid=study.pa.SeriesInstanceUID)
    elsewhere = SRReference(generate_uid(), generate_uid(), Comprehensive3DSRStorage, generate_uid())
    with pytest.raises(ValueError, match="another study"):
        build_sr(assist_result(study), study, study.images, predecessor=elsewhere)


# --------------------------------------------------------------------------- issue 7: kept raise, every score


def _traceable_no_assist(study: Study, *, kept_from: str | None) -> TriageResult:
    """An urgent-indeterminate no-assist result with its scores, bands and per-image facts."""
    evaluated = (image_ref(study.pa),)
    findings = (
        FindingResult(
            finding=Code("36118008", "SCT", "Pneumothorax"),
            state=FindingState.INDETERMINATE,
            score=0.55,
            threshold=0.6,
            urgent=True,
            source_images=evaluated,
            band_low=0.4,
            band_high=0.6,
        ),
        FindingResult(
            finding=Code("60046008", "SCT", "Pleural effusion"),
            state=FindingState.NOT_DETECTED,
            score=0.1,
            threshold=0.7,
            urgent=False,
            source_images=evaluated,
            band_low=0.3,
            band_high=0.7,
        ),
    )
    images = (
        ImageAssessment(
            image=image_ref(study.pa),
            preprocessing="tn-pre-1: window(center=2048, width=4096)",
            evaluated=True,
            domain_score=0.93,
        ),
        ImageAssessment(
            image=image_ref(study.lateral),
            preprocessing="tn-pre-1: window(center=2000, width=4000)",
            evaluated=False,
            domain_score=0.12,
        ),
    )
    return TriageResult(
        assist=False,
        priority="HIGH" if kept_from else "MEDIUM",
        no_assist_reason=Code("urgent-finding-indeterminate", "99TRIAGE", "Urgent finding indeterminate"),
        no_assist_text="No AI assessment: the score of an urgent finding is in its indeterminate band.",
        findings=findings,
        evaluated_images=evaluated,
        algorithm=algorithm_info(),
        images=images,
        priority_kept_from=kept_from,
    )


@pytest.mark.parametrize("kept_from", [None, "1.2.826.0.1.3680043.8.498.123456789"])
def test_no_assist_sr_keeps_every_score_band_domain_score_and_a_kept_high(
    study: Study, tmp_path: Path, kept_from: str | None
) -> None:
    result = _traceable_no_assist(study, kept_from=kept_from)
    path, ds = save_and_reread(build_sr(result, study, study.images), tmp_path)
    assert_dciodvfy_clean(path)
    back = read_triage_sr(ds)
    assert back.priority_kept_from == kept_from and back.priority == result.priority
    assert [(f.band_low, f.band_high, f.threshold) for f in back.findings] == [(0.4, 0.6, 0.6), (0.3, 0.7, 0.7)]
    assert [f.score for f in back.findings] == pytest.approx([0.55, 0.1])
    assert [(a.image.sop_instance_uid, a.evaluated) for a in back.images] == [
        (study.pa.SOPInstanceUID, True),
        (study.lateral.SOPInstanceUID, False),
    ]
    assert [a.domain_score for a in back.images] == pytest.approx([0.93, 0.12])
    assert [a.preprocessing for a in back.images] == [a.preprocessing for a in result.images]
    texts = sr_texts(ds)
    if kept_from:
        assert (
            f"Priority kept HIGH from the earlier assessment {kept_from}: only a person clears a raised priority."
            in texts
        )
    else:
        assert not any("Priority kept" in t for t in texts)


def test_kept_priority_rules_are_enforced(study: Study) -> None:
    kept = _traceable_no_assist(study, kept_from="1.2.3")
    with pytest.raises(ValueError, match="only a HIGH priority can be kept"):
        dataclasses.replace(kept, priority="MEDIUM")
    with pytest.raises(ValueError, match="MEDIUM"):  # no-assist HIGH without a kept raise
        dataclasses.replace(kept, priority_kept_from=None)
    assist = assist_result(study)
    without_urgent = dataclasses.replace(assist, findings=assist.findings[1:], priority_kept_from="1.2.3")
    assert without_urgent.priority == "HIGH"  # a kept HIGH explains itself
    with pytest.raises(ValueError, match="raise the priority to HIGH"):  # urgent present must raise
        dataclasses.replace(assist, priority="MEDIUM")
    with pytest.raises(ValueError, match="inside the indeterminate band"):
        dataclasses.replace(kept.findings[0], threshold=0.5)
    with pytest.raises(ValueError, match="exactly the images marked evaluated"):
        dataclasses.replace(kept, evaluated_images=())
    with pytest.raises(ValueError, match="domain score"):
        ImageAssessment(image=image_ref(study.pa), preprocessing="x", evaluated=True, domain_score=None)
