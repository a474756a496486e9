"""One TLS client context for every association the node opens: forwarding and C-MOVE
sub-associations get the same TLS 1.2 minimum and the same peer verification."""

from __future__ import annotations

import ssl

from node.config import ForwardDestination, RemoteNode, RemoteTls
from node.dimse.tls import client_tls_args


def test_forwarding_and_move_destinations_share_the_client_context() -> None:
    tls = RemoteTls(enabled=True)
    for peer in (
        ForwardDestination(ae_title="PACS", host="pacs.example", port=11112, tls=tls),
        RemoteNode(ae_title="VIEWER", host="viewer.example", port=104, tls=tls),
    ):
        args = client_tls_args(peer)
        assert args is not None
        ctx, host = args
        assert host == peer.host
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert client_tls_args(RemoteNode(ae_title="PLAIN", host="h", port=104)) is None
