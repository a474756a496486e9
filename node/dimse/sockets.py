"""Socket tuning shared by our SCP and SCU.

TCP_NODELAY: without it every small DIMSE message waits for the peer's 40 ms delayed ACK
(measured in shared/peerbench/RESULTS.md: 45-88 ms per instance with DCMTK peers).
"""

from __future__ import annotations

import socket

from pynetdicom import evt


def set_nodelay(event: evt.Event) -> None:
    sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


NODELAY_HANDLER = (evt.EVT_CONN_OPEN, set_nodelay)
