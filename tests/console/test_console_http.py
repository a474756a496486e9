"""The console over real HTTP (the node's uvicorn server, httpx): access rules, cookie, CSRF,
escaping, actions and their audit events, the read-only mode without a token, `demo --keep`.
"""

from __future__ import annotations

import contextlib
import html
import io
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from tests.support.console import TOKEN, ConsoleNode
from tests.support.polling import wait_until

PAGES = ["/ui/", "/ui/outbox", "/ui/audit", "/ui/health"]


@contextlib.contextmanager
def _login(base: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base, timeout=30) as client:
        r = client.post("/ui/login", data={"token": TOKEN, "next": "/ui/"})
        assert r.status_code == 303 and r.headers["location"] == "/ui/"
        yield client


def _csrf(page_html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page_html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def _sid(page_html: str) -> str:
    match = re.search(r'id="session-id">([0-9a-f]+)<', page_html)
    assert match, "the page does not show the session id"
    return match.group(1)


def test_every_page_and_action_refuses_without_a_session(console_node: ConsoleNode) -> None:
    cn = console_node
    study = cn.studies["stat"]
    dead_before = [d.id for d in cn.dead_letters()]
    with httpx.Client(base_url=cn.base, timeout=30) as anon:
        for path in [*PAGES, f"/ui/study/{study}"]:
            r = anon.get(path)
            assert r.status_code == 303, path
            assert r.headers["location"].startswith("/ui/login?next="), path
        for path in [f"/ui/study/{study}/image/1.2.3/model-input.png", f"/ui/study/{study}/sr/1.2.3.dcm"]:
            assert anon.get(path).status_code == 401, path
        for path, data in [
            ("/ui/outbox/requeue", {"csrf": "x"}),
            (f"/ui/study/{study}/retriage", {"csrf": "x"}),
            (f"/ui/study/{study}/clear", {"csrf": "x", "reason": "r"}),
        ]:
            r = anon.post(path, data=data)
            assert r.status_code in (303, 401), path
            assert r.status_code == 401 or r.headers["location"].startswith("/ui/login"), path
        login = anon.get("/ui/login")
        assert login.status_code == 200 and 'name="token"' in login.text
        # nothing a patient can be recognised by, on any answer to a session that has not logged in
        for name in cn.names.values():
            family = name.split("^")[0]
            assert family not in login.text
    assert [d.id for d in cn.dead_letters()] == dead_before  # no action ran


def test_login_sets_a_strict_httponly_cookie_and_a_wrong_token_is_refused_and_audited(
    console_node: ConsoleNode,
) -> None:
    cn = console_node
    with httpx.Client(base_url=cn.base, timeout=30) as client:
        bad = client.post("/ui/login", data={"token": "wrong", "next": "/ui/"})
        assert bad.status_code == 401 and "not right" in bad.text
        assert "set-cookie" not in bad.headers
        good = client.post("/ui/login", data={"token": TOKEN, "next": "https://evil.example/"})
        assert good.status_code == 303 and good.headers["location"] == "/ui/"  # no open redirect
        cookie = good.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/ui" in cookie
        page = client.get("/ui/")
        assert page.status_code == 200
        assert "Content-Security-Policy" in page.headers and "script-src" not in page.headers["content-security-policy"]
        assert page.headers["cache-control"] == "no-store"
        assert re.match(r"app;dur=\d+(\.\d+)?", page.headers["server-timing"])
    logins = [e for e in cn.audit_lines() if e["event_id"]["code"] == "110114"]
    assert any(e["outcome"] != 0 for e in logins), "the failed login is not in the audit log"
    assert any(e["outcome"] == 0 and e["participants"][0]["user_id"].startswith("console-session:") for e in logins)


def test_dicom_strings_are_escaped(console_node: ConsoleNode) -> None:
    cn = console_node
    with _login(cn.base) as client:
        for path in ["/ui/", f"/ui/study/{cn.studies['script']}"]:
            text = client.get(path).text
            assert "<script" not in text.lower(), path  # the page itself has no script, and none got in
            assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in text, path


def test_worklist_lists_most_urgent_first_and_filters(console_node: ConsoleNode) -> None:
    cn = console_node
    with _login(cn.base) as client:
        text = client.get("/ui/").text
        order = re.findall(r'<tr data-priority="(HIGH|MEDIUM|LOW)" data-study="([0-9.]+)"', text)
        ranks = [{"HIGH": 0, "MEDIUM": 1, "LOW": 2}[p] for p, _ in order]
        assert ranks == sorted(ranks) and len(order) >= 3
        by_study = {uid: p for p, uid in order}
        assert by_study[cn.studies["stat"]] == "HIGH" and by_study[cn.studies["low"]] == "LOW"
        low_only = client.get("/ui/", params={"priority": "LOW"}).text
        assert re.findall(r'data-study="([0-9.]+)"', low_only) == [cn.studies["low"]]
        no_assist = client.get("/ui/", params={"assist": "no"}).text
        assert cn.studies["script"] in no_assist and "no image in this study matches the triage profile" in no_assist


def test_csrf_is_required_and_requeue_changes_the_outbox_with_an_audit_event(console_node: ConsoleNode) -> None:
    cn = console_node
    with _login(cn.base) as client:
        page = client.get("/ui/outbox").text
        csrf, sid = _csrf(page), _sid(page)
        target = cn.dead_letters()[0].id
        refused = client.post("/ui/outbox/requeue", data={"item_id": str(target), "csrf": "forged"})
        assert refused.status_code == 403
        assert target in [d.id for d in cn.dead_letters()]
        clicked = datetime.now(UTC)
        done = client.post("/ui/outbox/requeue", data={"item_id": str(target), "csrf": csrf})
        assert done.status_code == 303 and "done=requeued" in done.headers["location"]
        assert "Requeued 1 dead letter" in client.get(done.headers["location"]).text
    from node.db.models import OutboxItem

    with cn.db.session() as session:
        item = session.get(OutboxItem, target)
        created = item.created_at if item.created_at.tzinfo else item.created_at.replace(tzinfo=UTC)
    assert created >= clicked.replace(microsecond=0)  # requeued: a fresh max-age window from the click
    events = [e for e in cn.audit_lines() if "outbox requeue from the console" in e["outcome_desc"]]
    assert events and events[-1]["participants"][0]["user_id"] == f"console-session:{sid}"
    assert target in events[-1]["objects"][0]["details"]["requeued"]


def test_retriage_writes_a_new_sr_naming_its_predecessor(console_node: ConsoleNode) -> None:
    from dicom_sr import read_predecessor
    from node.db.models import WorklistItem

    cn = console_node
    study = cn.studies["low"]
    with cn.db.session() as session:
        before = session.execute(
            select(WorklistItem.sr_sop_instance_uid).where(WorklistItem.study_instance_uid == study)
        ).scalar_one()
    with _login(cn.base) as client:
        page = client.get(f"/ui/study/{study}").text
        r = client.post(f"/ui/study/{study}/retriage", data={"csrf": _csrf(page)})
        assert r.status_code == 303 and "done=retriage" in r.headers["location"]

        def new_sr() -> str | None:
            text = client.get(f"/ui/study/{study}").text
            m = re.search(r"SR <code>([0-9.]+)</code>", text)
            return m.group(1) if m and m.group(1) != before else None

        current = wait_until(new_sr, 60, "the re-triage's SR on the study page")
        text = client.get(f"/ui/study/{study}").text
        assert f"supersedes <code>{before}</code>" in text
        sr = client.get(f"/ui/study/{study}/sr/{current}.dcm")
        assert sr.status_code == 200 and sr.headers["content-type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(sr.content))
    assert ds.SOPInstanceUID == current and read_predecessor(ds).sop_instance_uid == before
    assert any("re-triage requested from the console" in e["outcome_desc"] for e in cn.audit_lines())


def test_clearing_a_flag_needs_a_reason_and_is_audited(console_node: ConsoleNode) -> None:
    cn = console_node
    study = cn.studies["script"]
    with _login(cn.base) as client:
        page = client.get(f"/ui/study/{study}").text
        csrf, sid = _csrf(page), _sid(page)
        assert client.post(f"/ui/study/{study}/clear", data={"csrf": csrf, "reason": " "}).status_code == 400
        r = client.post(f"/ui/study/{study}/clear", data={"csrf": csrf, "reason": "checked by a radiologist"})
        assert r.status_code == 303 and "done=not-cleared" in r.headers["location"]  # this study was never raised
    event = [e for e in cn.audit_lines() if e["event_id"]["code"] == "110111"][-1]
    assert event["participants"][0]["user_id"] == f"console-session:{sid}"
    assert event["objects"][0]["details"]["reason"] == "checked by a radiologist"


def test_without_a_token_the_console_is_read_only_and_hides_identifiers(console_node: ConsoleNode) -> None:
    """The same node's data behind an app whose settings have no token."""
    from fastapi.testclient import TestClient

    from node.dicomweb.app import create_app
    from node.dicomweb.context import WebContext

    cn = console_node
    n = cn.node
    settings = n.settings.model_copy(update={"http": n.settings.http.model_copy(update={"token": None})})
    app = create_app(
        WebContext(settings=settings, db=n.db, files=n.files, ingestor=n.ingestor, audit=n.audit, worker=n.worker)
    )
    study = cn.studies["script"]
    with TestClient(app) as client:
        for path in [*PAGES, f"/ui/study/{study}", "/ui/login"]:
            r = client.get(path)
            assert r.status_code == 200, path
            assert "Read-only console" in r.text, path
            for name in cn.names.values():
                assert name.split("^")[0] not in r.text and html.escape(name.split("^")[0]) not in r.text, path
            assert "PID-" not in r.text, path
        assert client.post("/ui/outbox/requeue", data={"csrf": "x"}).status_code == 403
        assert client.post(f"/ui/study/{study}/retriage", data={"csrf": "x"}).status_code == 403
        sr_uid = re.search(r"SR <code>([0-9.]+)</code>", client.get(f"/ui/study/{study}").text).group(1)
        assert client.get(f"/ui/study/{study}/sr/{sr_uid}.dcm").status_code == 403


def test_worklist_marks_test_model_rows_without_a_loaded_model(console_node: ConsoleNode) -> None:
    """A process that holds no model (http role only, or before the model has loaded) still says
    which rows a random test model answered: the warning comes from the SRs, not the live model."""
    from fastapi.testclient import TestClient

    from node.dicomweb.app import create_app
    from node.dicomweb.context import WebContext

    n = console_node.node
    app = create_app(WebContext(settings=n.settings, db=n.db, files=n.files, ingestor=n.ingestor, audit=n.audit))
    with TestClient(app) as client:
        r = client.post("/ui/login", data={"token": TOKEN, "next": "/ui/"})
        assert r.status_code == 200, r.text  # followed the redirect to the worklist
        rows = re.findall(r'<tr data-priority="[A-Z]+" data-study="[0-9.]+">(.*?)</tr>', r.text, re.S)
        assert len(rows) >= 3
        assert "The loaded model is a RANDOM TEST MODEL" not in r.text  # this process holds no model ...
        assert "answered by a RANDOM TEST MODEL: their scores mean nothing" in r.text  # ... yet the page warns
        assert all('class="test-model"' in row for row in rows)  # every row here came from the tiny model


@pytest.mark.slow
def test_demo_keep_prints_the_console_url_and_serves_it(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("triage-node")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "node.cli"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_NODE__")}
    env.update(TMPDIR=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [*cmd, "demo", "--keep"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path
    )
    lines: list[str] = []
    found = threading.Event()
    url_token: list[tuple[str, str]] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"Operator console: (http://\S+/ui/)\s+\(log in with token (\S+)\)", line)
            if m:
                url_token.append((m.group(1), m.group(2)))
                found.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert found.wait(240), "".join(lines)[-3000:]
        url, token = url_token[0]
        with httpx.Client(timeout=30) as client:
            assert client.get(url).status_code == 303  # a token is set: log in first
            r = client.post(url + "login", data={"token": token, "next": "/ui/"}, follow_redirects=True)
            assert r.status_code == 200 and "RANDOM TEST MODEL" in r.text
            assert len(re.findall(r"<tr data-priority=", r.text)) == 4
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    reader.join(10)
    assert proc.returncode == 0, "".join(lines)[-3000:]
    assert "kept " in "".join(lines)
