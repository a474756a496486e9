"""Our SCU for operators and tests: C-ECHO and C-STORE, with TCP_NODELAY and timeouts."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.dimse.scu_race import keep_responses_for_caller
from node.dimse.sockets import NODELAY_HANDLER

_DEST_RE = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>[^:]+):(?P<port>\d+)$")


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        m = _DEST_RE.match(text)
        if not m:
            raise ValueError(f"destination {text!r} is not AET@HOST:PORT")
        return cls(m["aet"], m["host"], int(m["port"]))


@dataclass(frozen=True)
class SendResult:
    path: str
    status: int | None  # None: no response (association lost)


def _ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.maximum_pdu_size = 0
    return ae


def refusal(assoc: object, dest: Destination, calling_ae: str) -> str:
    """Why an association was not established, in words a newcomer can act on.

    The A-ASSOCIATE-RJ's result source 1 (service user) diagnostics are PS3.8 Table 9-21:
    3 = calling AE title not recognised, 7 = called AE title not recognised; source 3
    (service provider, presentation) reason 2 = local limit exceeded.
    """
    where = f"{dest.ae_title}@{dest.host}:{dest.port}"
    primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
    if not getattr(assoc, "is_rejected", False) or primitive is None:
        return f"no association with {where}: no answer (is the node listening there?)"
    source, diagnostic = getattr(primitive, "result_source", None), getattr(primitive, "diagnostic", None)
    if source == 1 and diagnostic == 3:
        return (
            f"{where} refused the calling AE title {calling_ae!r}: it is not in that node's "
            f"dicom.allowed_peers. Pass --aet with an allowed title (the shipped config allows MODALITY1), "
            f"or add {calling_ae!r} to allowed_peers there."
        )
    if source == 1 and diagnostic == 7:
        return (
            f"{where} refused the called AE title {dest.ae_title!r}: that node has another AE title "
            "(dicom.ae_title); fix the AET part of --to."
        )
    if source == 3 and diagnostic == 2:
        return f"{where} refused the association: too many associations at once there (local limit exceeded)."
    return (
        f"{where} rejected the association (result {getattr(primitive, 'result', None)}, "
        f"source {source}, reason {diagnostic})."
    )


def echo(dest: Destination, calling_ae: str = "TRIAGE_SCU", timeout: float = 30) -> int | None:
    """C-ECHO status (None: no response). Raises ConnectionError saying why when not associated."""
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(Verification)
    assoc = keep_responses_for_caller(
        ae.associate(dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=[NODELAY_HANDLER])
    )
    if not assoc.is_established:
        raise ConnectionError(refusal(assoc, dest, calling_ae))
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status else None
    finally:
        assoc.release()


def expand_paths(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        files.extend(sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p])
    return files


def send(paths: list[Path], dest: Destination, calling_ae: str = "TRIAGE_SCU", timeout: float = 30) -> list[SendResult]:
    """C-STORE each file over one association, in its stored transfer syntax."""
    datasets = []
    contexts: dict[str, set[str]] = {}
    for path in paths:
        ds = pydicom.dcmread(path)
        datasets.append((path, ds))
        contexts.setdefault(str(ds.SOPClassUID), set()).add(str(ds.file_meta.TransferSyntaxUID))
    ae = _ae(calling_ae, timeout)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    if len(ae.requested_contexts) > 128:
        raise ValueError("more than 128 SOP class/transfer syntax combinations in one send")
    assoc = keep_responses_for_caller(
        ae.associate(dest.host, dest.port, ae_title=dest.ae_title, evt_handlers=[NODELAY_HANDLER])
    )
    if not assoc.is_established:
        raise ConnectionError(refusal(assoc, dest, calling_ae))
    results = []
    try:
        for path, ds in datasets:
            status = assoc.send_c_store(ds)
            results.append(SendResult(str(path), int(status.Status) if status and "Status" in status else None))
    finally:
        if assoc.is_established:
            assoc.release()
    return results
