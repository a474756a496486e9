"""DICOM TLS context of the listener.

The handshake itself runs non-blocking in the accept gate (node/dimse/gate.py), under the
handshake deadline, so a client that opens TCP and never speaks TLS stalls nothing.
"""

from __future__ import annotations

import ssl
from pathlib import Path

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
