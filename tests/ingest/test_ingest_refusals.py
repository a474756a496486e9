"""What the node must refuse, with a failure status and nothing written (rules 1 and 2): UIDs that
would name a path outside storage or are malformed, identifiers that disagree with the request,
oversize, truncated and garbage data sets, a full disk. The node keeps serving afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE
from tests.support.dimse import py_echo, send_file_as_is, storescu
from tests.support.files import (
    all_files,
    dataset_bytes,
    file_sop_uid,
    incoming_files,
    stored_files,
    unchecked_uids,
    write_raw_part10,
)
from tests.support.index import audit_entries, index_snapshot
from tests.support.polling import wait_until

CT = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"


def assert_nothing_stored(node, tmp_path: Path, before: set[Path]) -> None:  # type: ignore[no-untyped-def]
    root = Path(node.settings.storage.path)
    assert stored_files(root) == {}
    assert incoming_files(root) == []
    snap = index_snapshot(node.db)
    assert snap["instances"] == {} and snap["studies"] == {} and snap["series"] == {}
    # nothing anywhere else either: only the audit log and the database may have changed
    data = Path(node.settings.node.data_dir)
    allowed = {Path(node.settings.audit.path), data / "index.db", data / "index.db-wal", data / "index.db-shm"}
    new = all_files(tmp_path) - before - allowed
    assert new == set(), f"unexpected files written: {sorted(map(str, new))}"


def assert_still_serving(node, factory) -> None:  # type: ignore[no-untyped-def]
    assert py_echo(node.listener.port) == 0
    good = factory.ct_series(1, size=64, out_dir=f"good-{uuid.uuid4().hex[:6]}")
    results = send(good, Destination(NODE_AE, "127.0.0.1", node.listener.port), calling_ae="PYSCU")
    assert [r.status for r in results] == [0]
    assert file_sop_uid(good[0]) in stored_files(node.settings.storage.path)


def bad_uid_file(factory, tmp_path: Path, *, keyword: str, value: str) -> Path:  # type: ignore[no-untyped-def]
    """A valid CT instance with one UID replaced by ``value`` (file meta agrees with the data set)."""
    src = factory.ct_series(1, size=64, out_dir="bad-src")[0]
    with unchecked_uids():
        ds = pydicom.dcmread(src)
        setattr(ds, keyword, value)
        if keyword == "SOPInstanceUID":
            ds.file_meta.MediaStorageSOPInstanceUID = value
        target = tmp_path / "crafted" / f"{uuid.uuid4().hex}.dcm"
        target.parent.mkdir(exist_ok=True)
        ds.save_as(target, enforce_file_format=True)
    src.unlink()
    return target


ESCAPE = f"tmp/escape_{uuid.uuid4().hex[:8]}"
BAD_UIDS = [
    ("SOPInstanceUID", "../../etc/x"),
    ("SOPInstanceUID", "1.2.abc"),
    ("SOPInstanceUID", "../../../../../../../../../../" + ESCAPE),
    ("SOPInstanceUID", "1.2.3/4.5"),
    ("SOPInstanceUID", ".."),
    ("StudyInstanceUID", "../../../../../../../../../../" + ESCAPE),
    ("SeriesInstanceUID", "1.2.840.10008..."),
    ("StudyInstanceUID", "1.2.3 4"),
]


@pytest.mark.parametrize(("keyword", "value"), BAD_UIDS)
def test_unsafe_or_malformed_uid_is_refused_and_nothing_written(
    keyword, value, tmp_path, running_node, dicom_factory
) -> None:
    crafted = bad_uid_file(dicom_factory, tmp_path, keyword=keyword, value=value)
    before = all_files(tmp_path)
    status = send_file_as_is(running_node.listener.port, crafted)
    assert status in (0xC001, 0xA900), f"status {status!r}"
    assert_nothing_stored(running_node, tmp_path, before)
    assert not Path("/", ESCAPE).exists() and not Path("/", ESCAPE + ".dcm").exists()
    assert_still_serving(running_node, dicom_factory)


def test_sop_instance_uid_differing_from_the_request_is_refused(tmp_path, running_node, dicom_factory) -> None:
    src = dicom_factory.ct_series(1, size=64)[0]
    crafted = write_raw_part10(
        tmp_path / "mismatch.dcm",
        sop_class=CT,
        sop_uid="1.2.3.999.1",
        transfer_syntax=EXPLICIT_LE,
        body=dataset_bytes(src),
    )
    before = all_files(tmp_path)
    assert send_file_as_is(running_node.listener.port, crafted) == 0xA900
    assert_nothing_stored(running_node, tmp_path, before)
    assert_still_serving(running_node, dicom_factory)


def test_sop_class_differing_from_the_request_is_refused(tmp_path, running_node, dicom_factory) -> None:
    src = dicom_factory.ct_series(1, size=64)[0]
    crafted = write_raw_part10(
        tmp_path / "mismatch-class.dcm",
        sop_class="1.2.840.10008.5.1.4.1.1.4",
        sop_uid=file_sop_uid(src),
        transfer_syntax=EXPLICIT_LE,
        body=dataset_bytes(src),
    )
    before = all_files(tmp_path)
    assert send_file_as_is(running_node.listener.port, crafted) == 0xA900
    assert_nothing_stored(running_node, tmp_path, before)


def test_oversize_data_set_is_refused(tmp_path, make_settings, node_factory, dicom_factory) -> None:
    node = node_factory(make_settings(tmp_path, storage={"max_dataset_bytes": 20_000}))
    small = dicom_factory.mr_small(1, size=64)  # ~9 KB: under the limit
    big = dicom_factory.ct_series(1, size=128)  # ~34 KB: over it
    assert len(dataset_bytes(small[0])) < 20_000 < len(dataset_bytes(big[0]))
    before = all_files(tmp_path)
    dest = Destination(NODE_AE, "127.0.0.1", node.listener.port)
    assert [r.status for r in send(big, dest, calling_ae="PYSCU")] == [0xA701]
    assert_nothing_stored(node, tmp_path, before)
    assert [r.status for r in send(small, dest, calling_ae="PYSCU")] == [0]
    assert set(stored_files(node.settings.storage.path)) == {file_sop_uid(small[0])}


def _truncations(body: bytes) -> list[tuple[str, bytes]]:
    pixel_tag = body.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) in little endian
    assert pixel_tag > 0
    return [
        ("mid_pixel_data", body[: pixel_tag + 12 + 1000]),
        ("pixel_data_minus_one_byte", body[:-1]),
        ("mid_header_value", body[:150]),
        ("mid_element_header", body[: pixel_tag + 6]),
    ]


@pytest.mark.parametrize(
    "cut", ["mid_pixel_data", "pixel_data_minus_one_byte", "mid_header_value", "mid_element_header"]
)
def test_truncated_data_set_is_refused_and_node_still_serves(cut, tmp_path, running_node, dicom_factory) -> None:
    src = dicom_factory.ct_series(1, size=64)[0]
    body = dict(_truncations(dataset_bytes(src)))[cut]
    crafted = write_raw_part10(
        tmp_path / f"truncated-{cut}.dcm",
        sop_class=CT,
        sop_uid=file_sop_uid(src),
        transfer_syntax=EXPLICIT_LE,
        body=body,
    )
    before = all_files(tmp_path)
    assert send_file_as_is(running_node.listener.port, crafted) == 0xC000
    assert_nothing_stored(running_node, tmp_path, before)
    assert_still_serving(running_node, dicom_factory)


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
@pytest.mark.parametrize("kind", ["random_bytes", "zeros", "text", "little_endian_labelled_big_endian"])
def test_garbage_data_set_is_refused_and_node_still_serves(kind, tmp_path, running_node, dicom_factory) -> None:
    rng = np.random.default_rng(7)
    src = dicom_factory.ct_series(1, size=64)[0]
    bodies = {
        "random_bytes": rng.integers(0, 256, 6000, dtype=np.uint8).tobytes(),
        "zeros": b"\x00" * 4096,
        "text": b"this is not a DICOM data set at all\n" * 50,
        # a valid data set, but claimed to be in a transfer syntax it is not written in
        "little_endian_labelled_big_endian": dataset_bytes(src),
    }
    ts = "1.2.840.10008.1.2.2" if kind == "little_endian_labelled_big_endian" else EXPLICIT_LE  # big endian
    crafted = write_raw_part10(
        tmp_path / f"garbage-{kind}.dcm", sop_class=CT, sop_uid=file_sop_uid(src), transfer_syntax=ts, body=bodies[kind]
    )
    before = all_files(tmp_path)
    status = send_file_as_is(running_node.listener.port, crafted)
    assert status is not None and status in (0xC000, 0xA900), f"status 0x{status:04X}"
    if kind in ("random_bytes", "text"):
        assert status == 0xC000
    # (zeros parse as a run of empty (0000,0000) elements: identifiers missing, 0xA900 is right too)
    assert_nothing_stored(running_node, tmp_path, before)
    assert_still_serving(running_node, dicom_factory)


def test_disk_floor_refuses_with_a700_and_writes_nothing(tmp_path, make_settings, node_factory, dicom_factory) -> None:
    node = node_factory(make_settings(tmp_path, storage={"min_free_bytes": 10**18}))
    series = dicom_factory.ct_series(3, size=64)
    before = all_files(tmp_path)
    results = send(series, Destination(NODE_AE, "127.0.0.1", node.listener.port), calling_ae="PYSCU")
    assert [r.status for r in results] == [0xA700] * 3
    assert_nothing_stored(node, tmp_path, before)
    # no audit line claims a stored instance
    transferred = [e for e in audit_entries(node.settings.audit.path) if e["event_id"]["code"] == "110104"]
    assert sum(o["details"].get("instances", 0) for e in transferred for o in e["objects"]) == 0


@pytest.mark.dcmtk
def test_disk_floor_refusal_seen_by_storescu(tmp_path, make_settings, node_factory, dicom_factory) -> None:
    node = node_factory(make_settings(tmp_path, storage={"min_free_bytes": 10**18}))
    series = dicom_factory.ct_series(2, size=64)
    before = all_files(tmp_path)
    result = storescu(node.listener.port, series, extra=("-nh",))
    assert result.stdout.count("Received Store Response (Refused: OutOfResources)") == 2, result.stdout[-2000:]
    assert "Received Store Response (Success)" not in result.stdout
    assert_nothing_stored(node, tmp_path, before)


def test_refused_c_stores_are_audited_with_their_statuses(tmp_path, running_node, dicom_factory) -> None:
    """A refusal before the data set yields identifiers is still counted in the association's
    110104 line, by status (it used to count 0: failures carried no header)."""
    src = dicom_factory.ct_series(1, size=64)[0]
    garbage = write_raw_part10(
        tmp_path / "garbage.dcm",
        sop_class=CT,
        sop_uid=file_sop_uid(src),
        transfer_syntax=EXPLICIT_LE,
        body=b"this is not a DICOM data set\n" * 20,
    )
    assert send_file_as_is(running_node.listener.port, garbage) == 0xC000
    lines = wait_until(
        lambda: [
            e
            for e in audit_entries(running_node.settings.audit.path)
            if e["event_id"]["code"] == "110104" and e["outcome"] != 0
        ],
        10,
        what="the 110104 line of the refused C-STORE",
    )
    details = lines[-1]["objects"][-1]["details"]
    assert details["failures"] == 1 and details["failure_statuses"] == {"0xC000": 1}
    assert "0xC000 x1" in lines[-1]["outcome_desc"]
