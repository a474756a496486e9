"""The summary card: the triage result as a picture, for PACS and viewers that show only images.

Why: many PACS cannot render an SR at all; a Secondary Capture image with the priority, the
findings (score against threshold), the no-assist reason, model and profile versions, a
thumbnail of the image the model evaluated and a "research use only" banner is seen wherever
images are seen. The same picture wrapped as an Encapsulated PDF serves systems that file
documents (the PDF holds the card as one page image).

The card carries no patient identifiers in its pixels (Burned In Annotation NO): those are in
the DICOM header only, copied from the study like in the SR.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from .result import PRIORITY_HIGH, PRIORITY_NOT_RAISED_TEXT, FindingResult, FindingState, TriageResult

WIDTH, HEIGHT = 1024, 768
THUMB = 320
BANNER = "RESEARCH USE ONLY - NOT FOR DIAGNOSTIC USE"
STATE_TEXT = {
    FindingState.PRESENT: "present (above threshold)",
    FindingState.NOT_DETECTED: "not detected by the model",
    FindingState.INDETERMINATE: "indeterminate",
}
ENCAPSULATED_PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


@dataclass(frozen=True)
class CardText:
    """The lines of the card, kept apart from drawing so that tests and other outputs read them."""

    title: str
    priority: str
    findings: tuple[str, ...]
    provenance: tuple[str, ...]
    warning: str


def card_text(result: TriageResult, sr_sop_instance_uid: str) -> CardText:
    alg = result.algorithm
    kept = getattr(result, "priority_kept_from", None)
    if kept:
        why = " (kept from an earlier AI result until a person clears it)"
    elif result.priority == PRIORITY_HIGH:
        why = " (raised by the model)"
    else:
        why = ""
    # The SR's MEDIUM means "not raised by the AI"; the worklist keeps the order's own priority
    # (STAT, LOW), so the card never calls MEDIUM the worklist priority.
    stated = (
        f"Worklist priority: {result.priority}{why}" if result.priority == PRIORITY_HIGH else PRIORITY_NOT_RAISED_TEXT
    )
    if result.assist:
        priority = stated
    else:
        reason = result.no_assist_text or (result.no_assist_reason.meaning if result.no_assist_reason else "")
        reason = reason if reason.lower().startswith("no ai assessment") else f"No AI assessment: {reason}"
        priority = f"{reason.rstrip('.')}. {stated}."
    findings = tuple(_finding_line(f) for f in result.findings)
    provenance = (
        f"Model: {alg.model_id} @ {alg.model_revision}; weights sha256 {alg.weights_sha256[:16]}",
        f"Profile: {alg.profile_name} {alg.profile_version}; preprocessing {alg.preprocessing_version}",
        f"Software: {alg.name} {alg.version}",
        f"Full result: DICOM SR {sr_sop_instance_uid}",
    )
    warning = (
        "TEST MODEL: random weights, the scores are noise and mean nothing"
        if alg.is_test_model
        else "A negative result means 'not detected by the model', never 'normal'."
    )
    return CardText("AI triage summary", priority, findings, provenance, warning)


def _finding_line(f: FindingResult) -> str:
    band = ""
    if f.band_low is not None and f.band_high is not None:
        band = f", indeterminate {f.band_low:.3f}-{f.band_high:.3f}"
    return (
        f"{f.finding.meaning}: {STATE_TEXT.get(f.state, str(f.state))}; score {f.score:.3f}, "
        f"threshold {f.threshold:.3f}{band}{'; urgent' if f.urgent else ''}"
    )


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _wrap(
    draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int
) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
    return lines + ([line] if line else [])


_ORDER = {FindingState.PRESENT: 0, FindingState.INDETERMINATE: 1, FindingState.NOT_DETECTED: 2}
_SHORT_STATE = {
    FindingState.PRESENT: "present",
    FindingState.NOT_DETECTED: "not detected",
    FindingState.INDETERMINATE: "indeterminate",
}
#: x of each table column: finding, model says, score, threshold, indeterminate band, urgent
_COLUMNS = (24, 262, 384, 448, 522, 618)


def _fit(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…"  # one character shorter, ending in an ellipsis
    return text


def render_card(result: TriageResult, sr_sop_instance_uid: str, thumbnail: np.ndarray | None) -> np.ndarray:
    """The card as an RGB uint8 array (at least HEIGHT x WIDTH x 3; taller for long finding lists).
    ``thumbnail``: the evaluated image as the model saw it (uint8, grey or RGB), or None."""
    text = card_text(result, sr_sop_instance_uid)
    findings = sorted(result.findings, key=lambda f: (_ORDER[f.state], -f.score))
    row_h = 22
    height = max(HEIGHT, 200 + row_h * (len(findings) + 1) + 24 * len(text.provenance) + 90)
    height += height % 2
    img = Image.new("RGB", (WIDTH, height), (16, 16, 24))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 0, WIDTH, 56), fill=(176, 0, 32))
    big, mid, small, tiny = _font(30), _font(21), _font(16), _font(14)
    draw.text((WIDTH // 2, 28), BANNER, font=_font(26), fill="white", anchor="mm")
    draw.text((24, 72), text.title, font=big, fill="white")
    colour = (255, 120, 90) if result.priority == PRIORITY_HIGH else (240, 240, 240)
    y = 118
    for line in _wrap(draw, text.priority, mid, WIDTH - THUMB - 72):
        draw.text((24, y), line, font=mid, fill=colour)
        y += 28
    y = max(y + 12, 190)
    if findings:
        heads = ("finding", "model says", "score", "threshold", "indeterminate", "urgent")
        for x, head in zip(_COLUMNS, heads, strict=True):
            draw.text((x, y), head, font=tiny, fill=(150, 150, 170))
        y += row_h
        for f in findings:
            tint = (
                (255, 150, 120)
                if f.state is FindingState.PRESENT
                else ((240, 210, 120) if f.state is FindingState.INDETERMINATE else (200, 200, 210))
            )
            band = f"{f.band_low:.2f}-{f.band_high:.2f}" if getattr(f, "band_low", None) is not None else "-"
            cells = (
                _fit(draw, f.finding.meaning, small, _COLUMNS[1] - _COLUMNS[0] - 8),
                _SHORT_STATE[f.state],
                f"{f.score:.3f}",
                f"{f.threshold:.2f}",
                band,
                "yes" if f.urgent else "",
            )
            for x, cell in zip(_COLUMNS, cells, strict=True):
                draw.text((x, y), cell, font=small, fill=tint)
            y += row_h
    y = max(y + 16, THUMB + 130)
    for line in text.provenance:
        for part in _wrap(draw, line, small, WIDTH - 48):
            draw.text((24, y), part, font=small, fill=(170, 170, 190))
            y += 22
    draw.text((24, height - 36), text.warning, font=small, fill=(255, 200, 80))
    box = (WIDTH - THUMB - 24, 76)
    if thumbnail is not None:
        thumb = Image.fromarray(thumbnail).convert("RGB").resize((THUMB, THUMB), Image.Resampling.BILINEAR)
        img.paste(thumb, box)
        draw.text((box[0], box[1] + THUMB + 6), "evaluated image, as the model saw it", font=tiny, fill=(170, 170, 190))
    else:
        draw.rectangle((box[0], box[1], box[0] + THUMB, box[1] + THUMB), outline=(90, 90, 110))
        draw.text(
            (box[0] + THUMB // 2, box[1] + THUMB // 2),
            "no image evaluated",
            font=small,
            fill=(170, 170, 190),
            anchor="mm",
        )
    return np.asarray(img, dtype=np.uint8)


def build_card_sc(
    result: TriageResult,
    study_context: Dataset,
    pixels: np.ndarray,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    manufacturer: str,
    software_versions: str,
) -> Dataset:
    """The card as a Secondary Capture Image Storage instance of the study of ``study_context``."""
    from highdicom.sc import SCImage

    sc = SCImage.from_ref_dataset(
        ref_dataset=study_context,
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        patient_orientation=("L", "F"),
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=1,
        manufacturer=manufacturer,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    sc.PatientOrientation = []  # a card has no anatomy (Type 2: present, empty)
    sc.Laterality = ""  # Type 2C that dciodvfy wants present; empty: no paired body part is shown
    sc.SeriesDescription = "AI triage summary card (research use only)"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "NO"  # results text, no patient identifiers in the pixels
    sc.SoftwareVersions = software_versions
    _dates(sc)
    return sc


def card_pdf(pixels: np.ndarray) -> bytes:
    """The card as a one-page PDF (the picture at 150 dpi)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PDF", resolution=150.0, title="AI triage summary (research use only)")
    return buf.getvalue()


