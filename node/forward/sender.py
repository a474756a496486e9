"""C-STORE SCU for the outbox: one association per destination per batch, files sent as stored.

Each file goes out in its stored transfer syntax (the file is streamed from disk, not decoded);
when the peer does not accept that syntax, the data set is decoded and sent in Explicit VR
Little Endian. Success (0x0000) and warnings (0xB000-0xBFFF) count as sent; anything else,
including a missing response or a lost association, is a failure the caller retries: a
missing response does not prove the receiver lacks the instance, and a resend is harmless.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.filereader import read_file_meta_info
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

from node.config import ForwardDestination
from node.dimse.scu_race import keep_responses_for_caller
from node.dimse.sockets import NODELAY_HANDLER
from node.dimse.tls import client_tls_args

MAX_CONTEXTS = 128


@dataclass(frozen=True)
class SendItem:
    key: int  # the outbox row id
    path: Path


@dataclass(frozen=True)
class ItemResult:
    key: int
    ok: bool
    status: int | None  # None: no response
    error: str = ""


def _is_ok(status: int) -> bool:
    return status == 0x0000 or 0xB000 <= status <= 0xBFFF


def send_batch(
    dest: ForwardDestination, items: Sequence[SendItem], *, calling_ae: str, timeout: float
) -> list[ItemResult]:
    """C-STORE ``items`` to ``dest`` over one association; one result per item, in order."""
    results: dict[int, ItemResult] = {}
    metas: dict[int, tuple[str, str]] = {}
    contexts: dict[str, set[str]] = {}
    for item in items:
        try:
            meta = read_file_meta_info(item.path)
            sop_class, ts = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        except Exception as exc:  # missing or unreadable file: retried, then dead
            results[item.key] = ItemResult(item.key, False, None, f"cannot read {item.path.name}: {exc}"[:300])
            continue
        metas[item.key] = (sop_class, ts)
        contexts.setdefault(sop_class, set()).add(ts)
    if not metas:
        return [results[i.key] for i in items]

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = 0
    for sop_class, syntaxes in sorted(contexts.items()):
        # The stored syntax first, then the uncompressed ones we can always produce.
        proposed = sorted(syntaxes) + [s for s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) if s not in syntaxes]
        if len(ae.requested_contexts) >= MAX_CONTEXTS:
            break
        ae.add_requested_context(sop_class, proposed)

    try:
        tls_args = client_tls_args(dest)
        assoc = ae.associate(
            dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=[NODELAY_HANDLER], tls_args=tls_args
        )
        keep_responses_for_caller(assoc)  # a Success must not be lost to pynetdicom's reactor (resend)
    except Exception as exc:  # e.g. a TLS context that cannot be built
        error = f"association failed: {type(exc).__name__}: {exc}"[:300]
        return [results.get(i.key) or ItemResult(i.key, False, None, error) for i in items]
    if not assoc.is_established:
        why = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "not established"
        error = f"association with {dest.ae_title}@{dest.host}:{dest.port} {why}"
        return [results.get(i.key) or ItemResult(i.key, False, None, error) for i in items]

    accepted = {(str(c.abstract_syntax), str(c.transfer_syntax[0])) for c in assoc.accepted_contexts}
    try:
        for item in items:
            if item.key in results:
                continue
            if not assoc.is_established:
                results[item.key] = ItemResult(item.key, False, None, "association lost before sending")
                continue
            sop_class, ts = metas[item.key]
            try:
                if (sop_class, ts) in accepted:
                    status_ds = assoc.send_c_store(item.path)  # streamed as stored
                elif (sop_class, ExplicitVRLittleEndian) in accepted or (sop_class, ImplicitVRLittleEndian) in accepted:
                    ds = pydicom.dcmread(item.path)
                    if UID(ts).is_compressed:
                        ds.decompress()
                    status_ds = assoc.send_c_store(ds)
                else:
                    results[item.key] = ItemResult(
                        item.key, False, None, f"no accepted presentation context for {sop_class} / {ts}"
                    )
                    continue
            except Exception as exc:
                results[item.key] = ItemResult(item.key, False, None, f"{type(exc).__name__}: {exc}"[:300])
                continue
            if status_ds is None or "Status" not in status_ds:
                results[item.key] = ItemResult(
                    item.key, False, None, "no C-STORE response (association aborted or timed out)"
                )
                continue
            status = int(status_ds.Status)
            results[item.key] = ItemResult(
                item.key, _is_ok(status), status, "" if _is_ok(status) else f"C-STORE status 0x{status:04X}"
            )
    finally:
        if assoc.is_established:
            assoc.release()
    return [results[i.key] for i in items]


def destination_holds(dest: ForwardDestination, files: dict[int, Path], *, calling_ae: str, timeout: float) -> set[int]:
    """Keys of ``files`` whose SOP Instance UID the destination already holds: a Study Root
    C-FIND at IMAGE level per file (Study, Series and SOP Instance UID as unique keys).

    Asked only for rows whose earlier sender died before recording the answer. Anything that
    goes wrong (no association, C-FIND not offered or refused, an unreadable file) counts as
    "not held": the row is sent again, which receivers tolerate."""
    from pydicom.dataset import Dataset
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind  # type: ignore[attr-defined]

    keys: dict[int, Dataset] = {}
    for key, path in files.items():
        try:
            header = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
            )
            query = Dataset()
            query.QueryRetrieveLevel = "IMAGE"
            query.StudyInstanceUID = header.StudyInstanceUID
            query.SeriesInstanceUID = header.SeriesInstanceUID
            query.SOPInstanceUID = header.SOPInstanceUID
            keys[key] = query
        except Exception:  # unreadable here: sent again, and send_batch reports why
            continue
    if not keys:
        return set()
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    try:
        assoc = ae.associate(
            dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=[NODELAY_HANDLER], tls_args=client_tls_args(dest)
        )
    except Exception:
        return set()
    if not assoc.is_established:
        return set()
    keep_responses_for_caller(assoc)
    held: set[int] = set()
    try:
        for key, query in keys.items():
            for status, identifier in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                if not assoc.is_established or status is None or "Status" not in status:
                    break
                if (
                    int(status.Status) in (0xFF00, 0xFF01)
                    and identifier is not None
                    and str(identifier.get("SOPInstanceUID", "")) == str(query.SOPInstanceUID)
                ):
                    held.add(key)
    except Exception:  # e.g. C-FIND refused: not held
        pass
    finally:
        if assoc.is_established:
            assoc.release()
    return held


__all__ = ["ItemResult", "SendItem", "destination_holds", "send_batch"]
