"""Query/Retrieve SCP against DCMTK peers (issue 4, item 2): findscu at study and series level
(wildcards, date ranges, UID lists, ModalitiesInStudy, Patient Root), getscu into a temp dir,
movescu to a storescp started here, an unknown move destination refused, the audit trail.
"""

from __future__ import annotations

import json
import subprocess
from datetime import date
from pathlib import Path

import pydicom
import pytest

from tests.support.config import NODE_AE, SCU_AE
from tests.support.index import sr_instances, worklist_row
from tests.support.polling import wait_until
from tests.support.ports import port_open
from tests.support.qr import MOVE_DEST_AE, QRNode

pytestmark = [pytest.mark.dcmtk]


def findscu(node: QRNode, out: Path, *keys: str, patient_root: bool = False) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = ["findscu", "-P" if patient_root else "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-X", "-od", str(out)]
    for key in keys:
        cmd += ["-k", key]
    cmd += ["127.0.0.1", str(node.port)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def movescu(node: QRNode, destination: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """DCMTK's movescu: a study-level C-MOVE of the chest study to ``destination``."""
    cmd = ["movescu", *flags, "-S", "-aet", SCU_AE, "-aec", NODE_AE, "-aem", destination]
    cmd += ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={node.chest_study}"]
    return subprocess.run([*cmd, "127.0.0.1", str(node.port)], capture_output=True, text=True, timeout=60, check=False)


def study_level(node: QRNode, out: Path, *keys: str) -> list[pydicom.Dataset]:
    return findscu(
        node,
        out,
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        "PatientName",
        "PatientID",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
        "NumberOfStudyRelatedSeries",
        *keys,
    )


def audit_lines(node: QRNode) -> list[dict]:
    return [json.loads(line) for line in node.cfg.audit_path.read_text().splitlines() if line.strip()]


def test_series_level_returns_dx_and_sr(qr_node: QRNode, tmp_path: Path) -> None:
    rsp = findscu(
        qr_node,
        tmp_path,
        "QueryRetrieveLevel=SERIES",
        f"StudyInstanceUID={qr_node.chest_study}",
        "SeriesInstanceUID",
        "Modality",
        "NumberOfSeriesRelatedInstances",
        "SeriesNumber",
    )
    mods = sorted(str(ds.Modality) for ds in rsp)
    assert mods == ["DX", "SR"], mods
    by_mod = {str(ds.Modality): ds for ds in rsp}
    assert int(by_mod["DX"].NumberOfSeriesRelatedInstances) == 2
    (_sr,) = sr_instances(qr_node.db, qr_node.chest_study)[-1:]
    assert int(by_mod["SR"].NumberOfSeriesRelatedInstances) == len(sr_instances(qr_node.db, qr_node.chest_study))
    assert all(ds.StudyInstanceUID == qr_node.chest_study for ds in rsp)
    assert all(ds.RetrieveAETitle == NODE_AE for ds in rsp)


def test_study_level_keys_wildcards_ranges(qr_node: QRNode, tmp_path: Path) -> None:
    # wildcard on PatientName: both studies (DEMO^QRPAT1, DEMO^QRPAT2), each once, keys filled
    rsp = study_level(qr_node, tmp_path / "a", "PatientName=DEMO^QRPAT*")
    assert sorted(str(ds.PatientID) for ds in rsp) == ["QRPAT1", "QRPAT2"]
    chest = next(ds for ds in rsp if ds.StudyInstanceUID == qr_node.chest_study)
    assert set(chest.ModalitiesInStudy) == {"DX", "SR"}
    assert int(chest.NumberOfStudyRelatedSeries) == 2
    assert int(chest.NumberOfStudyRelatedInstances) >= 3
    # '?' matches exactly one character; a literal '_' is not a wildcard
    assert [ds.PatientID for ds in study_level(qr_node, tmp_path / "b", "PatientName=DEMO^QRPAT?")]
    assert study_level(qr_node, tmp_path / "c", "PatientName=DEMO_QRPAT1") == []
    # date ranges: today lies in "A-", "-B" and "A-B"; a range in the past matches nothing
    today = date.today().strftime("%Y%m%d")
    for i, rng in enumerate((f"{today}-", f"-{today}", f"20000101-{today}", today)):
        got = study_level(qr_node, tmp_path / f"d{i}", f"StudyDate={rng}", "PatientID=QRPAT1")
        assert [ds.StudyInstanceUID for ds in got] == [qr_node.chest_study], rng
    assert study_level(qr_node, tmp_path / "e", "StudyDate=19900101-19991231") == []
    # UID list
    got = study_level(
        qr_node, tmp_path / "f", f"StudyInstanceUID={qr_node.chest_study}\\{qr_node.lateral_study}\\1.2.3.4"
    )
    assert sorted(ds.StudyInstanceUID for ds in got) == sorted([qr_node.chest_study, qr_node.lateral_study])
    # ModalitiesInStudy: any-of match
    assert len(study_level(qr_node, tmp_path / "g", "ModalitiesInStudy=SR", "PatientID=QRPAT*")) == 2
    assert len(study_level(qr_node, tmp_path / "h", "ModalitiesInStudy=CT\\DX", "PatientID=QRPAT*")) == 2
    assert study_level(qr_node, tmp_path / "i", "ModalitiesInStudy=MR", "PatientID=QRPAT*") == []


def test_image_level_and_patient_root(qr_node: QRNode, tmp_path: Path) -> None:
    rsp = findscu(
        qr_node,
        tmp_path / "img",
        "QueryRetrieveLevel=IMAGE",
        f"StudyInstanceUID={qr_node.chest_study}",
        "Modality=SR",
        "SOPInstanceUID",
        "SOPClassUID",
    )
    row = worklist_row(qr_node.db, qr_node.chest_study)
    assert row is not None
    assert row["sr_sop_instance_uid"] in [ds.SOPInstanceUID for ds in rsp]
    # Patient Root: PATIENT level, then the patient's studies
    pats = findscu(
        qr_node,
        tmp_path / "p",
        "QueryRetrieveLevel=PATIENT",
        "PatientID=QRPAT1",
        "PatientName",
        "NumberOfPatientRelatedStudies",
        patient_root=True,
    )
    assert [(str(ds.PatientName), int(ds.NumberOfPatientRelatedStudies)) for ds in pats] == [("DEMO^QRPAT1", 1)]
    studies = findscu(
        qr_node, tmp_path / "ps", "QueryRetrieveLevel=STUDY", "PatientID=QRPAT1", "StudyInstanceUID", patient_root=True
    )
    assert [ds.StudyInstanceUID for ds in studies] == [qr_node.chest_study]
    # PATIENT level is not part of Study Root: refused, nothing returned
    assert findscu(qr_node, tmp_path / "bad", "QueryRetrieveLevel=PATIENT", "PatientID=QRPAT1") == []


def _same_dataset(a: Path, b: Path) -> bool:
    return pydicom.dcmread(a) == pydicom.dcmread(b)


def test_getscu_retrieves_series(qr_node: QRNode, tmp_path: Path) -> None:
    src_series = str(pydicom.dcmread(qr_node.chest_files[0], stop_before_pixels=True).SeriesInstanceUID)
    out = tmp_path / "get"
    out.mkdir()
    proc = subprocess.run(
        [
            "getscu",
            "-S",
            "-aet",
            SCU_AE,
            "-aec",
            NODE_AE,
            "-od",
            str(out),
            "-k",
            "QueryRetrieveLevel=SERIES",
            "-k",
            f"StudyInstanceUID={qr_node.chest_study}",
            "-k",
            f"SeriesInstanceUID={src_series}",
            "127.0.0.1",
            str(qr_node.port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    got = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in out.iterdir()}
    sent = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in qr_node.chest_files}
    assert set(got) == set(sent)
    for uid, path in got.items():
        assert _same_dataset(path, sent[uid])
    # the SR series too
    row = worklist_row(qr_node.db, qr_node.chest_study)
    out_sr = tmp_path / "get_sr"
    out_sr.mkdir()
    subprocess.run(
        [
            "getscu",
            "-S",
            "-aet",
            SCU_AE,
            "-aec",
            NODE_AE,
            "-od",
            str(out_sr),
            "-k",
            "QueryRetrieveLevel=IMAGE",
            "-k",
            f"StudyInstanceUID={qr_node.chest_study}",
            "-k",
            f"SOPInstanceUID={row['sr_sop_instance_uid']}",
            "127.0.0.1",
            str(qr_node.port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    (sr_file,) = list(out_sr.iterdir())
    assert pydicom.dcmread(sr_file).Modality == "SR"
    lines = [e for e in audit_lines(qr_node) if e["event_id"]["code"] == "110104" and e["action"] == "R"]
    assert any(
        "C-GET" in e["outcome_desc"] and any(o["id"] == qr_node.chest_study for o in e["objects"]) for e in lines
    )


def test_movescu_to_configured_destination(qr_node: QRNode, tmp_path: Path) -> None:
    out = tmp_path / "moved"
    out.mkdir()
    scp = subprocess.Popen(
        ["storescp", "-aet", MOVE_DEST_AE, "-od", str(out), str(qr_node.move_port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until(lambda: port_open(qr_node.move_port), 20, "storescp to listen")
        proc = movescu(qr_node, MOVE_DEST_AE)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        expected = {r[1] for r in sr_instances(qr_node.db, qr_node.chest_study)} | {
            str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in qr_node.chest_files
        }

        def moved() -> set[str]:
            return {
                str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in out.iterdir()
                if p.is_file() and p.stat().st_size > 0
            }

        wait_until(lambda: moved() == expected, 20, "the moved instances in storescp's folder", interval=0.2)
    finally:
        scp.terminate()
        scp.wait(10)


def test_unknown_move_destination_refused(qr_node: QRNode) -> None:
    proc = movescu(qr_node, "NOBODY", "-v")
    text = proc.stdout + proc.stderr
    assert "MoveDestinationUnknown" in text or "a801" in text.lower(), text


def test_queries_audited(qr_node: QRNode, tmp_path: Path) -> None:
    findscu(qr_node, tmp_path, "QueryRetrieveLevel=STUDY", "PatientID=QRPAT2", "StudyInstanceUID")
    queries = [e for e in audit_lines(qr_node) if e["event_id"]["code"] == "110112"]
    assert queries
    last = queries[-1]
    (obj,) = last["objects"]
    assert obj["type"] == "query" and obj["details"]["query"]["PatientID"] == "QRPAT2"
    assert obj["details"]["matches"] == 1
    assert last["participants"][0]["user_id"] == SCU_AE


def test_cancel_ends_find_and_get_with_fe00(qr_node: QRNode) -> None:
    """A C-CANCEL seen between two matches ends the operation with 0xFE00 (handler level)."""
    from types import SimpleNamespace

    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import (  # type: ignore[attr-defined]
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelGet,
    )

    qr = qr_node.node.listener.qr
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = f"{qr_node.chest_study}\\{qr_node.lateral_study}"
    requestor = SimpleNamespace(ae_title=SCU_AE, address="127.0.0.1")

    def event(sop_class: str) -> SimpleNamespace:
        return SimpleNamespace(
            request=SimpleNamespace(AffectedSOPClassUID=sop_class),
            identifier=ident,
            is_cancelled=True,
            assoc=SimpleNamespace(requestor=requestor),
        )

    assert [s for s, _ in qr.on_find(event(StudyRootQueryRetrieveInformationModelFind))] == [0xFE00]
    got = list(qr.on_get(event(StudyRootQueryRetrieveInformationModelGet)))
    assert got[0] >= 3 and got[1:] == [(0xFE00, None)]
