"""DICOM TLS contexts: the listener's, and the one client context every association the node
opens uses (forwarding by C-STORE, C-MOVE sub-associations), so both hold the same rules:
TLS 1.2 at least, the peer verified against its CA, our certificate when configured.

The listener's handshake runs non-blocking in the accept gate (node/dimse/gate.py), under the
handshake deadline, so a client that opens TCP and never speaks TLS stalls nothing.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from node.config import ConfigError, RemoteNode, RemoteTls, TlsSection


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


def client_context(tls: RemoteTls) -> ssl.SSLContext:
    """The TLS context of an association the node opens towards a peer."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if tls.cert_file is not None:
        ctx.load_cert_chain(str(tls.cert_file), str(tls.key_file) if tls.key_file else None)
    return ctx


def client_tls_args(peer: RemoteNode) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for an association to ``peer`` (None: plain TCP)."""
    return (client_context(peer.tls), peer.host) if peer.tls.enabled else None


__all__ = ["client_context", "client_tls_args", "server_context"]
