"""Read what the index needs from a received data set without decoding pixel data, and
refuse data sets that a conformant reader could not read back, before anything is written.

How: pydicom's own element reader walks the whole data set (sequences parsed, large values
skipped), and we check where it ended. Why the checks: pydicom reads a truncated value
silently (short read), ends silently when fewer than 8 bytes remain, and accepts implicit-VR
bytes in an explicit-VR data set (switching to implicit on the fly); DCMTK and other readers do
not, so such a data set would be stored, acknowledged, and then unreadable downstream.

Deflated data sets are inflated in bounded steps: never more than ``max_bytes`` of output and
never longer than ``deadline_seconds``, so a small "deflate bomb" cannot take the memory or
the CPU (the size limit applies to what the data set really is, not to its compressed form).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator, read_sequence
from pydicom.sequence import Sequence
from pydicom.tag import Tag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

_UNDEFINED = 0xFFFFFFFF
_PIXEL_DATA = 0x7FE00010
_INFLATE_STEP = 1 << 20
PARSE_SECONDS = 10.0  # a data set that takes longer to walk is refused (garbage, not a slow disk)


class BadDataset(ValueError):
    """The bytes do not form a complete DICOM data set in the stated transfer syntax."""


class DatasetTooLarge(BadDataset):
    """The data set (inflated, for deflated transfer syntaxes) is larger than the limit."""


class _BufferReader:
    """Read-only file over a buffer without copying it (pydicom needs read, seek and tell).

    Seeking past the end is allowed, as on a file; the caller checks positions afterwards.
    """

    name = "<received data set>"

    def __init__(self, buffer: Any) -> None:
        self._view = memoryview(buffer)
        self._pos = 0
        self.size = self._view.nbytes

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self._pos + size)
        out = self._view[self._pos : end].tobytes() if end > self._pos else b""
        self._pos = max(self._pos, end)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._pos, self.size)[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def slice(self, start: int, end: int) -> bytes:
        return self._view[max(0, start) : min(end, self.size)].tobytes()


def inflate(data: Any, *, max_bytes: int, deadline_seconds: float = PARSE_SECONDS) -> bytearray:
    """Inflate a raw deflate stream (PS3.5 A.5) to at most ``max_bytes``, within the deadline."""
    view = memoryview(data)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    start = time.monotonic()
    pos = 0
    pending = b""
    try:
        while True:
            if not pending:
                if pos >= view.nbytes:
                    break
                pending = view[pos : pos + _INFLATE_STEP].tobytes()
                pos += _INFLATE_STEP
            room = max_bytes - len(out) + 1
            out += inflater.decompress(pending, min(room, _INFLATE_STEP))
            pending = inflater.unconsumed_tail
            if len(out) > max_bytes:
                raise DatasetTooLarge(f"deflated data set inflates to more than {max_bytes} bytes")
            if time.monotonic() - start > deadline_seconds:
                raise BadDataset(f"deflated data set does not inflate within {deadline_seconds:g} s")
            if inflater.eof:
                break
    except zlib.error as exc:
        raise BadDataset(f"deflated data set does not inflate: {exc}") from None
    if not inflater.eof:
        raise BadDataset("deflated data set truncated (the deflate stream does not end)")
    # Bytes after the end of the deflate stream (a pad byte, some writers' gzip-style trailer)
    # are ignored, as every reader does.
    return out


def _delimiter(little_endian: bool) -> bytes:
    return (b"\xfe\xff\xdd\xe0" if little_endian else b"\xff\xfe\xe0\xdd") + b"\x00" * 4


def _implicit_inside(items: Sequence) -> bool:
    """True when an item of an explicit-VR sequence was read as implicit VR (VR unknown)."""
    for item in items:
        for elem in item.elements():
            if isinstance(elem, RawDataElement) and elem.VR is None:
                return True
            value = getattr(elem, "value", None)
            if isinstance(value, Sequence) and _implicit_inside(value):
                return True
    return False


def _is_sequence(elem: RawDataElement) -> bool:
    if elem.VR is not None:
        return bool(elem.VR == "SQ")
    try:
        return bool(dictionary_VR(elem.tag) == "SQ")
    except KeyError:
        return False


def _check_sequence(fp: _BufferReader, elem: RawDataElement, implicit: bool, little: bool) -> None:
    """Parse a defined-length sequence where it lies and check it ends where its length says."""
    resume = fp.tell()
    fp.seek(elem.value_tell)
    # pydicom annotates fp as BinaryIO but calls only read/seek/tell (its ReadableBuffer), which
    # _BufferReader has: it reads the received buffer in place instead of copying it into a BytesIO.
    items = read_sequence(fp, implicit, little, elem.length, "iso8859")  # type: ignore[arg-type]
    if fp.tell() != elem.value_tell + elem.length:
        raise BadDataset(f"sequence {Tag(elem.tag)} does not end where its length says")
    if not implicit and _implicit_inside(items):
        raise BadDataset(f"sequence {Tag(elem.tag)} holds implicit VR items in an explicit VR transfer syntax")
    fp.seek(resume)


def parse_header(dataset_bytes: Any, transfer_syntax_uid: str, *, max_inflated_bytes: int = 2 * 1024**3) -> Dataset:
    """Walk the whole data set (large values skipped) and refuse what is incomplete or mis-encoded.

    ``dataset_bytes``: bytes, bytearray or memoryview (not copied). Raises BadDataset, or
    DatasetTooLarge for a deflated data set that inflates past ``max_inflated_bytes``.
    """
    ts = UID(transfer_syntax_uid)
    if not ts.is_transfer_syntax:
        raise BadDataset("unknown transfer syntax")
    data: Any = dataset_bytes
    if ts == DeflatedExplicitVRLittleEndian:
        data = inflate(data, max_bytes=max_inflated_bytes)
    implicit, little = ts.is_implicit_VR, ts.is_little_endian
    fp = _BufferReader(data)
    elements: dict[Any, Any] = {}
    last_end = 0
    start = time.monotonic()
    try:
        # fp as BinaryIO: see _check_sequence
        for elem in data_element_generator(fp, implicit, little, defer_size=4096):  # type: ignore[arg-type]
            end = fp.tell()
            tag = int(elem.tag)
            if isinstance(elem, RawDataElement):
                if elem.VR is None and not implicit:
                    raise BadDataset(f"element {Tag(tag)} is implicit VR in an explicit VR transfer syntax")
                if elem.length == _UNDEFINED:
                    if tag == _PIXEL_DATA and not ts.is_encapsulated:
                        raise BadDataset("native (uncompressed) Pixel Data with undefined length")
                    if fp.slice(end - 8, end) != _delimiter(little):
                        raise BadDataset(f"data set truncated inside undefined-length element {Tag(tag)}")
                elif elem.value is None:
                    if elem.value_tell + elem.length > fp.size:
                        raise BadDataset(
                            f"data set truncated: element {Tag(tag)} needs "
                            f"{elem.value_tell + elem.length - fp.size} more bytes"
                        )
                elif len(elem.value) != elem.length:
                    raise BadDataset(f"data set truncated inside element {Tag(tag)}")
            else:  # a sequence, parsed by pydicom down to its last item
                if getattr(elem, "is_undefined_length", False):
                    if fp.slice(end - 8, end) != _delimiter(little):
                        raise BadDataset(f"data set truncated inside sequence {Tag(tag)}")
                elif end > fp.size:
                    raise BadDataset(f"data set truncated inside sequence {Tag(tag)}")
                if not implicit and _implicit_inside(elem.value):
                    raise BadDataset(f"sequence {Tag(tag)} holds implicit VR items in an explicit VR transfer syntax")
            if isinstance(elem, RawDataElement) and elem.length not in (0, _UNDEFINED) and _is_sequence(elem):
                _check_sequence(fp, elem, implicit, little)
            elements[tag] = elem
            last_end = end
            if time.monotonic() - start > PARSE_SECONDS:
                raise BadDataset(f"data set not parsed within {PARSE_SECONDS:g} s")
        if last_end != fp.size:
            raise BadDataset(f"data set truncated: {fp.size - last_end} bytes after the last complete element")
        if not elements:
            raise BadDataset("empty data set")
        ds = Dataset(elements)
        ds.set_original_encoding(implicit, little, None)
        # Touch the attributes the index reads, so a malformed value fails here.
        for keyword in (
            "SpecificCharacterSet",
            "SOPClassUID",
            "SOPInstanceUID",
            "StudyInstanceUID",
            "SeriesInstanceUID",
            "PatientID",
            "PatientName",
            "Modality",
        ):
            ds.get(keyword)
    except (BadDataset, DatasetTooLarge):
        raise
    except Exception as exc:  # pydicom raises many types on garbage
        raise BadDataset(f"cannot parse the data set: {type(exc).__name__}") from None
    return ds


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
