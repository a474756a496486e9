"""What the HTTP side needs from a node: settings, database, files, ingestor, audit, worker."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request

from node.audit import AuditLog
from node.config import Settings
from node.db.engine import Database
from node.store.files import FileStore
from node.store.ingest import Ingestor


@dataclass
class WebContext:
    settings: Settings
    db: Database
    files: FileStore
    ingestor: Ingestor
    audit: AuditLog | None = None
    worker: Any = None  # node.triage.worker.TriageWorker or None
    listener: Any = None  # node.dimse.server.DicomListener or None (association gauges, /healthz)
    refusals: Any = None  # node.audit.refusals.RefusalLedger or None (HTTP 401s)
    search: Any = None  # node.search.service.SearchIndexes of the node, or None (made on first use)

    @classmethod
    def of(cls, node_or_parts: Any) -> WebContext:
        if isinstance(node_or_parts, WebContext):
            return node_or_parts
        if isinstance(node_or_parts, dict):
            return cls(**node_or_parts)
        n = node_or_parts
        return cls(
            settings=n.settings,
            db=n.db,
            files=n.files,
            ingestor=n.ingestor,
            audit=getattr(n, "audit", None),
            worker=getattr(n, "worker", None),
            listener=getattr(n, "listener", None),
            refusals=getattr(n, "refusals", None),
            search=getattr(n, "search", None),
        )


def ctx(request: Request) -> WebContext:
    return request.app.state.ctx


def base_url(request: Request) -> str:
    """Absolute URL of /dicomweb as the client addressed us (for RetrieveURL)."""
    return str(request.base_url).rstrip("/") + "/dicomweb"


def audit(
    request: Request,
    event: Any,
    *,
    outcome: int = 0,
    desc: str = "",
    objects: list[Any] | None = None,
    source: bool = True,
) -> None:
    """One audit event per request: the HTTP client is the requestor (source of STOW, or of the query)."""
    from node.audit import Participant

    log = ctx(request).audit
    if log is None:
        return
    client = request.client.host if request.client else ""
    me = ctx(request).settings.dicom.ae_title
    who = Participant(
        user_id="dicomweb-client", role="source" if source else "destination", is_requestor=True, network_address=client
    )
    node = Participant(user_id=me, role="destination" if source else "source")
    log.record(
        event,
        outcome=outcome,
        outcome_desc=desc,
        participants=[who, node],
        objects=objects or [],
        detail=f"{request.method} {request.url.path}",
    )
