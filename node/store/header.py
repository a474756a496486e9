"""Read what the index needs from a received data set without decoding pixel data, and
refuse data sets that are truncated or garbage before anything is written.

Why our own completeness check: pydicom reads a truncated value silently (short read), so a
data set cut off mid-Pixel-Data would otherwise be stored and acknowledged.
"""

from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, UID

_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF


class BadDataset(ValueError):
    """The bytes do not form a complete DICOM data set in the stated transfer syntax."""


@dataclass(frozen=True)
class InstanceHeader:
    """What the index stores about one instance (strings, never None)."""

    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    patient_birth_date: str
    patient_sex: str
    study_date: str
    study_time: str
    accession_number: str
    study_id: str
    study_description: str
    referring_physician: str
    modality: str
    series_number: int | None
    series_description: str
    body_part: str
    instance_number: int | None


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _int(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


def parse_header(dataset_bytes: bytes | memoryview, transfer_syntax_uid: str) -> Dataset:
    """Parse all elements (large values deferred) and check that the data set is complete."""
    ts = UID(transfer_syntax_uid)
    data = bytes(dataset_bytes) if isinstance(dataset_bytes, memoryview) else dataset_bytes
    if ts == DeflatedExplicitVRLittleEndian:
        try:
            data = zlib.decompress(data, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise BadDataset(f"deflated data set does not inflate: {exc}") from None
    if not ts.is_transfer_syntax:
        raise BadDataset("unknown transfer syntax")
    try:
        ds = read_dataset(io.BytesIO(data), ts.is_implicit_VR, ts.is_little_endian, defer_size=4096)
        last_end = 0
        last_undefined = False
        for tag in ds.keys():
            elem = ds.get_item(tag, keep_deferred=True)
            tell = getattr(elem, "value_tell", None)
            length = getattr(elem, "length", None)
            if tell is None or length is None:
                continue
            if length == _UNDEFINED:
                last_undefined = True
                last_end = len(data)
            else:
                last_undefined = False
                last_end = tell + length
        # Touch the attributes the index reads, so a malformed value fails here.
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID",
                        "PatientID", "Modality"):
            ds.get(keyword)
    except BadDataset:
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise BadDataset(f"cannot parse the data set: {type(exc).__name__}") from None
    if len(ds) == 0:
        raise BadDataset("empty data set")
    if last_end > len(data):
        raise BadDataset(f"data set truncated: last element needs {last_end - len(data)} more bytes")
    if last_undefined and not data.endswith(_SEQ_DELIMITER):
        raise BadDataset("data set truncated inside an undefined-length element")
    # pydicom ends a data set silently when fewer than 8 bytes (an element header) remain, so a
    # data set cut inside its last element header would otherwise parse as complete.
    if not last_undefined and last_end < len(data):
        raise BadDataset(f"data set truncated: {len(data) - last_end} bytes after the last element")
    return ds


def instance_header(ds: Dataset) -> InstanceHeader:
    return InstanceHeader(
        sop_class_uid=_text(ds, "SOPClassUID"),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        patient_id=_text(ds, "PatientID"),
        issuer_of_patient_id=_text(ds, "IssuerOfPatientID"),
        patient_name=_text(ds, "PatientName"),
        patient_birth_date=_text(ds, "PatientBirthDate"),
        patient_sex=_text(ds, "PatientSex"),
        study_date=_text(ds, "StudyDate"),
        study_time=_text(ds, "StudyTime"),
        accession_number=_text(ds, "AccessionNumber"),
        study_id=_text(ds, "StudyID"),
        study_description=_text(ds, "StudyDescription")[:64],
        referring_physician=_text(ds, "ReferringPhysicianName"),
        modality=_text(ds, "Modality"),
        series_number=_int(ds, "SeriesNumber"),
        series_description=_text(ds, "SeriesDescription")[:64],
        body_part=_text(ds, "BodyPartExamined"),
        instance_number=_int(ds, "InstanceNumber"),
    )
