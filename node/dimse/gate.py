"""The accept gate of the DICOM port: no thread, slot or large buffer for a peer until it has
sent a complete, plausible A-ASSOCIATE-RQ within the handshake deadline.

Why: pynetdicom's server starts a thread per TCP connection and counts every connection
against ``maximum_associations`` from the moment it is accepted, and its reader blocks on a
socket without a timeout. Sixteen sockets that send one byte each therefore locked legitimate
modalities out for as long as the attacker liked. Here one selector thread holds connections
that are still negotiating (TLS handshake, then the A-ASSOCIATE-RQ PDU), each with

* a deadline from accept (``dicom.handshake_timeout_seconds``, TLS handshake included),
* a cap on what it may send before it is associated (``MAX_ASSOCIATE_RQ_BYTES``, checked on
  the PDU header before the body is buffered; anything but an A-ASSOCIATE-RQ is refused),
* a bounded budget (``dicom.max_pending_connections``): when it is full the oldest pending
  connection is dropped, so a flood of idle sockets cannot keep a real peer (which finishes
  its request in milliseconds) from being read.

Only then is the connection handed to pynetdicom, with the bytes already read, on a
GuardedSocket (node/dimse/pdu_guard.py) that keeps per-PDU deadlines and caps. Established
associations are counted here; over ``dicom.max_associations`` the gate answers with a
pre-encoded A-ASSOCIATE-RJ (transient, local limit exceeded) and closes, without a thread.
"""

from __future__ import annotations

import errno
import selectors
import socket
import ssl
import struct
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pynetdicom.transport import AddressInformation, RequestHandler, ThreadedAssociationServer

from node.dimse.pdu_guard import PDU_HEADER, GuardedSocket, GuardLimits

A_ASSOCIATE_RQ = 0x01
# A real A-ASSOCIATE-RQ is a few KiB (128 presentation contexts with a handful of transfer
# syntaxes each stay below 64 KiB); 256 KiB leaves room for peers proposing every syntax.
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024
# A-ASSOCIATE-RJ: result 2 (rejected-transient), source 3 (service-provider, presentation),
# reason 2 (local-limit-exceeded).
REJECT_LOCAL_LIMIT = bytes([0x03, 0, 0, 0, 0, 4, 0, 2, 3, 2])
ACCEPT_BATCH = 64


@dataclass(frozen=True)
class GateLimits:
    max_associations: int
    max_pending: int
    handshake_seconds: float
    tcp_nodelay: bool
    guard: GuardLimits


@dataclass
class _Pending:
    sock: socket.socket
    address: tuple[Any, ...]
    deadline: float
    tls_pending: bool
    buffer: bytearray = field(default_factory=bytearray)


