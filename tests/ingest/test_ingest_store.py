"""C-STORE over real associations: CT series, DX images, compressed transfer syntaxes, sent by our
SCU (pynetdicom) and by DCMTK's storescu. What is stored must be the sent data set, byte for byte
(after the file meta group, which is ours), in the sent transfer syntax, indexed and counted."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, JPEGBaseline8Bit, RLELossless

from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE, write_settings_toml, write_toml
from tests.support.dimse import storescu, storescu_acknowledged
from tests.support.files import dataset_bytes, file_sop_uid, file_transfer_syntax, incoming_files, stored_files
from tests.support.index import index_snapshot
from tests.support.serve import node_env, run_cli, status_json

SENDERS = ["our_scu", pytest.param("storescu", marks=pytest.mark.dcmtk)]


def send_with(sender: str, node, paths: list[Path], storescu_flags: tuple[str, ...] = ()) -> None:  # type: ignore[no-untyped-def]
    """Send ``paths`` and assert that the sender saw Success for every one of them."""
    port = node.listener.port
    if sender == "our_scu":
        results = send(paths, Destination(NODE_AE, "127.0.0.1", port), calling_ae="TRIAGE_SCU", timeout=30)
        assert [r.status for r in results] == [0] * len(paths), results
    else:
        result = storescu(port, paths, extra=storescu_flags)
        assert result.returncode == 0, result.stdout[-3000:]
        assert sorted(storescu_acknowledged(result.stdout)) == sorted(map(str, paths)), result.stdout[-3000:]


def assert_stored_as_sent(node, sent: list[Path], calling_ae: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    """Every sent file is stored (data set bytes identical, same transfer syntax, at the UID path)
    and indexed with the header values; returns the index snapshot."""
    root = Path(node.settings.storage.path)
    files = stored_files(root)
    snap = index_snapshot(node.db)
    assert incoming_files(root) == []
    for path in sent:
        src = pydicom.dcmread(path, stop_before_pixels=True)
        sop = file_sop_uid(path)
        assert sop in files, f"{path.name} was not stored"
        stored = files[sop]
        assert stored.relative_to(root) == Path(src.StudyInstanceUID) / src.SeriesInstanceUID / f"{sop}.dcm"
        assert dataset_bytes(stored) == dataset_bytes(path), f"{path.name}: stored data set differs"
        assert file_transfer_syntax(stored) == file_transfer_syntax(path)
        # our Part-10 header is well formed and agrees with the data set
        meta = pydicom.dcmread(stored, stop_before_pixels=True).file_meta
        assert meta.MediaStorageSOPInstanceUID == sop
        assert meta.MediaStorageSOPClassUID == src.SOPClassUID

        row = snap["instances"][sop]
        assert row["sop_class_uid"] == src.SOPClassUID
        assert row["transfer_syntax_uid"] == file_transfer_syntax(path)
        assert row["instance_number"] == int(src.InstanceNumber)
        assert row["path"] == stored.relative_to(root).as_posix()
        assert row["size_bytes"] == stored.stat().st_size
        if calling_ae is not None:
            assert row["calling_ae"] == calling_ae

        series = snap["series"][src.SeriesInstanceUID]
        assert row["series_pk"] == series["id"]
        assert series["modality"] == src.Modality
        assert series["series_number"] == int(src.SeriesNumber)
        assert series["description"] == src.SeriesDescription
        assert series["body_part"] == src.BodyPartExamined

        study = snap["studies"][src.StudyInstanceUID]
        assert series["study_pk"] == study["id"]
        assert study["study_date"] == src.StudyDate
        assert study["study_time"] == src.StudyTime
        assert study["accession_number"] == src.AccessionNumber
        assert study["description"] == src.StudyDescription
        assert src.Modality in study["modalities"].split("\\")
        assert study["stability_state"] in ("receiving", "stable")

        patient = snap["patients"][(src.PatientID, src.IssuerOfPatientID)]
        assert study["patient_pk"] == patient["id"]
        assert patient["name"] == str(src.PatientName)
        assert patient["birth_date"] == src.PatientBirthDate
        assert patient["sex"] == src.PatientSex
    # the index holds exactly the files on disk
    assert {r["path"] for r in snap["instances"].values()} == {p.relative_to(root).as_posix() for p in files.values()}
    return snap


@pytest.mark.parametrize("sender", SENDERS)
def test_ct_series_stored_identically_indexed_and_counted(
    sender, db_url, tmp_path, make_settings, node_factory, dicom_factory
) -> None:
    node = node_factory(make_settings(tmp_path, database={"url": db_url}))
    series = dicom_factory.ct_series(30, size=256)
    send_with(sender, node, series)

    snap = assert_stored_as_sent(node, series, calling_ae="TRIAGE_SCU" if sender == "our_scu" else "STORESCU")
    assert len(snap["instances"]) == 30 and len(snap["series"]) == 1 and len(snap["studies"]) == 1
    study = next(iter(snap["studies"].values()))
    assert study["instance_count"] == 30
    assert study["modalities"] == "CT"

    # `status --json` as an operator runs it: a config file, the database named by the environment
    config = write_toml(
        tmp_path / "status.toml",
        {
            "node": {"data_dir": str(tmp_path / "elsewhere")},
            "database": {"url": "sqlite:///" + str(tmp_path / "wrong.db")},
        },
    )
    status = status_json(config, env=node_env({"database.url": db_url}))
    assert (status["studies"], status["series"], status["instances"]) == (1, 1, 30)
    assert not (tmp_path / "wrong.db").exists()
    assert status["bytes"] == sum(p.stat().st_size for p in stored_files(node.settings.storage.path).values())
    assert set(status["jobs"]) >= {"queued", "running", "done", "failed"}


@pytest.mark.parametrize("sender", SENDERS)
def test_dx_images_stored_identically(sender, db_url, tmp_path, make_settings, node_factory, dicom_factory) -> None:
    node = node_factory(make_settings(tmp_path, database={"url": db_url}))
    images = dicom_factory.dx_images(3, rows=600, cols=500)
    send_with(sender, node, images)
    snap = assert_stored_as_sent(node, images)
    assert len(snap["studies"]) == 3 and len(snap["instances"]) == 3
    assert {s["modalities"] for s in snap["studies"].values()} == {"DX"}

    status = status_json(write_settings_toml(tmp_path / "status.toml", node.settings))
    assert (status["studies"], status["series"], status["instances"]) == (3, 3, 3)


# (name, how the file is made, storescu flag that proposes its transfer syntax, expected TS)
COMPRESSED = [
    ("rle_pydicom", lambda f: f.compressed(RLELossless), "-xr", RLELossless),
    ("rle_dcmcrle", "dcmcrle", "-xr", RLELossless),
    ("j2k_lossless", lambda f: f.compressed(JPEG2000Lossless), "-xv", JPEG2000Lossless),
    ("jpeg_baseline", lambda f: f.jpeg_baseline(), "-xy", JPEGBaseline8Bit),
]


def _make_compressed(how, factory) -> Path:  # type: ignore[no-untyped-def]
    if how == "dcmcrle":
        import subprocess

        src = factory.ct_series(1, size=128, out_dir="raw16")[0]
        target = src.parent / f"dcmcrle_{src.name}"
        subprocess.run(["dcmcrle", str(src), str(target)], check=True, capture_output=True, timeout=60)
        return target
    return how(factory)


@pytest.mark.dcmtk  # the files are partly made by DCMTK (dcmcrle, dcmcjpeg)
@pytest.mark.parametrize("sender", ["our_scu", "storescu"])
@pytest.mark.parametrize(("name", "how", "flag", "expected_ts"), COMPRESSED, ids=[c[0] for c in COMPRESSED])
def test_compressed_images_stored_without_transcoding(
    name, how, flag, expected_ts, sender, running_node, dicom_factory
) -> None:
    path = _make_compressed(how, dicom_factory)
    assert file_transfer_syntax(path) == expected_ts  # the test data really is compressed
    send_with(sender, running_node, [path], storescu_flags=(flag,))
    assert_stored_as_sent(running_node, [path])
    stored = stored_files(running_node.settings.storage.path)[file_sop_uid(path)]
    assert file_transfer_syntax(stored) == expected_ts
    # and it still decodes to the same pixels
    assert (pydicom.dcmread(stored).pixel_array == pydicom.dcmread(path).pixel_array).all()


def test_cli_send_of_a_folder_of_small_mr(tmp_path, running_node, dicom_factory) -> None:
    """`triage-node send` (the operators' SCU) over a folder of small MR instances."""
    paths = dicom_factory.mr_small(20)
    to = f"{NODE_AE}@127.0.0.1:{running_node.listener.port}"
    result = run_cli("send", str(paths[0].parent), "--to", to, "--aet", "TRIAGE_SCU", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert "sent 20/20" in result.stdout
    snap = assert_stored_as_sent(running_node, paths, calling_ae="TRIAGE_SCU")
    assert len(snap["series"]) == 2 and len(snap["studies"]) == 1

    echo = run_cli("echo", "--to", to, "--aet", "TRIAGE_SCU")
    assert echo.returncode == 0 and "success" in echo.stdout
    refused = run_cli("echo", "--to", to, "--aet", "NOT_ALLOWED", "--timeout", "10")
    assert refused.returncode != 0
