"""UPS-RS (PS3.18 11): search and retrieve the triage workitems, change their state.

One workitem per triaged study. Datasets, matching and the state machine come from
node.worklist.ups (shared with the DIMSE UPS Pull SCP); this module maps them to HTTP:
PS3.4 CC statuses -> 200 (B3xx "already in that state" as 200 + Warning), 400 (bad or missing
state / Transaction UID), 404 (no such workitem), 409 (inconsistent with the current state).
The Transaction UID is never returned by search or retrieve.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydicom.datadict import keyword_for_tag, tag_for_keyword
from starlette.concurrency import run_in_threadpool

from node.audit import AuditObject, EventCode
from node.dicomweb.context import audit, ctx
from node.dicomweb.problems import Problem
from node.dicomweb.stow import read_body
from node.worklist import ups

router = APIRouter()
DICOM_JSON = "application/dicom+json"
MAX_LIMIT = 1000
HTTP_STATUS = {
    ups.SUCCESS: 200,
    ups.ALREADY_CANCELED: 200,
    ups.ALREADY_COMPLETED: 200,
    ups.INVALID_ARGUMENT: 400,
    ups.MISSING_ATTRIBUTE: 400,
    ups.ONLY_VIA_CREATE: 400,
    ups.NO_SUCH_INSTANCE: 404,
    ups.NOT_UPDATABLE: 409,
    ups.WRONG_TRANSACTION: 409,
    ups.ALREADY_IN_PROGRESS: 409,
    ups.NOT_IN_PROGRESS: 409,
}


def _keyword(name: str) -> str:
    if len(name) == 8:
        try:
            return keyword_for_tag(int(name, 16)) or ""
        except ValueError:
            pass
    return name if tag_for_keyword(name) is not None else ""


MAX_QUERY_INT = 2**31 - 1


def _int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise Problem(400, "limit and offset must be integers") from None
    if not 0 <= number <= MAX_QUERY_INT:
        raise Problem(400, f"limit and offset must be between 0 and {MAX_QUERY_INT}")
    return number


def _search(request: Request) -> list[dict[str, Any]]:
    criteria: dict[str, Any] = {}
    limit, offset = MAX_LIMIT, 0
    for name, value in request.query_params.multi_items():
        if name == "limit":
            limit = max(0, min(_int(value), MAX_LIMIT))
        elif name == "offset":
            offset = max(0, _int(value))
        elif name in ("includefield", "fuzzymatching"):
            continue
        else:
            kw = _keyword(name)
            if not kw:
                raise Problem(400, f"unknown query parameter {name!r}")
            if "," in value and kw in ("ProcedureStepState", "ScheduledProcedureStepPriority"):
                criteria[kw] = [v.strip() for v in value.split(",")]
            else:
                criteria[kw] = value
    items = ups.find_workitems(
        ctx(request).db, criteria, limit=offset + limit, retrieve_ae=ctx(request).settings.dicom.ae_title
    )[offset:]
    return [ds.to_json_dict() for ds in items]


@router.get("/workitems", summary="UPS-RS: search for workitems (HIGH before MEDIUM, oldest first)")
def search_workitems(request: Request) -> Response:
    items = _search(request)
    audit(
        request,
        EventCode.QUERY,
        desc=f"UPS-RS search: {len(items)} workitems",
        objects=[AuditObject(type="query", id="workitems", details={"query": str(request.query_params)})],
    )
    return JSONResponse(items, media_type=DICOM_JSON)


@router.get("/workitems/{uid}", summary="UPS-RS: retrieve a workitem")
def retrieve_workitem(request: Request, uid: str) -> Response:
    ds = ups.get_workitem(ctx(request).db, uid, retrieve_ae=ctx(request).settings.dicom.ae_title)
    if ds is None:
        raise Problem(404, "no such workitem")
    return JSONResponse([ds.to_json_dict()], media_type=DICOM_JSON)


def _value(payload: Any, tag: str) -> str:
    if isinstance(payload, list):
        payload = payload[0] if len(payload) == 1 else None
    if not isinstance(payload, dict):
        raise Problem(400, "the body must be a DICOM JSON data set (or an array of one)")
    element = payload.get(tag) or {}
    if not isinstance(element, dict):
        raise Problem(400, f"attribute {tag} must be a DICOM JSON element (an object)")
    values = element.get("Value") or []
    if not isinstance(values, list) or (values and not isinstance(values[0], str)):
        raise Problem(400, f"attribute {tag}: Value must be an array of strings")
    return values[0].strip() if values else ""


@router.put("/workitems/{uid}/state", summary="UPS-RS: change a workitem's state (claim, complete, cancel)")
async def put_state(request: Request, uid: str) -> Response:
    body = await read_body(request, 1024 * 1024)
    try:
        payload = json.loads(body or b"null")
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        raise Problem(400, "the body is not JSON (or is nested too deeply)") from None
    new_state = _value(payload, "00741000").upper()
    transaction_uid = _value(payload, "00081195")
    client = request.client.host if request.client else "unknown"
    by = f"UPS-RS client {client}"
    change = await run_in_threadpool(ups.change_state, ctx(request).db, uid, new_state, transaction_uid, by)
    status = HTTP_STATUS.get(change.status, 409)
    desc, objects = ups.audit_description(change, via="UPS-RS", requested=new_state, ups_uid=uid, by=by)
    await run_in_threadpool(
        audit, request, EventCode.APPLICATION_ACTIVITY, outcome=0 if change.ok else 4, desc=desc, objects=objects
    )
    if status != 200:
        raise Problem(status, change.message)
    headers = {}
    if change.status != ups.SUCCESS:
        headers["Warning"] = f'299 triage-node: "{change.message}"'
    return Response(status_code=200, headers=headers)
