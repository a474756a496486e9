"""Duplicate SOP Instance UIDs: answer Success, keep the first copy, one row, and say so in the audit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE
from tests.support.dimse import storescu
from tests.support.files import dataset_bytes, file_sop_uid, stored_files
from tests.support.index import audit_entries, index_snapshot
from tests.support.polling import wait_until


def duplicate_lines(audit_path: Path) -> list[dict]:
    lines = []
    for entry in audit_entries(audit_path):
        if entry["event_id"]["code"] != "110104":
            continue
        studies = [o for o in entry["objects"] if o["type"] == "study"]
        if any(o["details"].get("duplicates", 0) > 0 for o in studies):
            lines.append(entry)
    return lines


def test_same_instance_twice_is_success_once_stored(
    db_url, tmp_path, make_settings, node_factory, dicom_factory
) -> None:
    node = node_factory(make_settings(tmp_path, database={"url": db_url}))
    dest = Destination(NODE_AE, "127.0.0.1", node.listener.port)
    path = dicom_factory.ct_series(1, size=128)[0]
    sop = file_sop_uid(path)

    assert [r.status for r in send([path], dest, calling_ae="PYSCU")] == [0]
    first = stored_files(node.settings.storage.path)[sop]
    first_mtime = first.stat().st_mtime_ns
    # again on a new association, and twice within one association
    assert [r.status for r in send([path], dest, calling_ae="PYSCU")] == [0]
    assert [r.status for r in send([path, path], dest, calling_ae="TRIAGE_SCU")] == [0, 0]

    files = stored_files(node.settings.storage.path)
    assert list(files) == [sop]
    assert files[sop].stat().st_mtime_ns == first_mtime  # the first copy was not rewritten
    snap = index_snapshot(node.db)
    assert list(snap["instances"]) == [sop]
    assert next(iter(snap["studies"].values()))["instance_count"] == 1

    dupes = wait_until(
        lambda: len(duplicate_lines(node.settings.audit.path)) >= 2 and duplicate_lines(node.settings.audit.path),
        10,
        what="two audit lines with duplicates",
    )
    assert all("duplicate" in e["outcome_desc"] for e in dupes)
    counts = sorted(o["details"]["duplicates"] for e in dupes for o in e["objects"] if o["type"] == "study")
    assert counts == [1, 2]
    assert all(e["outcome"] == 0 for e in dupes)  # duplicates are not failures


def test_duplicate_with_different_content_keeps_the_first_copy(tmp_path, running_node, dicom_factory) -> None:
    dest = Destination(NODE_AE, "127.0.0.1", running_node.listener.port)
    original = dicom_factory.ct_series(1, size=64)[0]
    altered = tmp_path / "altered.dcm"
    ds = pydicom.dcmread(original)
    ds.PixelData = np.zeros((64, 64), dtype="<u2").tobytes()
    ds.SeriesDescription = "SOMETHING ELSE"
    ds.save_as(altered, enforce_file_format=True)
    assert file_sop_uid(altered) == file_sop_uid(original)

    assert [r.status for r in send([original], dest, calling_ae="PYSCU")] == [0]
    assert [r.status for r in send([altered], dest, calling_ae="PYSCU")] == [0]
    stored = stored_files(running_node.settings.storage.path)[file_sop_uid(original)]
    assert dataset_bytes(stored) == dataset_bytes(original)


@pytest.mark.dcmtk
def test_storescu_sending_a_file_twice(tmp_path, running_node, dicom_factory) -> None:
    path = dicom_factory.ct_series(1, size=64)[0]
    result = storescu(running_node.listener.port, [path, path])
    assert result.returncode == 0, result.stdout[-2000:]
    assert result.stdout.count("Received Store Response (Success)") == 2
    assert list(stored_files(running_node.settings.storage.path)) == [file_sop_uid(path)]
    assert len(index_snapshot(running_node.db)["instances"]) == 1
    wait_until(lambda: duplicate_lines(running_node.settings.audit.path), 10, what="a duplicates audit line")