def _dates(ds: Dataset) -> None:
    now = datetime.now(UTC)
    ds.ContentDate, ds.ContentTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = ds.ContentDate, ds.ContentTime


_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "StudyDescription",
)


def build_card_pdf(
    pdf: bytes,
    study_context: Dataset,
    *,
    series_instance_uid: str,
    series_number: int,
    sop_instance_uid: str,
    manufacturer: str,
    software_versions: str,
) -> Dataset:
    """The PDF as an Encapsulated PDF Storage instance of the study of ``study_context``."""
    ds = Dataset()
    for keyword in _PATIENT_STUDY:  # Patient and General Study modules, type 2 where absent
        value = study_context.get(keyword)
        if value is not None or keyword in (
            "PatientName",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "StudyID",
            "AccessionNumber",
            "StudyInstanceUID",
        ):
            setattr(ds, keyword, value if value is not None else "")
    ds.SOPClassUID = ENCAPSULATED_PDF_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.Modality = "DOC"
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "AI triage summary (PDF, research use only)"
    ds.Manufacturer = manufacturer
    ds.SoftwareVersions = software_versions
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    _dates(ds)
    ds.AcquisitionDateTime = ds.ContentDate + ds.ContentTime
    ds.BurnedInAnnotation = "NO"
    ds.DocumentTitle = "AI triage summary (research use only)"
    ds.ConceptNameCodeSequence = []
    ds.MIMETypeOfEncapsulatedDocument = "application/pdf"
    ds.EncapsulatedDocumentLength = len(pdf)  # the document without the padding byte
    ds.EncapsulatedDocument = pdf + (b"\x00" if len(pdf) % 2 else b"")  # OB values have even length
    return ds


__all__ = [
    "ENCAPSULATED_PDF_STORAGE",
    "CardText",
    "build_card_pdf",
    "build_card_sc",
    "card_pdf",
    "card_text",
    "render_card",
]
