"""The socket pynetdicom reads an accepted association from: every PDU has a deadline from its
first byte, a size cap checked on its 6-byte header before any of its body is buffered, and a
data set that grows past ``storage.max_dataset_bytes`` stops being buffered while it streams.

Why here: pynetdicom's DUL reads a PDU with two blocking ``recv`` calls on its
AssociationSocket (the 6-byte header, then exactly the length the header claims) on a socket
without a timeout, and its own timers only run between PDUs. A peer that sends half a PDU (or a
header claiming 4 GB) would hold a thread and a slot forever, and a P-DATA stream would be
buffered whole before our C-STORE handler could count it. Wrapping the socket is the narrowest
place: the DUL, the state machine and the DIMSE decoder stay pynetdicom's own.

What a refusal looks like to the DUL: the header read returns no bytes, which pynetdicom treats
as "transport connection closed" (Evt17) without logging a traceback; we first send an A-ABORT
so a well-behaved peer learns why.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pynetdicom.transport import AssociationSocket

if TYPE_CHECKING:
    from pynetdicom.association import Association

PDU_HEADER = 6
P_DATA_TF = 0x04
A_ABORT = 0x07
# A-ABORT, source 2 (service provider), reason 6 (invalid PDU parameter value) / 0 (not specified).
ABORT_INVALID_PARAMETER = bytes([A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 6])
ABORT_NOT_SPECIFIED = bytes([A_ABORT, 0, 0, 0, 0, 4, 0, 0, 2, 0])
# A command set is a few hundred bytes; a peer that streams command fragments without end is hostile.
MAX_COMMAND_BYTES = 64 * 1024
# Smallest buffer a receive call asks the kernel for (large PDUs are read in 256 KiB steps).
RECV_CHUNK = 256 * 1024


@dataclass(frozen=True)
class GuardLimits:
    """Limits for one established association (from [dicom] and [storage])."""

    max_pdu_length: int  # the largest PDU length field accepted (max_pdu_bytes + header slack)
    pdu_deadline_seconds: float  # from a PDU's first byte to its last
    max_dataset_bytes: int  # data set bytes buffered per message before the rest is dropped


class PduRefused(Exception):
    """The peer broke a limit; the association ends (reason in ``str``)."""


class GuardedSocket(AssociationSocket):
    """AssociationSocket that reads whole PDUs itself, under a deadline and a size cap.

    ``prefix`` holds bytes the accept gate already read (the complete A-ASSOCIATE-RQ), served
    before anything from the socket. ``on_refusal(reason)`` is called once when the peer broke a
    limit (for the audit ledger).
    """

    def __init__(
        self,
        assoc: Association,
        client_socket: socket.socket,
        *,
        prefix: bytes,
        limits: GuardLimits,
        on_refusal: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.limits = limits
        self._on_refusal = on_refusal
        self._buffer = bytearray(prefix)  # raw bytes read from the socket, not yet parsed into a PDU
        self._ready_pdu = bytearray()  # one complete PDU (maybe rewritten) that pynetdicom is reading
        self._dataset_bytes = 0  # data set bytes of the message being received
        self._command_bytes = 0
        self._dropping = False  # the current data set passed max_dataset_bytes
        self.oversized_datasets: list[int] = []  # sizes of data sets cut off, taken by the C-STORE handler
        self.refusal: str | None = None

    # ------------------------------------------------------------------ what pynetdicom calls
    @property
    def ready(self) -> bool:
        if self._ready_pdu or self._buffer:
            return True
        return bool(super().ready)

    def recv(self, nr_bytes: int) -> bytearray:
        if not self._ready_pdu:
            try:
                self._ready_pdu = self._read_pdu()
            except PduRefused as exc:
                self._refuse(str(exc))
                return bytearray()
            except (OSError, TimeoutError):
                # Closed or reset by the peer: pynetdicom sees a short read (Evt17), as before.
                return bytearray()
        out = self._ready_pdu[:nr_bytes]
        del self._ready_pdu[:nr_bytes]
        return out

    def take_oversized(self) -> int | None:
        """Size of the last data set that passed the limit (and was not buffered), once."""
        return self.oversized_datasets.pop(0) if self.oversized_datasets else None

    # ------------------------------------------------------------------ reading one PDU
    def _read_pdu(self) -> bytearray:
        deadline = time.monotonic() + self.limits.pdu_deadline_seconds
        self._fill(PDU_HEADER, deadline)
        pdu_type, _, length = struct.unpack(">BBL", bytes(self._buffer[:PDU_HEADER]))
        if length > self.limits.max_pdu_length:
            raise PduRefused(f"PDU of {length} bytes announced, limit {self.limits.max_pdu_length}")
        total = PDU_HEADER + length
        self._fill(total, deadline)
        pdu = self._buffer[:total]
        del self._buffer[:total]
        if pdu_type == P_DATA_TF:
            pdu = self._bound_pdata(pdu)
        return pdu

    def _fill(self, size: int, deadline: float) -> None:
        """Read until ``size`` bytes are buffered, or raise when the deadline passes."""
        sock = self.socket
        if sock is None:
            raise OSError("socket closed")
        while len(self._buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PduRefused(f"PDU not complete within {self.limits.pdu_deadline_seconds:g} s of its first byte")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(min(RECV_CHUNK, size - len(self._buffer)))
            except TimeoutError:
                raise PduRefused(
                    f"PDU not complete within {self.limits.pdu_deadline_seconds:g} s of its first byte"
                ) from None
            finally:
                if self.socket is not None:
                    # Sends stay bounded too: a peer that stops reading cannot park our thread.
                    self.socket.settimeout(self.limits.pdu_deadline_seconds)
            if not chunk:
                raise OSError("connection closed by the peer")
            self._buffer += chunk

    def _bound_pdata(self, pdu: bytearray) -> bytearray:
        """Count the data set bytes of the message; past the limit, keep only the PDV headers.

        A PDV item is: 4-byte length, context id, message control header (bit 0 command,
        bit 1 last fragment), fragment. Dropping fragment bytes keeps the DIMSE decoder's
        state machine intact while nothing more of the data set is held in memory; the
        C-STORE handler then answers 0xA701 from ``take_oversized``.
        """
        out = bytearray(pdu[:PDU_HEADER])
        pos, end = PDU_HEADER, len(pdu)
        rewritten = False
        while pos + 6 <= end:
            item_length = struct.unpack(">L", pdu[pos : pos + 4])[0]
            if item_length < 2 or pos + 4 + item_length > end:
                return pdu  # malformed: pynetdicom's decoder refuses it (Evt19, abort)
            control = pdu[pos + 5]
            fragment_length = item_length - 2
            keep = True
            if control & 0x01:  # command
                self._command_bytes += fragment_length
                if self._command_bytes > MAX_COMMAND_BYTES:
                    raise PduRefused(f"command set larger than {MAX_COMMAND_BYTES} bytes")
                if control & 0x02:
                    self._command_bytes = 0
            else:
                self._dataset_bytes += fragment_length
                if self._dataset_bytes > self.limits.max_dataset_bytes:
                    self._dropping = True
                keep = not self._dropping
                if control & 0x02:
                    if self._dropping:
                        self.oversized_datasets.append(self._dataset_bytes)
                    self._dataset_bytes, self._dropping = 0, False
            if keep:
                out += pdu[pos : pos + 4 + item_length]
            else:
                out += struct.pack(">L", 2) + pdu[pos + 4 : pos + 6]
                rewritten = True
            pos += 4 + item_length
        if not rewritten:
            return pdu
        out[2:6] = struct.pack(">L", len(out) - PDU_HEADER)
        return out

    def _refuse(self, reason: str) -> None:
        self.refusal = reason
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(ABORT_INVALID_PARAMETER)
            except OSError:
                pass
        if self._on_refusal is not None:
            try:
                self._on_refusal(reason)
            except Exception:
                pass
