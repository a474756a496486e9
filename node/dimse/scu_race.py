"""Close a race in pynetdicom's requestor that loses a DIMSE response, for our own SCUs.

Why: ``Association.send_c_store`` (and every other ``send_*``) pauses the association's reactor
thread before sending the request, so that only the caller takes the response off the DIMSE
message queue. The pause is a handshake without a lock (pynetdicom 3.0.4, and upstream as of
this writing)::

    reactor thread (loop)                     caller (send_c_store)
    A  _is_paused = True
    B  _reactor_checkpoint.wait()  # still set
                                              _reactor_checkpoint.clear()
                                              while not _is_paused: ...  # True since A: go on
                                              send the request, wait for the response
    C  _is_paused = False
    D  dimse.get_msg(block=False)  # takes the RESPONSE when it arrived after the send
       _serve_request(): "Received unexpected C-STORE service message" -> dropped

When the reactor thread loses the CPU between B and D long enough for the peer's answer to come
back, it takes the response and throws it away; the caller waits ``dimse_timeout`` for nothing
and aborts the association, although the peer answered (and stored the instance). On a loaded
machine with many concurrent associations this happened to about one C-STORE in 10^4
(RELIABILITY.md). For the node's forwarder it means a destination that said Success is counted
as a failure and gets the instance again.

The fix here: the reactor thread of an association we requested never takes a response off the
queue; it only takes requests (a peer may send N-EVENT-REPORT or similar), which is what its
``_serve_request`` can serve anyway. The caller's blocking ``get_msg`` is unchanged.
"""

from __future__ import annotations

import threading
from typing import Any

_GUARDED = "_triage_node_responses_guarded"


def keep_responses_for_caller(assoc: Any) -> Any:
    """Make ``assoc``'s reactor thread leave responses on the queue for the caller; returns ``assoc``.

    Call it right after ``AE.associate`` returns, before the first ``send_*``."""
    dimse = getattr(assoc, "dimse", None)
    if dimse is None or getattr(dimse, _GUARDED, False):
        return assoc
    original = dimse.get_msg

    queue = dimse.msg_queue

    def get_msg(block: bool = False) -> tuple[Any, Any]:
        if block or threading.current_thread() is not assoc:
            return original(block)
        with queue.mutex:  # look and take in one step: the caller may be taking at the same time
            if not queue.queue or not getattr(queue.queue[0][1], "is_valid_request", False):
                return None, None  # nothing, or a response: the caller of send_*() takes it
            item = queue.queue.popleft()
            queue.not_full.notify()
            return item

    dimse.get_msg = get_msg
    setattr(dimse, _GUARDED, True)
    return assoc


__all__ = ["keep_responses_for_caller"]
