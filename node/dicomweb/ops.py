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
from node.db.states import OPEN_JOB_STATES
from node.dicomweb.context import ctx
from node.worklist.rows import worklist

public = APIRouter()  # no token
router = APIRouter()


def model_state(worker: Any) -> tuple[str, str]:
    """("loaded" | "not_loaded" | "disabled", detail) from what the triage worker exposes."""
    if worker is None:
        return "disabled", "triage disabled"
    if getattr(worker, "model", None) is not None:
        return "loaded", "loaded"
    return "not_loaded", f"not loaded ({getattr(worker, 'model_error', '') or 'unknown'})"


def update_gauges(c: Any) -> dict[str, Any]:
    """Refresh the gauges read at scrape time; returns the figures /healthz judges."""
    free = c.files.free_bytes()
    floor = c.settings.storage.min_free_bytes
    metrics.STORAGE_FREE_BYTES.set(free)
    metrics.STORAGE_FLOOR_BYTES.set(floor)
    state, detail = model_state(c.worker)
    for name in ("loaded", "not_loaded", "disabled"):
        metrics.MODEL_STATE.labels(name).set(1 if name == state else 0)
    active = c.listener.active_associations() if c.listener is not None else 0
    runner = getattr(c.worker, "runner", None)
    hung = runner.abandoned() if runner is not None else 0
    metrics.MODEL_CALLS_PAST_DEADLINE.set(hung)
    return {
        "hung_model_calls": hung,
        "free": free,
        "floor": floor,
        "model": state,
        "model_detail": detail,
        "active": active,
        "max_associations": c.settings.dicom.max_associations,
    }


@public.get("/healthz", summary="Liveness and readiness: database, storage, free space, DICOM slots, model")
def healthz(request: Request) -> Response:
    """200 "ok"; 200 "degraded" when the node receives but cannot triage (model not loaded, or
    stuck in calls past their deadline);
    503 "unhealthy" when it cannot receive: database or storage failing, free space below the
    floor (every C-STORE gets 0xA700), every association slot taken. Reasons are listed."""
    c = ctx(request)
    checks: dict[str, Any] = {}
    unhealthy: list[str] = []
    degraded: list[str] = []
    try:
        with c.db.session() as session:
            session.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
        unhealthy.append("database unreachable")
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
        unhealthy.append("storage not writable")
    figures = update_gauges(c)
    checks["free_bytes"], checks["min_free_bytes"] = figures["free"], figures["floor"]
    if figures["free"] < figures["floor"]:
        unhealthy.append("free disk space below storage.min_free_bytes: C-STORE answers 0xA700")
    checks["associations"] = {"active": figures["active"], "max": figures["max_associations"]}
    if figures["active"] >= figures["max_associations"]:
        unhealthy.append("every DICOM association slot is taken")
    checks["model"] = figures["model_detail"]
    if figures["model"] == "not_loaded":
        degraded.append(f"triage model {figures['model_detail']}: studies get no AI assessment")
    if c.worker is not None:
        checks["model_calls_past_deadline"] = figures["hung_model_calls"]
    if figures["hung_model_calls"]:
        # A loaded model that stopped answering (a stuck GPU) still reads "loaded": without this,
        # /healthz said ok while every study got no AI assessment (model-timeout).
        degraded.append(
            f"{figures['hung_model_calls']} model call(s) still running past model.timeout_seconds: "
            "studies get no AI assessment (model-timeout) while the model is stuck; restart the node if it stays"
        )
    worker = c.worker
    if worker is not None and getattr(worker, "profiles", None):
        from node.triage.calibration import calibration_states

        model = getattr(worker, "model", None)
        weights = model.identity.weights_sha256 if model is not None else None
        checks["calibration"] = {
            name: {"calibrated": state.calibrated, "statement": state.text}
            for name, state in calibration_states(worker.profiles, weights).items()
        }
    status = "unhealthy" if unhealthy else "degraded" if degraded else "ok"
    return JSONResponse(
        {"status": status, "reasons": unhealthy + degraded, "checks": checks}, status_code=503 if unhealthy else 200
    )


@router.get("/metrics", summary="Prometheus metrics")
def prometheus(request: Request) -> Response:
    try:
        with ctx(request).db.session() as session:
            depth = session.execute(select(func.count()).where(TriageJob.state.in_(OPEN_JOB_STATES))).scalar_one()
        metrics.QUEUE_DEPTH.set(depth)
        update_gauges(ctx(request))
    except Exception:
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