# on_refusal(kind, peer_host, detail): the listener feeds these into the audit ledger.
RefusalCallback = Callable[[str, str, str], None]


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's handler, with our GuardedSocket in place of its AssociationSocket."""

    def _create_association(self):  # pynetdicom's own method, re-done; untyped as the original
        from pynetdicom import evt
        from pynetdicom._globals import MODE_ACCEPTOR
        from pynetdicom.association import Association

        server = self.server  # a NodeAssociationServer: this handler serves no other
        raw_socket, prefix = self.request
        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        host = str(self.client_address[0])
        sock = GuardedSocket(
            assoc,
            raw_socket,
            prefix=bytes(prefix),
            limits=server.limits.guard,
            on_refusal=lambda reason: server.refused("pdu_refused", host, reason),
        )
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        # pynetdicom deep-copies its ~220 supported contexts here for every association (about
        # 140 ms of CPU, per association, before a byte is answered); negotiation only reads them
        # (negotiate_as_acceptor builds new result contexts), so a shallow list is enough.
        assoc.acceptor.supported_contexts = list(self.server.contexts)
        assoc.requestor.address_info = AddressInformation.from_tuple(self.client_address)
        for event in self.server._handlers:
            if event.is_intervention and self.server._handlers[event]:
                assoc.bind(event, *self.server._handlers[event])
            elif isinstance(event, evt.NotificationEvent):
                for handler in self.server._handlers[event]:
                    assoc.bind(event, handler[0], handler[1])
        server.track(assoc)
        return assoc


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, fed by the accept gate instead of socketserver's loop."""

    request_queue_size = 256
    daemon_threads = True
    limits: GateLimits
    on_refusal: RefusalCallback | None = None

    def __init__(
        self, *args: Any, limits: GateLimits, on_refusal: RefusalCallback | None = None, **kwargs: Any
    ) -> None:
        self.limits = limits
        self.on_refusal = on_refusal
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._pending: OrderedDict[int, _Pending] = OrderedDict()  # by fd, oldest first
        self._associations: weakref.WeakSet[Any] = weakref.WeakSet()
        self._assoc_lock = threading.Lock()
        self.pending_gauge = 0
        kwargs.setdefault("request_handler", GuardedRequestHandler)
        super().__init__(*args, **kwargs)

    # ------------------------------------------------------------------ bookkeeping
    def track(self, assoc: Any) -> None:
        with self._assoc_lock:
            self._associations.add(assoc)

    def active_count(self) -> int:
        """Associations holding a slot: established, or handed over and still negotiating (ms).

        One that was released, aborted or rejected frees its slot at once, while its thread
        winds down (a peer that releases and re-associates at once is not refused)."""
        with self._assoc_lock:
            return sum(
                1
                for a in list(self._associations)
                if a.is_alive() and not (a.is_released or a.is_aborted or a.is_rejected)
            )

    def pending_count(self) -> int:
        return len(self._pending)

    def refused(self, kind: str, host: str, detail: str) -> None:
        if self.on_refusal is not None:
            try:
                self.on_refusal(kind, host, detail)
            except Exception:
                pass

    # ------------------------------------------------------------------ the loop
    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._stopped.clear()
        listener = self.socket
        if listener is None:  # server_close() ran before the loop started
            self._stopped.set()
            return
        listener.setblocking(False)
        sel = selectors.DefaultSelector()
        sel.register(listener, selectors.EVENT_READ, None)
        try:
            while not self._stop.is_set():
                timeout = 0.2
                if self._pending:
                    first = next(iter(self._pending.values()))
                    timeout = max(0.0, min(timeout, first.deadline - time.monotonic()))
                for key, mask in sel.select(timeout):
                    if key.data is None:
                        self._accept(sel)
                    else:
                        self._on_readable(sel, key.data, mask)
                self._expire(sel)
        finally:
            for pending in list(self._pending.values()):
                self._drop(sel, pending)
            sel.close()
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop.set()
        self._stopped.wait(5)
        self.server_close()
        if self in self.ae._servers:
            self.ae._servers.remove(self)

    def _accept(self, sel: selectors.BaseSelector) -> None:
        listener = self.socket
        if listener is None:
            return
        for _ in range(ACCEPT_BATCH):
            try:
                sock, address = listener.accept()
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: shed the oldest pending peer instead of spinning.
                    self._evict_oldest(sel, "file descriptors exhausted")
                return
            sock.setblocking(False)
            if self.limits.tcp_nodelay:
                try:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    pass
            context = self.ssl_context
            tls = context is not None
            if context is not None:
                sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            while len(self._pending) >= self.limits.max_pending:
                self._evict_oldest(sel, "too many connections still negotiating")
            pending = _Pending(sock, address, time.monotonic() + self.limits.handshake_seconds, tls)
            self._pending[sock.fileno()] = pending
            sel.register(sock, selectors.EVENT_READ, pending)
            if tls:
                self._on_readable(sel, pending, selectors.EVENT_READ)

    def _on_readable(self, sel: selectors.BaseSelector, pending: _Pending, mask: int) -> None:
        sock = pending.sock
        try:
            if pending.tls_pending:
                try:
                    sock.do_handshake()  # type: ignore[attr-defined]
                except ssl.SSLWantReadError:
                    sel.modify(sock, selectors.EVENT_READ, pending)
                    return
                except ssl.SSLWantWriteError:
                    sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, pending)
                    return
                pending.tls_pending = False
                sel.modify(sock, selectors.EVENT_READ, pending)
            while True:
                want = self._wanted(pending)
                if want <= 0:
                    break
                try:
                    chunk = sock.recv(min(want, 65536))
                except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                    break
                if not chunk:
                    self._drop(sel, pending)
                    return
                pending.buffer += chunk
        except (OSError, ssl.SSLError) as exc:
            self.refused(
                "association_aborted",
                str(pending.address[0]),
                f"connection failed before association: {type(exc).__name__}",
            )
            self._drop(sel, pending)
            return
        except _Refused as exc:
            self.refused("association_malformed", str(pending.address[0]), str(exc))
            self._drop(sel, pending)
            return
        if len(pending.buffer) >= PDU_HEADER and self._wanted(pending) == 0:
            self._hand_over(sel, pending)

    @staticmethod
    def _wanted(pending: _Pending) -> int:
        """Bytes still missing from the A-ASSOCIATE-RQ (raises _Refused for anything else)."""
        buf = pending.buffer
        if len(buf) < PDU_HEADER:
            return PDU_HEADER - len(buf)
        pdu_type, _, length = struct.unpack(">BBL", bytes(buf[:PDU_HEADER]))
        if pdu_type != A_ASSOCIATE_RQ:
            raise _Refused(f"first PDU is type 0x{pdu_type:02X}, not an A-ASSOCIATE-RQ")
        if length > MAX_ASSOCIATE_RQ_BYTES:
            raise _Refused(f"A-ASSOCIATE-RQ of {length} bytes announced, limit {MAX_ASSOCIATE_RQ_BYTES}")
        if len(buf) > PDU_HEADER + length:
            raise _Refused("data after the A-ASSOCIATE-RQ before the association was accepted")
        return PDU_HEADER + length - len(buf)

    def _hand_over(self, sel: selectors.BaseSelector, pending: _Pending) -> None:
        sel.unregister(pending.sock)
        self._pending.pop(pending.sock.fileno(), None)
        host = str(pending.address[0])
        if self.active_count() >= self.limits.max_associations:
            try:
                pending.sock.setblocking(True)
                pending.sock.settimeout(1.0)
                pending.sock.sendall(REJECT_LOCAL_LIMIT)
            except OSError:
                pass
            self._close(pending.sock)
            self.refused("association_rejected", host, "association limit reached (local limit exceeded)")
            return
        pending.sock.setblocking(True)
        pending.sock.settimeout(self.limits.guard.pdu_deadline_seconds)
        self.process_request((pending.sock, pending.buffer), pending.address)  # type: ignore[arg-type]

    def _expire(self, sel: selectors.BaseSelector) -> None:
        now = time.monotonic()
        while self._pending:
            pending = next(iter(self._pending.values()))
            if pending.deadline > now:
                return
            self.refused(
                "association_timeout",
                str(pending.address[0]),
                f"no complete A-ASSOCIATE-RQ within {self.limits.handshake_seconds:g} s",
            )
            self._drop(sel, pending)

    def _evict_oldest(self, sel: selectors.BaseSelector, why: str) -> None:
        if not self._pending:
            return
        pending = next(iter(self._pending.values()))
        self.refused("association_evicted", str(pending.address[0]), why)
        self._drop(sel, pending)

    def _drop(self, sel: selectors.BaseSelector, pending: _Pending) -> None:
        self._pending.pop(pending.sock.fileno(), None)
        try:
            sel.unregister(pending.sock)
        except (KeyError, ValueError, OSError):
            pass
        self._close(pending.sock)

    @staticmethod
    def _close(sock: socket.socket) -> None:
        try:
            sock.close()
        except OSError:
            pass

    # socketserver hands our (socket, prefix) tuple to shutdown_request on errors
    def shutdown_request(self, request: Any) -> None:
        sock = request[0] if isinstance(request, tuple) else request
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._close(sock)

    def close_request(self, request: Any) -> None:
        # The association thread owns the socket after hand-over; socketserver must not close it.
        return


class _Refused(Exception):
    """A negotiating connection broke the gate's rules."""
