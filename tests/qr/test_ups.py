"""The worklist as DICOM UPS (issue 4, item 4), driven by a pynetdicom UPS SCU: C-FIND on UPS
Pull returns one workitem per triaged study (priority HIGH or MEDIUM only), N-GET, and the
N-ACTION Change State machine with its Transaction UID checks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import UnifiedProcedureStepPull, UnifiedProcedureStepPush  # type: ignore[attr-defined]

from tests.support.config import NODE_AE, SCU_AE
from tests.support.index import worklist_row
from tests.support.qr import QRNode

pytestmark = [pytest.mark.dcmtk]


@pytest.fixture
def assoc(qr_node: QRNode) -> Iterator[object]:
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(UnifiedProcedureStepPull)
    ae.add_requested_context(UnifiedProcedureStepPush)
    a = ae.associate("127.0.0.1", qr_node.port, ae_title=NODE_AE)
    assert a.is_established
    yield a
    a.release()
    ae.shutdown()


def ups_find(assoc, **keys) -> list[Dataset]:  # type: ignore[no-untyped-def]
    query = Dataset()
    for k, v in {
        "SOPInstanceUID": "",
        "ScheduledProcedureStepPriority": "",
        "ProcedureStepState": "",
        "WorklistLabel": "",
        "ScheduledProcedureStepStartDateTime": "",
        "PatientID": "",
        "StudyInstanceUID": "",
        "ReferencedRequestSequence": [],
        "InputInformationSequence": [],
        "ReferencedInstanceSequence": [],
        "InputReadinessState": "",
        **keys,
    }.items():
        setattr(query, k, v)
    out, final = [], None
    for status, ident in assoc.send_c_find(query, UnifiedProcedureStepPull):
        if status.Status in (0xFF00, 0xFF01):
            out.append(ident)
        else:
            final = status.Status
    assert final == 0x0000
    return out


def change_state(assoc, uid: str, state: str, transaction_uid: str) -> int:  # type: ignore[no-untyped-def]
    info = Dataset()
    info.ProcedureStepState = state
    info.TransactionUID = transaction_uid
    status, _reply = assoc.send_n_action(info, 1, UnifiedProcedureStepPush, uid)
    return int(status.Status)


def test_c_find_one_workitem_per_triaged_study(qr_node: QRNode, assoc) -> None:  # type: ignore[no-untyped-def]
    items = ups_find(assoc, PatientID="QRPAT*")
    by_study = {str(ds.StudyInstanceUID): ds for ds in items}
    assert sorted(by_study) == sorted([qr_node.chest_study, qr_node.lateral_study])
    assert len(items) == 2
    for study_uid, ds in by_study.items():
        row = worklist_row(qr_node.db, study_uid)
        assert ds.ScheduledProcedureStepPriority in ("HIGH", "MEDIUM")
        assert ds.ScheduledProcedureStepPriority == row["priority"]
        assert ds.WorklistLabel == "AI triage"
        assert ds.InputReadinessState == "READY"
        assert ds.ReferencedRequestSequence[0].StudyInstanceUID == study_uid
        assert ds.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == row["sr_sop_instance_uid"]
        referenced = {r.ReferencedSOPInstanceUID for s in ds.InputInformationSequence for r in s.ReferencedSOPSequence}
        assert row["sr_sop_instance_uid"] in referenced
        assert "TransactionUID" not in ds
    # matching on priority and state
    for prio in ("HIGH", "MEDIUM", "LOW"):
        got = ups_find(assoc, PatientID="QRPAT*", ScheduledProcedureStepPriority=prio)
        assert all(ds.ScheduledProcedureStepPriority == prio for ds in got)
        assert len(got) == sum(1 for ds in items if ds.ScheduledProcedureStepPriority == prio)
    assert ups_find(assoc, PatientID="QRPAT*", ScheduledProcedureStepPriority="LOW") == []
    # the query was audited
    lines = [json.loads(x) for x in qr_node.cfg.audit_path.read_text().splitlines() if x.strip()]
    assert any(
        e["event_id"]["code"] == "110112" and e["objects"][0]["id"] == str(UnifiedProcedureStepPull) for e in lines
    )


def test_n_get_and_state_machine(qr_node: QRNode, assoc) -> None:  # type: ignore[no-untyped-def]
    (item,) = ups_find(assoc, StudyInstanceUID=qr_node.lateral_study)
    uid = str(item.SOPInstanceUID)
    status, ds = assoc.send_n_get([0x00741000, 0x00741200, 0x0020000D], UnifiedProcedureStepPush, uid)
    assert status.Status == 0x0000
    assert ds.ProcedureStepState == "SCHEDULED" and ds.StudyInstanceUID == qr_node.lateral_study
    status, _ = assoc.send_n_get([0x00741000], UnifiedProcedureStepPush, generate_uid())
    assert status.Status == 0xC307

    tx, other = generate_uid(), generate_uid()
    assert change_state(assoc, uid, "COMPLETED", tx) == 0xC310  # not yet IN PROGRESS
    assert change_state(assoc, uid, "IN PROGRESS", tx) == 0x0000  # claimed
    assert change_state(assoc, uid, "IN PROGRESS", other) == 0xC302  # someone else: already claimed
    assert change_state(assoc, uid, "COMPLETED", other) == 0xC301  # wrong Transaction UID
    assert change_state(assoc, uid, "SCHEDULED", tx) == 0xC303
    status, ds = assoc.send_n_get([0x00741000], UnifiedProcedureStepPush, uid)
    assert ds.ProcedureStepState == "IN PROGRESS"
    assert ups_find(assoc, StudyInstanceUID=qr_node.lateral_study, ProcedureStepState="IN PROGRESS")
    assert change_state(assoc, uid, "COMPLETED", tx) == 0x0000
    assert change_state(assoc, uid, "COMPLETED", tx) == 0xB306  # already completed (warning)
    assert change_state(assoc, uid, "CANCELED", tx) == 0xC300  # final: no more updates
    status, ds = assoc.send_n_get([0x00741000], UnifiedProcedureStepPush, uid)
    assert ds.ProcedureStepState == "COMPLETED"


def test_claim_then_cancel(qr_node: QRNode, assoc) -> None:  # type: ignore[no-untyped-def]
    (item,) = ups_find(assoc, StudyInstanceUID=qr_node.chest_study)
    uid = str(item.SOPInstanceUID)
    tx = generate_uid()
    assert change_state(assoc, uid, "IN PROGRESS", tx) == 0x0000
    assert change_state(assoc, uid, "CANCELED", generate_uid()) == 0xC301
    assert change_state(assoc, uid, "CANCELED", tx) == 0x0000
    assert change_state(assoc, uid, "CANCELED", tx) == 0xB304
