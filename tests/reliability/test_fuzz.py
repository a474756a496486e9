"""Bounded fuzzing (hypothesis) of the three parsers hostile input reaches first: the data-set
header parser, the STOW-RS multipart parser and C-FIND identifier matching. Each must answer
with its own refusal (BadDataset / MultipartError / InvalidQuery) or a result, never another
exception, and within a time bound. Run longer with RELIABILITY_FUZZ_EXAMPLES=N.
"""

from __future__ import annotations

import functools
import os
import struct
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from node.dicomweb.multipart import MultipartError, parse_multipart
from node.query.match import InvalidQuery, find
from node.store.header import BadDataset, parse_header

EXAMPLES = int(os.environ.get("RELIABILITY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
TS = [
    "1.2.840.10008.1.2",
    "1.2.840.10008.1.2.1",
    "1.2.840.10008.1.2.2",
    "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.5",
    "9.9.9",
]
LIMIT = 4 * 1024 * 1024


@functools.cache
def _valid_body(implicit: bool) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.SeriesInstanceUID = "1.2.3.4.5.7"
    ds.PatientName = "FUZZ^ME"
    inner = Dataset()
    inner.CodeValue = "123"
    ds.ConceptNameCodeSequence = [inner]
    ds.PixelData = b"\x00" * 64
    ds["PixelData"].VR = "OB"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, implicit
    write_dataset(buf, ds)
    return buf.getvalue()


def _check_parse(data: bytes, ts: str) -> None:
    start = time.monotonic()
    try:
        parse_header(data, ts, max_inflated_bytes=LIMIT)
    except BadDataset:
        pass
    assert time.monotonic() - start < 15


@FUZZ
@given(data=st.binary(max_size=4096), ts=st.sampled_from(TS))
def test_header_parser_on_random_bytes(data: bytes, ts: str) -> None:
    _check_parse(data, ts)


@FUZZ
@given(
    cut=st.integers(min_value=0, max_value=400),
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=6),
    implicit=st.booleans(),
)
def test_header_parser_on_mutated_valid_data_sets(cut: int, flips: list[tuple[int, int]], implicit: bool) -> None:
    body = bytearray(_valid_body(implicit))
    for pos, value in flips:
        if pos < len(body):
            body[pos] = value
    body = body[: max(0, len(body) - cut)] if cut else body
    ts = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    _check_parse(bytes(body), ts)
    _check_parse(zlib.compress(bytes(body))[2:-4], "1.2.840.10008.1.2.1.99")


@FUZZ
@given(
    length=st.integers(min_value=0, max_value=0xFFFFFFFF),
    tag=st.integers(0, 0xFFFFFFFF),
    vr=st.sampled_from([b"OB", b"SQ", b"UN", b"UT", b"PN", b"\x00\x00", b"ZZ"]),
)
def test_header_parser_on_lying_lengths(length: int, tag: int, vr: bytes) -> None:
    head = _valid_body(False)
    group, element = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"SQ", b"UN", b"UT"):
        elem = struct.pack("<HH2sHL", group, element, vr, 0, length)
    else:
        elem = struct.pack("<HH2sH", group, element, vr, length & 0xFFFF)
    _check_parse(head + elem + b"\x00" * 32, "1.2.840.10008.1.2.1")


@FUZZ
@given(body=st.binary(max_size=4096), boundary=st.text(min_size=1, max_size=70))
def test_multipart_parser_on_random_bodies(body: bytes, boundary: str) -> None:
    try:
        parse_multipart(body, boundary)
    except MultipartError:
        pass


@FUZZ
@given(
    parts=st.lists(st.tuples(st.text(max_size=40), st.binary(max_size=200)), max_size=5),
    boundary=st.text(alphabet="abcXYZ0123456789-_", min_size=1, max_size=40),
    garble=st.integers(0, 3),
)
def test_multipart_parser_on_near_valid_bodies(parts: list[tuple[str, bytes]], boundary: str, garble: int) -> None:
    b = boundary.encode()
    body = (
        b"".join(
            b"--" + b + b"\r\nContent-Type: " + ct.encode("utf-8", "replace") + b"\r\n\r\n" + data + b"\r\n"
            for ct, data in parts
        )
        + b"--"
        + b
        + b"--\r\n"
    )
    if garble == 1:
        body = body[: len(body) // 2]
    elif garble == 2:
        body = body.replace(b"\r\n\r\n", b"\r\n", 1)
    elif garble == 3:
        body = body.replace(b"--" + b + b"--", b"", 1)
    try:
        parse_multipart(body, boundary)
    except MultipartError:
        pass


KEYWORDS = [
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyTime",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "Modality",
    "ModalitiesInStudy",
    "AccessionNumber",
    "StudyDescription",
    "SeriesNumber",
    "InstanceNumber",
    "PatientBirthDate",
    "NoSuchKeyword",
    "QueryRetrieveLevel",
]
VALUES = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.text(alphabet="0123456789-.*?\\", max_size=30),
    st.lists(st.text(max_size=10), max_size=3),
    st.integers(),
    st.binary(max_size=10),
)


@pytest.fixture(scope="module")
def index_session(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from node.db.engine import Database

    db = Database(f"sqlite:///{Path(tmp_path_factory.mktemp('fuzzdb')) / 'index.db'}")
    with db.session() as session:
        yield session
    db.dispose()


@FUZZ
@given(
    level=st.sampled_from(["PATIENT", "STUDY", "SERIES", "IMAGE", "BOGUS"]),
    criteria=st.dictionaries(st.sampled_from(KEYWORDS), VALUES, max_size=6),
)
def test_cfind_matching_on_random_identifiers(index_session, level: str, criteria: dict) -> None:  # type: ignore[type-arg]
    try:
        list(find(index_session, level, criteria, limit=10))
    except InvalidQuery:
        pass
