"""DICOM TLS whose handshake cannot stall the accept loop.

pynetdicom's AssociationServer wraps the accepted socket and handshakes inside the accept
thread, so one client that opens TCP and never speaks TLS blocks every later connection.
We wrap with do_handshake_on_connect=False and handshake in the connection's own thread,
under a timeout.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from pynetdicom.transport import ThreadedAssociationServer

from node.config import ConfigError, TlsSection


def server_context(tls: TlsSection) -> ssl.SSLContext:
    if tls.cert_file is None or tls.key_file is None:
        raise ConfigError("dicom.tls.cert_file and dicom.tls.key_file are required when TLS is enabled")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # A bad certificate or key is a configuration error: named, not a traceback.
    try:
        ctx.load_cert_chain(Path(tls.cert_file), Path(tls.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"dicom.tls.cert_file / dicom.tls.key_file: cannot load ({exc})") from None
    if tls.ca_file is not None:
        try:
            ctx.load_verify_locations(Path(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"dicom.tls.ca_file: cannot load ({exc})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class NodeAssociationServer(ThreadedAssociationServer):
    """Threaded server with a deferred, time-limited TLS handshake."""

    handshake_timeout: float = 10.0

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:  # type: ignore[override]
        client_socket, address = self.socket.accept()  # type: ignore[union-attr]
        if self.ssl_context:
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False)
        return client_socket, address

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[no-untyped-def,override]
        if isinstance(request, ssl.SSLSocket):
            try:
                request.settimeout(self.handshake_timeout)
                request.do_handshake()
                request.settimeout(None)
            except (OSError, ssl.SSLError):
                self.shutdown_request(request)
                return
        super().process_request_thread(request, client_address)
