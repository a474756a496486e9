"""Settings that scaling out depends on: roles are checked at start, and the SQLite sync level
is what the database really runs with."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_roles_are_checked_at_start(tmp_path: Path) -> None:
    from node.config import ConfigError, load_settings

    config = tmp_path / "node.toml"
    config.write_text('[node]\nroles = ["receive", "decode"]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"node\.roles"):
        load_settings(config, {})
    config.write_text("[node]\nroles = []\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="at least one role"):
        load_settings(config, {})
    settings = load_settings(config, {"TRIAGE_NODE__NODE__ROLES": '["receive", "http"]'})
    assert settings.node.roles == ("receive", "http")
    config.write_text("[triage]\nstale_job_seconds = 5\nheartbeat_seconds = 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="heartbeat_seconds must be shorter"):
        load_settings(config, {})


@pytest.mark.parametrize(("level", "pragma"), [("full", 2), ("normal", 1)])
def test_sqlite_synchronous_setting_reaches_the_database(tmp_path: Path, level: str, pragma: int) -> None:
    from sqlalchemy import text

    from node.db.engine import Database

    db = Database(f"sqlite:///{tmp_path / 'index.db'}", sqlite_synchronous=level)
    try:
        with db.engine.connect() as conn:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == pragma
    finally:
        db.dispose()


def test_a_receive_only_node_has_no_triage_worker_and_an_http_only_node_no_listener(make_settings, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from node.service import Node

    receive = Node(make_settings(tmp_path / "r", node={"roles": ["receive"]}, triage={"enabled": True}))
    http_only = Node(make_settings(tmp_path / "t", node={"roles": ["http"]}))
    try:
        assert receive.worker is None and receive.listener is not None
        assert http_only.listener is None
    finally:
        for n in (receive, http_only):
            n.audit.close()
            n.db.dispose()
