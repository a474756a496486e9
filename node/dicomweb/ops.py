"""Operations: /healthz (no auth), /metrics (Prometheus text), /worklist (JSON for dashboards)."""

from __future__ import annotations

import os
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import func, select, text

from node import metrics
from node.db.models import TriageJob, WorklistItem
from node.dicomweb.context import ctx
from node.worklist import worklist

public = APIRouter()  # no token
router = APIRouter()


@public.get("/healthz", summary="Liveness and readiness: database, storage, model")
def healthz(request: Request) -> Response:
    c = ctx(request)
    checks: dict[str, Any] = {}
    try:
        with c.db.session() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:  # noqa: BLE001
        checks["database"] = f"error: {type(exc).__name__}"
    probe = c.files.incoming / f"healthz-{uuid.uuid4().hex}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"ok")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
        checks["storage"] = "ok"
    except OSError as exc:
        checks["storage"] = f"error: {type(exc).__name__}"
    worker = c.worker
    if worker is None:
        checks["model"] = "triage disabled"
    elif getattr(worker, "model", None) is not None:
        checks["model"] = "loaded"
    else:
        checks["model"] = f"not loaded ({getattr(worker, 'model_error', '') or 'unknown'})"
    if worker is not None and getattr(worker, "profiles", None):
        from node.triage.calibration import calibration_states

        model = getattr(worker, "model", None)
        weights = model.identity.weights_sha256 if model is not None else None
        checks["calibration"] = {name: {"calibrated": state.calibrated, "statement": state.text}
                                 for name, state in calibration_states(worker.profiles, weights).items()}
    healthy = checks["database"] == "ok" and checks["storage"] == "ok"
    return JSONResponse({"status": "ok" if healthy else "unhealthy", "checks": checks},
                        status_code=200 if healthy else 503)


@router.get("/metrics", summary="Prometheus metrics")
def prometheus(request: Request) -> Response:
    try:
        with ctx(request).db.session() as session:
            depth = session.execute(select(func.count()).where(
                TriageJob.state.in_(("queued", "running")))).scalar_one()
        metrics.QUEUE_DEPTH.set(depth)
    except Exception:  # noqa: BLE001 - the scrape must still answer
        pass
    return Response(generate_latest(metrics.REGISTRY), media_type=CONTENT_TYPE_LATEST)


@router.get("/worklist", summary="Triaged studies, most urgent first (JSON for dashboards)")
def worklist_json(request: Request) -> Response:
    rows = worklist(ctx(request).db)
    with ctx(request).db.session() as session:
        states = dict(session.execute(select(WorklistItem.study_instance_uid, WorklistItem.procedure_step_state)).all())
        ups = dict(session.execute(select(WorklistItem.study_instance_uid, WorklistItem.ups_sop_instance_uid)).all())
    for row in rows:
        row["procedure_step_state"] = states.get(row["study_instance_uid"], "")
        row["ups_sop_instance_uid"] = ups.get(row["study_instance_uid"], "")
    return JSONResponse(rows)
