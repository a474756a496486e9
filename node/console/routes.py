"""The console's pages, resources and actions under /ui/ (access rules: node/console/access.py)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from node.console import actions, audit_read
from node.console.access import (
    LoginRequired,
    NotAllowed,
    Viewer,
    check_action,
    current_viewer,
    page_viewer,
    resource_viewer,
    safe_next,
    store,
)
from node.console.charts import bar_chart
from node.console.queries import PAGE_SIZE, WorklistFilter, queue_depths, worklist_page
from node.console.render import SECURITY_HEADERS, render
from node.console.samples import sampler
from node.console.sessions import COOKIE_NAME, COOKIE_PATH, token_matches
from node.console.study_view import model_size, profile_named, study_view
from node.dicomweb.context import WebContext, ctx
from node.forward.outbox import list_items
from node.store.read import instances_of_study

router = APIRouter(prefix="/ui", include_in_schema=False)

AUDIT_CODES = [
    ("110100", "Application Activity"),
    ("110104", "DICOM Instances Transferred"),
    ("110106", "Export"),
    ("110111", "Procedure Record"),
    ("110112", "Query"),
    ("110113", "Security Alert"),
    ("110114", "User Authentication"),
]
REFRESH_SECONDS = {"worklist": 30, "audit": 10, "outbox": 30, "health": 30}
#: Messages after an action (a fixed key in the redirect, never text taken from the request).
DONE = {
    "requeued": "Requeued {n} dead letter(s).",
    "retriage": "Re-triage queued (job {n}).",
    "cleared": "The AI's raise was cleared.",
    "not-cleared": "There was no AI raise to clear.",
    "nothing": "Nothing to requeue: no such dead letter.",
}


def _ctx(request: Request) -> WebContext:
    return ctx(request)


def _base(request: Request, viewer: Viewer, active: str, *, refresh: int | None = None) -> dict[str, Any]:
    done = request.query_params.get("done", "")
    n = request.query_params.get("n", "")
    message = DONE[done].format(n=int(n) if n.isdigit() else 0) if done in DONE else ""
    model = getattr(_ctx(request).worker, "model", None)
    return dict(
        viewer=viewer,
        active=active,
        refresh=refresh,
        message=message,
        ae_title=_ctx(request).settings.dicom.ae_title,
        test_model=bool(model is not None and model.identity.is_test_model),
    )


def _page(
    request: Request, viewer: Viewer, active: str, started: float, *, auto_refresh: bool = True, **context: Any
) -> Response:
    """A console page ``<active>.html`` in the shared frame (:func:`_base`), reloading itself every
    ``REFRESH_SECONDS[active]`` unless the operator turned auto-refresh off."""
    base = _base(request, viewer, active, refresh=REFRESH_SECONDS[active] if auto_refresh else None)
    return render(request, f"{active}.html", dict(base, auto_refresh=auto_refresh, **context), started=started)


def _see_other(path: str, **query: Any) -> RedirectResponse:
    q = {k: v for k, v in query.items() if v not in (None, "")}
    return RedirectResponse(path + (f"?{urlencode(q)}" if q else ""), status_code=303)


# ---------------------------------------------------------------------------- login
@router.get("/login")
def login_page(request: Request, next: str = "/ui/") -> Response:
    viewer = current_viewer(request)
    if viewer.logged_in:
        return _see_other(safe_next(next))
    return render(request, "login.html", dict(_base(request, viewer, "login"), next=safe_next(next), error=""))


@router.post("/login")
def login(request: Request, token: str = Form(""), next: str = Form("/ui/")) -> Response:
    c = _ctx(request)
    viewer = current_viewer(request)
    client = request.client.host if request.client else ""
    if viewer.read_only:
        return render(
            request,
            "login.html",
            dict(
                _base(request, viewer, "login"),
                next=safe_next(next),
                error="No [http] token is set: there is nothing to log in with.",
            ),
            status_code=400,
        )
    if not token_matches(c.settings.http.token, token):
        actions.audit_login(c.audit, ok=False, client=client)
        time.sleep(0.3)  # slows guessing a little; the audit log records each attempt
        return render(
            request,
            "login.html",
            dict(_base(request, viewer, "login"), next=safe_next(next), error="That token is not right."),
            status_code=401,
        )
    secret, session = store(request).create(client)
    actions.audit_login(c.audit, ok=True, client=client, sid=session.sid)
    response = _see_other(safe_next(next))
    response.set_cookie(
        COOKIE_NAME, secret, path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https"
    )
    return response


@router.post("/logout")
def logout(request: Request, csrf: str = Form(""), viewer: Viewer = Depends(page_viewer)) -> Response:
    session = check_action(viewer, csrf)
    store(request).drop(request.cookies.get(COOKIE_NAME))
    actions.audit_login(_ctx(request).audit, ok=True, client=session.client, sid=session.sid, logout=True)
    response = _see_other("/ui/login")
    response.delete_cookie(COOKIE_NAME, path=COOKIE_PATH, httponly=True, samesite="strict")
    return response


# ---------------------------------------------------------------------------- worklist
@router.get("/")
def worklist(
    request: Request,
    viewer: Viewer = Depends(page_viewer),
    priority: str = "",
    assist: str = "",
    profile: str = "",
    day: str = "",
    page: str = "1",
    refresh: str = "1",
) -> Response:
    started = time.perf_counter()
    f = WorklistFilter.parse(priority, assist, profile, day)
    result = worklist_page(_ctx(request).db, f, int(page) if page.isdigit() else 1)
    # The profiles the node runs (not a scan of every row): plus the one asked for, if another.
    result.profiles = sorted({*_ctx(request).settings.triage.profiles, *([f.profile] if f.profile else [])})
    query = f.as_query()
    auto = refresh != "0"
    return _page(
        request,
        viewer,
        "worklist",
        started,
        auto_refresh=auto,
        page=result,
        filters=f,
        query=query,
        page_size=PAGE_SIZE,
        page_link=lambda n: "/ui/?" + urlencode(dict(query, page=n, **({} if auto else {"refresh": "0"}))),
    )


# ---------------------------------------------------------------------------- study
@router.get("/study/{study_uid}")
def study(request: Request, study_uid: str, viewer: Viewer = Depends(page_viewer)) -> Response:
    started = time.perf_counter()
    view = study_view(
        _ctx(request), study_uid, request.app.state.console_renders, show_identifiers=viewer.shows_identifiers
    )
    if view is None:
        return render(
            request,
            "error.html",
            dict(
                _base(request, viewer, "worklist"),
                status=404,
                detail="No study with this Study Instance UID in the index.",
            ),
            status_code=404,
        )
    return render(request, "study.html", dict(_base(request, viewer, "worklist"), **view), started=started)


def _png(body: bytes) -> Response:
    return Response(
        body, media_type="image/png", headers=dict(SECURITY_HEADERS, **{"Cache-Control": "private, max-age=300"})
    )


def _image_path(request: Request, study_uid: str, sop_uid: str) -> Path:
    c = _ctx(request)
    found = instances_of_study(c.db, study_uid, sop_uids=[sop_uid])
    if not found:
        raise NotAllowed(404, "no such instance in this study")
    return c.files.path(found[0].path)


@router.get("/study/{study_uid}/image/{sop_uid}/model-input.png")
def model_input_png(
    request: Request,
    study_uid: str,
    sop_uid: str,
    size: int = 0,
    profile: str = "",
    viewer: Viewer = Depends(resource_viewer),
) -> Response:
    """The preprocessed square image the model saw (size from the SR via the study page's link)."""
    c = _ctx(request)
    path = _image_path(request, study_uid, sop_uid)
    chosen = size if 1 <= size <= 1024 else model_size(c)  # MedSigLIP sees 448; nothing needs more
    p = profile_named(c, profile) if profile else None
    try:
        rendered = request.app.state.console_renders.model_input(path, chosen, p.preprocessing if p else None)
    except Exception as exc:
        raise NotAllowed(422, f"cannot compute the model input: {type(exc).__name__}") from exc
    return _png(rendered.png)


@router.get("/study/{study_uid}/image/{sop_uid}/original.png")
def original_png(
    request: Request, study_uid: str, sop_uid: str, profile: str = "", viewer: Viewer = Depends(resource_viewer)
) -> Response:
    c = _ctx(request)
    path = _image_path(request, study_uid, sop_uid)
    p = profile_named(c, profile) if profile else None
    try:
        rendered = request.app.state.console_renders.original(path, p.preprocessing.multiframe if p else "middle")
    except Exception as exc:
        raise NotAllowed(422, f"cannot render the image: {type(exc).__name__}") from exc
    return _png(rendered.png)


@router.get("/study/{study_uid}/sr/{sop_uid}.dcm")
def download_sr(request: Request, study_uid: str, sop_uid: str, viewer: Viewer = Depends(resource_viewer)) -> Response:
    """The stored SR file as received by a PACS (it names the patient: only for a logged-in session)."""
    if not viewer.shows_identifiers:
        raise NotAllowed(403, "the SR names the patient: downloads need a logged-in session (set [http] token)")
    path = _image_path(request, study_uid, sop_uid)
    return FileResponse(
        path,
        media_type="application/dicom",
        filename=f"{sop_uid}.dcm",
        headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


@router.post("/study/{study_uid}/retriage")
def retriage(request: Request, study_uid: str, csrf: str = Form(""), viewer: Viewer = Depends(page_viewer)) -> Response:
    session = check_action(viewer, csrf)
    c = _ctx(request)
    if c.audit is None:
        raise NotAllowed(503, "no audit log: actions are refused")
    job = actions.queue_retriage(c.db, c.audit, session, study_uid)
    if job is None:
        raise NotAllowed(404, "no such study")
    return _see_other(f"/ui/study/{study_uid}", done="retriage", n=job)


@router.post("/study/{study_uid}/clear")
def clear(
    request: Request,
    study_uid: str,
    csrf: str = Form(""),
    reason: str = Form(""),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    session = check_action(viewer, csrf)
    c = _ctx(request)
    if c.audit is None:
        raise NotAllowed(503, "no audit log: actions are refused")
    if not reason.strip():
        raise NotAllowed(400, "clearing a flag needs a reason")
    cleared = actions.clear_flag(c.db, c.audit, session, study_uid, reason.strip()[:500])
    if cleared is None:
        raise NotAllowed(404, "the study has no worklist entry")
    return _see_other(f"/ui/study/{study_uid}", done="cleared" if cleared.changed else "not-cleared")


# ---------------------------------------------------------------------------- outbox
@router.get("/outbox")
def outbox(request: Request, viewer: Viewer = Depends(page_viewer)) -> Response:
    started = time.perf_counter()
    items = list_items(_ctx(request).db)
    by_destination: dict[str, dict[str, Any]] = {}
    for dest in _ctx(request).settings.forward:
        key = f"{dest.ae_title}@{dest.host}:{dest.port}"
        by_destination[key] = {"destination": key, "pending": 0, "retrying": 0, "dead": 0, "items": []}
    for item in items:
        state = "retrying" if item["state"] == "pending" and item["attempts"] else item["state"]
        d = by_destination.setdefault(
            item["destination"],
            {"destination": item["destination"], "pending": 0, "retrying": 0, "dead": 0, "items": []},
        )
        d[state] += 1
        if len(d["items"]) < 500:
            d["items"].append(dict(item, shown_state=state))
    return _page(
        request,
        viewer,
        "outbox",
        started,
        destinations=list(by_destination.values()),
        total=len(items),
    )


@router.post("/outbox/requeue")
def outbox_requeue(
    request: Request,
    csrf: str = Form(""),
    item_id: str = Form(""),
    destination: str = Form(""),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    session = check_action(viewer, csrf)
    c = _ctx(request)
    if c.audit is None:
        raise NotAllowed(503, "no audit log: actions are refused")
    one = int(item_id) if item_id.strip().isdigit() else None
    done = actions.requeue_dead(c.db, c.audit, session, item_id=one, destination=destination.strip())
    if one is not None and not done:
        return _see_other("/ui/outbox", done="nothing")
    return _see_other("/ui/outbox", done="requeued", n=len(done))


# ---------------------------------------------------------------------------- audit
@router.get("/audit")
def audit(
    request: Request,
    viewer: Viewer = Depends(page_viewer),
    code: str = "",
    outcome: str = "",
    limit: str = "200",
    refresh: str = "1",
) -> Response:
    started = time.perf_counter()
    c = _ctx(request)
    code = code if code in {k for k, _ in AUDIT_CODES} else ""
    outcome = outcome if outcome in ("success", "failure") else ""
    n = min(max(int(limit), 1), 2000) if limit.isdigit() else 200
    path = Path(c.settings.audit.path)
    entries = audit_read.tail(path, limit=n, code=code, outcome=outcome)
    if not viewer.shows_identifiers:
        entries = [audit_read.redact(e) for e in entries]
    chain = request.app.state.console_chain.get(path, c.db)
    auto = refresh != "0"
    return _page(
        request,
        viewer,
        "audit",
        started,
        auto_refresh=auto,
        entries=entries,
        chain=chain,
        codes=AUDIT_CODES,
        code=code,
        outcome=outcome,
        limit=n,
        as_json=lambda v: json.dumps(v, sort_keys=True),
    )


# ---------------------------------------------------------------------------- health
def _health_checks(request: Request) -> tuple[int, dict[str, Any]]:
    """What GET /healthz answers, computed by the same function (node/dicomweb/ops.py)."""
    from node.dicomweb import ops

    response = ops.healthz(request)
    return response.status_code, json.loads(bytes(response.body))


@router.get("/health")
def health(request: Request, viewer: Viewer = Depends(page_viewer)) -> Response:
    started = time.perf_counter()
    c = _ctx(request)
    status_code, checks = _health_checks(request)
    model = getattr(c.worker, "model", None)
    identity = getattr(model, "identity", None)
    storage = Path(c.settings.storage.path)
    try:
        usage = shutil.disk_usage(storage)
        disk: dict[str, object] = dict(
            free=usage.free,
            total=usage.total,
            floor=c.settings.storage.min_free_bytes,
            below_floor=usage.free < c.settings.storage.min_free_bytes,
        )
    except OSError as exc:
        disk = dict(error=f"{type(exc).__name__}: {exc}")
    points = sampler().last_hour()
    charts = [
        bar_chart(
            "Ingest (instances stored, incl. the node's own SRs)", "instances/min", points, lambda p: p.ingest_per_min
        ),
        bar_chart("Triage (studies answered)", "studies/min", points, lambda p: p.triage_per_min),
        bar_chart("Triage latency (queued to SR stored, mean)", "s", points, lambda p: p.latency_s),
    ]
    return _page(
        request,
        viewer,
        "health",
        started,
        status_code=status_code,
        checks=checks,
        identity=identity,
        triage_enabled=c.worker is not None,
        model_error=getattr(c.worker, "model_error", "") if c.worker is not None else "",
        profiles=[(p.name, p.version) for p in getattr(c.worker, "profiles", None) or []],
        depths=queue_depths(c.db),
        disk=disk,
        charts=charts,
    )


def install_handlers(app: Any) -> None:
    """Answers for refusals: a redirect to the login page, or a small HTML error page."""
    from node.console.access import login_location

    @app.exception_handler(LoginRequired)
    async def _login(_: Request, exc: LoginRequired) -> Response:
        return RedirectResponse(login_location(exc.next_path), status_code=303, headers={"Cache-Control": "no-store"})

    @app.exception_handler(NotAllowed)
    async def _refused(request: Request, exc: NotAllowed) -> Response:
        viewer = current_viewer(request)
        return render(
            request,
            "error.html",
            dict(_base(request, viewer, ""), status=exc.status, detail=exc.message),
            status_code=exc.status,
        )
