"""DICOM TLS: a self-signed CA, a server certificate for 127.0.0.1, a client certificate.

Echo over TLS works (pynetdicom, and DCMTK's echoscu with a client certificate); a client that
opens TCP and never speaks TLS does not stall the accept loop.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.config import NODE_AE
from tests.support.dimse import py_echo
from tests.support.index import index_snapshot
from tests.support.polling import wait_until

EXT = {
    "server": "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
    "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    "client": "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
    "extendedKeyUsage=clientAuth\n",
}


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory, require_tools) -> Path:  # type: ignore[no-untyped-def]
    """ca.crt/ca.key, server.crt/server.key (127.0.0.1), client.crt/client.key, made by openssl."""
    require_tools("openssl")
    d = tmp_path_factory.mktemp("pki")
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl(
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
        "/CN=Triage Test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=triage-{name}", cwd=d)
        (d / f"{name}.ext").write_text(EXT[name])
        _openssl(
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
            cwd=d,
        )
    return d


def client_context(pki: Path, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.crt"))
    if with_cert:
        ctx.load_cert_chain(pki / "client.crt", pki / "client.key")
    return ctx


def tls_settings(pki: Path, *, require_client_cert: bool = False, handshake_timeout: float = 30) -> dict:
    tls = {
        "enabled": True,
        "cert_file": str(pki / "server.crt"),
        "key_file": str(pki / "server.key"),
        "handshake_timeout_seconds": handshake_timeout,
    }
    if require_client_cert:
        tls["ca_file"] = str(pki / "ca.crt")
    return {"tls": tls}


def test_echo_over_tls(pki, tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom=tls_settings(pki)))
    port = node.listener.port
    assert py_echo(port, tls_args=(client_context(pki), "127.0.0.1")) == 0
    # plain TCP DICOM is not spoken on a TLS port
    assert py_echo(port) is None
    # the peer AE check still applies over TLS
    assert py_echo(port, calling_ae="INTRUDER", tls_args=(client_context(pki), "127.0.0.1")) is None


def test_client_certificate_required_when_ca_file_is_set(pki, tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom=tls_settings(pki, require_client_cert=True)))
    port = node.listener.port
    assert py_echo(port, tls_args=(client_context(pki, with_cert=True), "127.0.0.1")) == 0
    assert py_echo(port, tls_args=(client_context(pki, with_cert=False), "127.0.0.1")) is None


@pytest.mark.dcmtk
def test_dcmtk_echoscu_and_storescu_over_tls(pki, tmp_path, make_settings, node_factory, dicom_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom=tls_settings(pki, require_client_cert=True)))
    port = str(node.listener.port)
    tls = ["+tls", str(pki / "client.key"), str(pki / "client.crt"), "+cf", str(pki / "ca.crt")]
    echo = subprocess.run(
        ["echoscu", *tls, "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", port],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert echo.returncode == 0, echo.stdout + echo.stderr
    paths = dicom_factory.ct_series(3, size=64)
    store = subprocess.run(
        ["storescu", *tls, "-aet", "STORESCU", "-aec", NODE_AE, "127.0.0.1", port, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert store.returncode == 0, store.stdout + store.stderr
    assert len(index_snapshot(node.db)["instances"]) == 3


def test_silent_tcp_clients_do_not_stall_the_accept_loop(pki, tmp_path, make_settings, node_factory) -> None:
    node = node_factory(make_settings(tmp_path, dicom=tls_settings(pki, handshake_timeout=30)))
    port = node.listener.port
    silent = []
    try:
        for _ in range(3):  # connect, send nothing, hold the connection open
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            silent.append(s)
        wait_until(
            lambda: node.listener.pending_connections() >= len(silent), 10, "the node to accept the silent clients"
        )
        started = time.monotonic()
        assert py_echo(port, tls_args=(client_context(pki), "127.0.0.1")) == 0
        assert py_echo(port, tls_args=(client_context(pki), "127.0.0.1")) == 0
        elapsed = time.monotonic() - started
        assert elapsed < 10, f"TLS echoes took {elapsed:.1f}s while silent clients were connected"
        # the silent clients are still waiting (not yet dropped by the 30 s handshake timeout)
        silent[0].settimeout(0.1)
        try:
            assert silent[0].recv(1) != b""
        except TimeoutError:
            pass
    finally:
        for s in silent:
            s.close()
