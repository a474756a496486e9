"""The console in a real browser: Debian's headless Chromium driven by Playwright (one browser for
the module). Login, refusal without it, the worklist order, a study page whose model-input
thumbnails really load, a requeue that changes the outbox, and no console error on any page.
Each page is saved as a screenshot under build/console-screenshots/.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.console import SCRIPT_NAME, TOKEN, ConsoleNode
from tests.support.polling import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
RANK = {"HIGH": 0, "MEDIUM": 1, "LOW": 2}


@pytest.fixture(scope="module")
def browser(require_tools) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    require_tools("chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright's own browser download is not used: the system Chromium (apt-get install chromium)
        b = p.chromium.launch(executable_path=CHROMIUM)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    """A fresh browser context (no cookie) whose console errors, page errors and dialogs are collected."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    problems: list[str] = []
    pg.on("console", lambda msg: problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))

    def dialog(d: Any) -> None:
        problems.append(f"dialog: {d.message}")
        d.dismiss()

    pg.on("dialog", dialog)
    pg.problems = problems  # type: ignore[attr-defined]
    try:
        yield pg
    finally:
        context.close()
    assert problems == [], problems


def _login(page: Any, base: str, next_path: str = "/ui/") -> None:
    page.goto(base + next_path)
    assert "/ui/login" in page.url  # refused: sent to the login page
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(base + next_path)


def test_refusal_then_login_then_worklist_in_order(page: Any, console_node: ConsoleNode, screenshots: Path) -> None:
    cn = console_node
    page.goto(cn.base + "/ui/")
    assert "/ui/login?next=" in page.url
    body = page.inner_text("body")
    assert "ALPHA" not in body and "Mallory" not in body and "PID-" not in body
    page.screenshot(path=str(screenshots / "login.png"))
    page.fill("input[name=token]", "not-the-token")
    page.click("button[type=submit]")
    assert "That token is not right" in page.inner_text("body")
    # The refused login answers 401, which Chromium logs as a failed resource: expected here, and
    # the only entry allowed; every other page of this test must log nothing.
    assert page.problems == [
        "console error: Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    page.problems.clear()
    page.fill("input[name=token]", TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(cn.base + "/ui/")
    rows = page.locator("#worklist tbody tr[data-priority]")
    priorities = [rows.nth(i).get_attribute("data-priority") for i in range(rows.count())]
    assert len(priorities) >= 3
    assert [RANK[p] for p in priorities] == sorted(RANK[p] for p in priorities)  # most urgent first
    studies = [rows.nth(i).get_attribute("data-study") for i in range(rows.count())]
    assert priorities[studies.index(cn.studies["stat"])] == "HIGH"
    assert priorities[studies.index(cn.studies["low"])] == "LOW"
    # the <script> in a PatientName is shown as text and never ran (a dialog would be a problem)
    assert "<script>alert('pwned')</script>" in page.inner_text("#worklist")
    page.screenshot(path=str(screenshots / "worklist.png"), full_page=True)


def test_study_page_shows_the_model_input_thumbnails(page: Any, console_node: ConsoleNode, screenshots: Path) -> None:
    cn = console_node
    _login(page, cn.base, f"/ui/study/{cn.studies['stat']}")
    thumbs = page.locator("img.model-input")
    assert thumbs.count() >= 1
    originals = page.locator("img.original")
    for locator in (thumbs, originals):
        for i in range(locator.count()):
            img = locator.nth(i)
            img.scroll_into_view_if_needed()
            wait_until(lambda: img.evaluate("e => e.complete && e.naturalWidth > 0"), 30, "a thumbnail to load")
    # the model input is the model's own square size (the tiny test model: 64 x 64)
    assert thumbs.nth(0).evaluate("e => [e.naturalWidth, e.naturalHeight]") == [64, 64]
    assert "matches the preprocessing the SR recorded" in page.inner_text("body")
    assert "RANDOM TEST MODEL" in page.inner_text("body")
    page.screenshot(path=str(screenshots / "study.png"), full_page=True)
    # a study with skipped images lists them with the reason, and the escaped name
    page.goto(cn.base + f"/ui/study/{cn.studies['script']}")
    assert page.locator("tr.skipped").count() >= 1
    assert SCRIPT_NAME.split("^")[0] in page.inner_text("#patient-name")


def test_requeue_changes_the_outbox(page: Any, console_node: ConsoleNode, screenshots: Path) -> None:
    from node.db.models import OutboxItem

    cn = console_node
    wait_until(cn.dead_letters, 30, "a dead letter")
    _login(page, cn.base, "/ui/outbox")
    dead = page.locator("tr[data-state=dead]")
    assert dead.count() >= 1
    page.screenshot(path=str(screenshots / "outbox.png"), full_page=True)
    target = int(dead.first.get_attribute("data-id"))
    clicked = datetime.now(UTC).replace(microsecond=0)
    dead.first.locator("button.requeue-one").click()
    page.wait_for_url("**/ui/outbox?done=requeued&n=1")
    assert "Requeued 1 dead letter" in page.inner_text("[role=status]")
    with cn.db.session() as session:
        item = session.get(OutboxItem, target)
        created = item.created_at if item.created_at.tzinfo else item.created_at.replace(tzinfo=UTC)
    assert created >= clicked  # requeued by the click: pending again, with a fresh max-age window


def test_audit_and_health_pages(page: Any, console_node: ConsoleNode, screenshots: Path) -> None:
    cn = console_node
    _login(page, cn.base, "/ui/audit")
    assert "Chain intact" in page.inner_text("#chain")
    assert page.locator("table.audit tbody tr").count() >= 5
    page.screenshot(path=str(screenshots / "audit.png"))
    page.select_option("select[name=code]", "110114")
    page.click("form.filters button[type=submit]")
    page.wait_for_url("**/ui/audit?code=110114*")
    events = page.locator("table.audit tbody tr").all_inner_texts()
    assert events and all("110114" in e for e in events)
    page.goto(cn.base + "/ui/health")
    assert "Loaded" in page.inner_text("#model")
    checks = page.inner_text("#checks")
    assert "of 8 in use" in checks and "model calls past deadline" in checks and "{" not in checks, checks
    assert page.locator("figure.chart svg").count() == 3
    # the studies stored by the fixture show as ingest in the last hour (one chart bar or more)
    assert page.locator("figure.chart").first.locator("rect.bar").count() >= 1
    assert "free of" in page.inner_text("#disk")
    page.screenshot(path=str(screenshots / "health.png"), full_page=True)
