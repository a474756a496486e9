"""One real node for the console tests, built once per session and shared by the HTTP and the
browser tests (what it holds: tests/support/console.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.support.console import SCREENSHOTS, SCRIPT_NAME, SCU, ConsoleNode, console_study, settings_for
from tests.support.nodes import NodeRunner
from tests.support.polling import wait_until


@pytest.fixture(scope="session")
def console_node(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[ConsoleNode]:
    from node.db.models import WorklistItem
    from node.dimse.scu import Destination, send

    root = tmp_path_factory.mktemp("console")
    with NodeRunner() as nodes:
        node = nodes.start(settings_for(root, tiny_model_dir))
        src = root / "src"
        src.mkdir()
        specs = {
            "stat": ("PA", "ALPHA^Stat", "STAT"),
            "script": ("LL", SCRIPT_NAME, None),
            "low": ("LL", "GAMMA^Low", "LOW"),
        }
        studies, names = {}, {}
        for label, (view, name, order) in specs.items():
            uid, path = console_study(src, label, view=view, name=name, order=order)
            results = send([path], Destination("TRIAGE_NODE", "127.0.0.1", node.listener.port), calling_ae=SCU)
            assert [r.status for r in results] == [0]
            studies[label], names[label] = uid, name

        def triaged() -> bool:
            with node.db.session() as session:
                return session.execute(select(func.count()).select_from(WorklistItem)).scalar_one() == len(specs)

        wait_until(triaged, 120, "the three studies on the worklist")
        cn = ConsoleNode(node, f"http://127.0.0.1:{node.http_port}", studies, names)
        wait_until(lambda: len(cn.dead_letters()) == len(specs), 60, "three dead letters (the PACS is not there)")
        yield cn


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
