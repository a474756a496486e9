"""Association level: C-ECHO from our SCU, pynetdicom and DCMTK; peer and called-AE checks with
their audit trail; the association limit."""

from __future__ import annotations

import subprocess

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dimse.scu import Destination, echo
from tests.support.config import NODE_AE
from tests.support.dimse import py_echo
from tests.support.index import audit_entries
from tests.support.polling import wait_until


def echoscu(port: int, aet: str, aec: str = NODE_AE) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", aet, "-aec", aec, "-to", "10", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def rejections(audit_path) -> list[dict]:  # type: ignore[no-untyped-def]
    return [
        e for e in audit_entries(audit_path) if e["event_id"]["code"] == "110113" and "rejected" in e["outcome_desc"]
    ]


def test_echo_with_our_scu_and_pynetdicom(running_node) -> None:
    port = running_node.listener.port
    assert echo(Destination(NODE_AE, "127.0.0.1", port), calling_ae="TRIAGE_SCU", timeout=10) == 0
    assert py_echo(port, calling_ae="PYSCU") == 0


@pytest.mark.dcmtk
def test_echo_with_dcmtk_echoscu(running_node) -> None:
    result = echoscu(running_node.listener.port, "STORESCU")
    assert result.returncode == 0, result.stdout + result.stderr
    accepted = [
        e
        for e in audit_entries(running_node.settings.audit.path)
        if e["event_id"]["code"] == "110113" and e["outcome_desc"] == "association accepted"
    ]
    assert any(p["user_id"] == "STORESCU" for e in accepted for p in e["participants"])


@pytest.mark.dcmtk
def test_unknown_calling_ae_is_rejected_and_audited(running_node) -> None:
    result = echoscu(running_node.listener.port, "INTRUDER")
    assert result.returncode != 0, result.stdout + result.stderr
    audit = running_node.settings.audit.path
    alerts = wait_until(lambda: rejections(audit), 10, what="a 110113 rejection line")
    alert = alerts[-1]
    assert alert["event_id"]["meaning"] == "Security Alert"
    assert alert["outcome"] != 0
    assert {"user_id": "INTRUDER", "is_requestor": True}.items() <= alert["participants"][0].items()
    assert alert["participants"][0]["network_address"] == "127.0.0.1"
    # The node still serves allowed peers afterwards.
    assert echoscu(running_node.listener.port, "STORESCU").returncode == 0


@pytest.mark.dcmtk
def test_wrong_called_ae_is_rejected(running_node) -> None:
    result = echoscu(running_node.listener.port, "STORESCU", aec="SOMEONE_ELSE")
    assert result.returncode != 0
    assert py_echo(running_node.listener.port, calling_ae="PYSCU", called_ae="SOMEONE_ELSE") is None
    wait_until(lambda: rejections(running_node.settings.audit.path), 10, what="a rejection line")


def test_empty_allowed_peers_rejects_everyone(tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom={"allowed_peers": []}))
    for aet in ("STORESCU", "TRIAGE_SCU", "PYSCU", "NOBODY"):
        assert py_echo(node.listener.port, calling_ae=aet) is None, aet
    # audited per client and window: the first at once, the other three in the window's summary
    wait_until(lambda: len(rejections(node.settings.audit.path)) >= 1, 10, what="the first rejection line")
    node.refusals.flush()
    lines = rejections(node.settings.audit.path)
    assert len(lines) == 2 and lines[1]["objects"][0]["details"]["count"] == 3


def test_wildcard_allowed_peers_accepts_anyone(tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom={"allowed_peers": ["*"]}))
    for aet in ("ANYBODY", "CT_SCANNER_7", "X"):
        assert py_echo(node.listener.port, calling_ae=aet) == 0, aet
    # the called AE title is still checked
    assert py_echo(node.listener.port, calling_ae="ANYBODY", called_ae="OTHER_NODE") is None


def test_max_associations_is_enforced(tmp_path, make_settings, node_factory) -> None:
    limit = 3
    node = node_factory(make_settings(tmp_path, dicom={"max_associations": limit}))
    port = node.listener.port
    held = []
    try:
        for _ in range(limit):
            ae = AE(ae_title="PYSCU")
            ae.add_requested_context(Verification)
            assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
            assert assoc.is_established
            held.append(assoc)
        wait_until(
            lambda: len(node.listener.ae.active_associations) >= limit,
            10,
            what="the node to count the held associations",
        )
        extra = AE(ae_title="PYSCU")
        extra.add_requested_context(Verification)
        refused = extra.associate("127.0.0.1", port, ae_title=NODE_AE)
        assert not refused.is_established
        assert refused.is_rejected
        # The held ones still work.
        assert int(held[0].send_c_echo().Status) == 0
    finally:
        for assoc in held:
            assoc.release()
    # Once released, new associations are accepted again.
    wait_until(lambda: py_echo(port) == 0, 10, "an echo accepted after the release", interval=0.1)
