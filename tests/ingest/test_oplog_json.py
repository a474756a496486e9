"""Operational stderr is JSON only, and carries no identifiers, also under attack and also when
libraries (pynetdicom, highdicom, pydicom warnings, uvicorn) are the ones talking."""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import warnings

import httpx
import pydicom

from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE
from tests.support.dimse import py_echo, send_file_as_is, storescu
from tests.support.files import write_raw_part10
from tests.support.polling import wait_until


def _json_lines(text: str) -> list[dict]:  # type: ignore[type-arg]
    lines = [line for line in text.splitlines() if line.strip()]
    bad = []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            bad.append(line)
    assert not bad, f"{len(bad)} of {len(lines)} stderr lines are not JSON, e.g. {bad[:3]}"
    return out


def test_library_messages_are_json_and_redacted(capfd) -> None:
    from node import oplog

    oplog.configure("info")
    uid = "1.2.826.0.1.3680043.8.498.12345678901234567890"
    logging.getLogger("highdicom.sr.templates").info("copy Patient-related attributes from dataset %s", uid)
    logging.getLogger("pynetdicom.assoc").error("Peer sent SOP Instance UID '%s' for DOE^JOHN", uid)
    try:
        raise ValueError(f"bad value 'DOE^JOHN' in {uid}")
    except ValueError:
        logging.getLogger("pynetdicom.dul").exception("Exception in DUL.run()")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("Invalid value for VR PN: 'SMITH^JANE'", UserWarning, stacklevel=1)

    def crash() -> None:
        raise RuntimeError(f"thread died on {uid}")

    t = threading.Thread(target=crash, name="doomed")
    t.start()
    t.join()
    oplog.get_logger("test").info("our_event", study_ref=oplog.study_ref(uid))
    err = capfd.readouterr().err
    events = _json_lines(err)
    assert len(events) >= 5  # (+1 for the warning, unless pytest's own warning capture took it)
    for secret in (uid, "DOE^JOHN", "SMITH^JANE", "Traceback"):
        assert secret not in err
    assert any(e["event"].startswith("copy Patient-related attributes from dataset <uid>") for e in events)
    assert any(e["event"] == "uncaught_exception_in_thread" and e["error"] == "RuntimeError" for e in events)


def test_serve_stderr_under_attack_is_json_without_identifiers(
    tmp_path, settings_dict, serve_factory, dicom_factory, require_tools
) -> None:
    require_tools("storescu")
    data = settings_dict(
        tmp_path,
        node={"log_level": "info"},
        dicom={"allowed_peers": ["STORESCU", "PYSCU"], "handshake_timeout_seconds": 1},
        http={"enabled": True, "port": 0, "token": "t0ken"},
    )
    node = serve_factory(data).start()
    port = data["dicom"]["port"]
    ct = dicom_factory.ct_series(2, size=64)
    src = pydicom.dcmread(ct[0], stop_before_pixels=True)
    assert storescu(port, ct).returncode == 0
    assert [r.status for r in send(ct, Destination(NODE_AE, "127.0.0.1", port), calling_ae="PYSCU")] == [0, 0]
    assert py_echo(port, calling_ae="INTRUDER") is None
    # hostile sockets: a byte, a 4 GB header, garbage
    for payload in (b"\x01", struct.pack(">BBL", 1, 0, 0xFFFFFFFF), b"GET / HTTP/1.0\r\n\r\n"):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(payload)
    # a garbage data set with the patient's identifiers in it
    body = (b"\x10\x00\x10\x00PN\x08\x00" + str(src.PatientName).encode().ljust(8)[:8]) * 3 + b"\xff" * 5
    bad = write_raw_part10(
        tmp_path / "bad.dcm",
        sop_class=str(src.SOPClassUID),
        sop_uid=str(src.SOPInstanceUID),
        transfer_syntax="1.2.840.10008.1.2.1",
        body=body,
    )
    assert send_file_as_is(port, bad) == 0xC000
    http_port = wait_until(lambda: _http_port(node.output()), 10, what="the HTTP port")
    assert httpx.get(f"http://127.0.0.1:{http_port}/dicomweb/studies").status_code == 401
    with socket.create_connection(("127.0.0.1", port)) as stalled:
        stalled.sendall(b"\x01")
        wait_until(lambda: "association_timeout" in node.output(), 10, what="the stalled connection timed out")
    assert node.terminate() == 0
    # the two banner lines go to stdout (merged into this output): everything else must be JSON
    stderr = "\n".join(
        line
        for line in node.output().splitlines()
        if not line.startswith(("triage-node listening", "operator console:"))
    )
    events = _json_lines(stderr)
    assert len(events) > 5
    for secret in (
        src.PatientID,
        str(src.PatientName),
        src.StudyInstanceUID,
        src.SOPInstanceUID,
        src.SeriesInstanceUID,
        src.AccessionNumber,
    ):
        assert secret not in stderr, secret


def _http_port(output: str) -> int | None:
    marker = "HTTP on 127.0.0.1:"
    if marker not in output:
        return None
    return int(output.split(marker, 1)[1].split(";", 1)[0])
