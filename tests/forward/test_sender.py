"""The outbox's C-STORE SCU against a pynetdicom SCP that misbehaves on purpose: a missing
response and a failure status are failures (to retry), a warning status counts as sent, and
the file travels in its stored transfer syntax."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.sop_class import DigitalXRayImageStorageForPresentation as DXStorage  # type: ignore[attr-defined]

from node.config import ForwardDestination
from node.demo import synthetic_image
from node.forward.sender import SendItem, send_batch
from tests.support.ports import free_port


@pytest.fixture
def flaky_scp():  # type: ignore[no-untyped-def]
    """An SCP answering C-STORE per the ``plan`` list: "hang" (no response in time) or a status."""
    plan: list[object] = []
    received: list[tuple[str, str]] = []

    def handle(event):  # type: ignore[no-untyped-def]
        received.append((str(event.request.AffectedSOPInstanceUID), str(event.context.transfer_syntax)))
        step = plan.pop(0) if plan else 0x0000
        if step == "hang":
            time.sleep(2.5)
            return 0x0000
        return step

    ae = AE(ae_title="FLAKY")
    ae.add_supported_context(DXStorage, [ExplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    yield port, plan, received
    server.shutdown()


def test_missing_response_and_failure_are_retried_warning_counts_as_sent(tmp_path: Path, flaky_scp) -> None:  # type: ignore[no-untyped-def]
    port, plan, received = flaky_scp
    path = synthetic_image(
        tmp_path / "dx.dcm",
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view="PA",
        body_part="CHEST",
        age=50,
        study_uid=generate_uid(),
        patient_id="S",
        number=1,
        series_uid=generate_uid(),
        photometric="MONOCHROME2",
        rows=16,
        cols=16,
    )
    dest = ForwardDestination(ae_title="FLAKY", host="127.0.0.1", port=port)
    plan.extend(["hang", 0xA700, 0xB007, 0x0000])

    def once() -> tuple[bool, int | None, str]:
        (r,) = send_batch(dest, [SendItem(7, path)], calling_ae="TRIAGE_NODE", timeout=1.0)
        assert r.key == 7
        return r.ok, r.status, r.error

    ok, status, error = once()
    assert (ok, status) == (False, None) and "no C-STORE response" in error
    assert once()[:2] == (False, 0xA700)
    assert once()[:2] == (True, 0xB007)
    assert once()[:2] == (True, 0x0000)
    assert len(received) == 4 and {ts for _, ts in received} == {ExplicitVRLittleEndian}

    (missing,) = send_batch(dest, [SendItem(8, tmp_path / "gone.dcm")], calling_ae="TRIAGE_NODE", timeout=1.0)
    assert not missing.ok and "cannot read" in missing.error
    closed = ForwardDestination(ae_title="NOBODY", host="127.0.0.1", port=free_port())
    (refused,) = send_batch(closed, [SendItem(9, path)], calling_ae="TRIAGE_NODE", timeout=1.0)
    assert not refused.ok and refused.status is None and "association" in refused.error


_EXT = {
    "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    "client": "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n",
}


def _pki(d: Path) -> Path:
    import subprocess

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=Fwd Test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    )
    for name in ("server", "client"):
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=fwd-{name}")
        (d / f"{name}.ext").write_text(_EXT[name])
        openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return d


def test_tls_destination_with_client_certificate(tmp_path: Path, require_tools) -> None:  # type: ignore[no-untyped-def]
    from node.config import RemoteTls, TlsSection
    from node.dimse.tls import server_context

    require_tools("openssl")
    pki = _pki(tmp_path)
    received: list[str] = []
    ae = AE(ae_title="TLSPACS")
    ae.add_supported_context(DXStorage, [ExplicitVRLittleEndian])
    port = free_port()
    ctx = server_context(
        TlsSection(enabled=True, cert_file=pki / "server.crt", key_file=pki / "server.key", ca_file=pki / "ca.crt")
    )  # client certificate required
    server = ae.start_server(
        ("127.0.0.1", port),
        block=False,
        ssl_context=ctx,
        evt_handlers=[
            (evt.EVT_C_STORE, lambda event: received.append(str(event.request.AffectedSOPInstanceUID)) or 0x0000)
        ],
    )
    try:
        path = synthetic_image(
            tmp_path / "dx.dcm",
            modality="DX",
            sop_class=DigitalXRayImageStorageForPresentation,
            view="PA",
            body_part="CHEST",
            age=50,
            study_uid=generate_uid(),
            patient_id="T",
            number=1,
            series_uid=generate_uid(),
            photometric="MONOCHROME2",
            rows=16,
            cols=16,
        )
        with_cert = ForwardDestination(
            ae_title="TLSPACS",
            host="127.0.0.1",
            port=port,
            tls=RemoteTls(
                enabled=True, ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key"
            ),
        )
        (r,) = send_batch(with_cert, [SendItem(1, path)], calling_ae="TRIAGE_NODE", timeout=5)
        assert r.ok, r.error
        assert len(received) == 1
        no_cert = ForwardDestination(
            ae_title="TLSPACS", host="127.0.0.1", port=port, tls=RemoteTls(enabled=True, ca_file=pki / "ca.crt")
        )
        (r,) = send_batch(no_cert, [SendItem(2, path)], calling_ae="TRIAGE_NODE", timeout=5)
        assert not r.ok and len(received) == 1
    finally:
        server.shutdown()
