"""The DICOM port cannot be held by peers that connect and then stall, lie about PDU sizes or
stream without end: legitimate C-ECHO and C-STORE still succeed within the handshake deadline
plus one second, half-sent PDUs are timed out, and every such refusal is audited per client.
"""

from __future__ import annotations

import socket
import struct
import time
import uuid
from contextlib import ExitStack

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dimse.gate import REJECT_LOCAL_LIMIT
from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE
from tests.support.dimse import py_echo
from tests.support.files import file_sop_uid, stored_files
from tests.support.index import audit_entries
from tests.support.polling import wait_until

HANDSHAKE = 3.0


def _hostile(port: int, kind: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    if kind == "one_byte":
        s.sendall(b"\x01")
    elif kind == "rq_header_4gb":  # an A-ASSOCIATE-RQ header claiming 0xFFFFFFFF bytes
        s.sendall(struct.pack(">BBL", 0x01, 0, 0xFFFFFFFF))
    elif kind == "pdata_header_4gb":
        s.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF) + b"\x00" * 100)
    elif kind == "half_rq":  # a plausible A-ASSOCIATE-RQ, cut after a few bytes
        s.sendall(struct.pack(">BBL", 0x01, 0, 200) + b"\x00\x01\x00\x00")
    elif kind == "silent":
        pass
    return s


KINDS = ("one_byte", "rq_header_4gb", "pdata_header_4gb", "half_rq", "silent")


def _legit_echo_and_store(node, dicom_factory) -> float:  # type: ignore[no-untyped-def]
    """Seconds a legitimate peer needs for C-ECHO plus one C-STORE (asserting both succeed)."""
    port = node.listener.port
    good = dicom_factory.ct_series(1, size=64, out_dir=f"good-{uuid.uuid4().hex[:6]}")
    start = time.monotonic()
    assert py_echo(port) == 0
    results = send(good, Destination(NODE_AE, "127.0.0.1", port), calling_ae="PYSCU", timeout=10)
    elapsed = time.monotonic() - start
    assert [r.status for r in results] == [0]
    assert file_sop_uid(good[0]) in stored_files(node.settings.storage.path)
    return elapsed


@pytest.mark.parametrize("count", [16, 200])
def test_hostile_sockets_do_not_lock_out_legitimate_peers(
    count, tmp_path, make_settings, node_factory, dicom_factory
) -> None:
    node = node_factory(make_settings(tmp_path, dicom={"max_associations": 16, "handshake_timeout_seconds": HANDSHAKE}))
    with ExitStack() as stack:
        for i in range(count):
            stack.callback(_hostile(node.listener.port, KINDS[i % len(KINDS)]).close)
        elapsed = _legit_echo_and_store(node, dicom_factory)
        print(f"{count} hostile sockets: legitimate C-ECHO + C-STORE in {elapsed:.3f} s")
        assert elapsed < HANDSHAKE + 1, f"legitimate peer needed {elapsed:.1f} s with {count} hostile sockets"
        # and again, while they are still held open
        assert _legit_echo_and_store(node, dicom_factory) < HANDSHAKE + 1
    wait_until(lambda: node.listener.active_associations() == 0, 5, what="associations to end")


def test_connections_still_negotiating_do_not_take_association_slots(tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom={"max_associations": 2, "handshake_timeout_seconds": 30}))
    with ExitStack() as stack:
        for _ in range(20):
            stack.callback(_hostile(node.listener.port, "half_rq").close)
        wait_until(lambda: node.listener.pending_connections() >= 20, 10, what="20 pending connections")
        assert py_echo(node.listener.port) == 0


def test_handshake_deadline_drops_a_stalled_connection_and_audits_it(tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom={"handshake_timeout_seconds": 1}))
    s = _hostile(node.listener.port, "half_rq")
    start = time.monotonic()
    s.settimeout(5)
    assert s.recv(100) == b""  # closed by the node
    assert time.monotonic() - start < 1 + 1
    s.close()
    entries = wait_until(
        lambda: [e for e in audit_entries(node.settings.audit.path) if "association_timeout" in e["outcome_desc"]],
        5,
        what="audit line",
    )
    assert entries[0]["event_id"]["code"] == "110113"
    assert entries[0]["participants"][0]["network_address"] == "127.0.0.1"


def test_refusals_are_aggregated_per_client(tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path))
    for _ in range(50):
        s = _hostile(node.listener.port, "pdata_header_4gb")
        s.settimeout(5)
        try:
            s.recv(10)
        except OSError:
            pass
        s.close()
    wait_until(lambda: node.listener.pending_connections() == 0, 5, what="no pending connections")
    node.listener.refusals.flush()
    lines = [e for e in audit_entries(node.settings.audit.path) if "association_malformed" in e["outcome_desc"]]
    # one line at the first refusal, one summary for the other 49: not 50 lines
    assert len(lines) == 2
    assert lines[1]["objects"][0]["details"]["count"] == 49


def _associate_rq_bytes() -> bytes:
    """An A-ASSOCIATE-RQ for Verification from PYSCU to the node, as pynetdicom encodes it."""
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
    from pynetdicom.presentation import build_context
    from pynetdicom.transport import AddressInformation

    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title, primitive.called_ae_title = "PYSCU", NODE_AE
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 2)
    context = build_context(Verification)
    context.context_id = 1
    primitive.presentation_context_definition_list = [context]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    primitive.user_information = [max_length]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def _associate(port: int) -> AE:
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    return assoc


def test_half_sent_pdu_in_an_association_is_timed_out_and_frees_the_slot(tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom={"max_associations": 1, "network_timeout_seconds": 2}))
    assoc = _associate(node.listener.port)
    raw = assoc.dul.socket.socket
    raw.sendall(struct.pack(">BBL", 0x04, 0, 1000) + b"\x00" * 10)  # P-DATA, 990 bytes never sent
    wait_until(lambda: node.listener.active_associations() == 0, 2 + 3, what="the stalled association to end")
    assert py_echo(node.listener.port) == 0
    assoc.abort()


def test_pdu_larger_than_max_pdu_is_refused_before_it_is_buffered(tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom={"max_pdu_bytes": 16384}))
    assoc = _associate(node.listener.port)
    raw = assoc.dul.socket.socket
    raw.sendall(struct.pack(">BBL", 0x04, 0, 0xFFFFFFFF) + b"\x00" * 1000)
    wait_until(lambda: node.listener.active_associations() == 0, 5, what="the association to be aborted")
    assoc.abort()
    entries = wait_until(
        lambda: [e for e in audit_entries(node.settings.audit.path) if "pdu_refused" in e["outcome_desc"]],
        5,
        what="audit line",
    )
    assert "limit" in entries[0]["outcome_desc"]
    assert py_echo(node.listener.port) == 0


def test_over_limit_associations_are_rejected_without_a_thread(tmp_path, make_settings, node_factory) -> None:
    import threading

    node = node_factory(make_settings(tmp_path, dicom={"max_associations": 2}))
    held = [_associate(node.listener.port) for _ in range(2)]
    wait_until(lambda: node.listener.active_associations() == 2, 5, what="two associations")
    # A raw requestor reads the node's answer itself: pynetdicom's requestor sometimes reports
    # an immediate reject as an abort (a client-side race when connections follow each other
    # within microseconds; 900 raw attempts in a row all read the A-ASSOCIATE-RJ).
    request = _associate_rq_bytes()
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", node.listener.port), timeout=5) as sock:
            sock.sendall(request)
            answer = sock.recv(64)
        assert answer == REJECT_LOCAL_LIMIT, answer  # A-ASSOCIATE-RJ: transient, provider, local limit exceeded
        # the node answered from its accept gate: no acceptor thread beyond the two held ones
        acceptors = [t for t in threading.enumerate() if t.name.startswith("AcceptorThread")]
        assert len(acceptors) <= 2
    for assoc in held:
        assoc.release()
    assert py_echo(node.listener.port) == 0  # a released association frees its slot at once
