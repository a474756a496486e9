"""Engine and sessions: SQLite in WAL mode by default, PostgreSQL for several hosts.

Why the pragmas: WAL lets readers (status, queries) run while an association writes;
synchronous=FULL makes each commit durable against power loss, which rule 1 needs because
the C-STORE response follows the commit; busy_timeout absorbs short writer overlaps.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def make_engine(url: str, echo: bool = False, sqlite_synchronous: str = "full") -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL" if sqlite_synchronous == "normal" else "PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True, pool_size=20, max_overflow=10)


def upgrade_schema(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (idempotent; run at every start)."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["connection_engine"] = engine
    with _MIGRATE_LOCK:
        if engine.dialect.name != "postgresql":
            command.upgrade(cfg, "head")
            return
        # Several processes (hosts) may start at once on one database: one migrates, the others
        # wait on a session advisory lock and then find the schema at head.
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": _MIGRATE_LOCK_KEY})
            try:
                command.upgrade(cfg, "head")
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": _MIGRATE_LOCK_KEY})
                conn.commit()


_MIGRATE_LOCK = threading.Lock()
_MIGRATE_LOCK_KEY = 0x7472_6961_6765  # "triage": the advisory lock that serialises migrations


class Database:
    """Engine + session factory + the writer lock SQLite needs across association threads."""

    def __init__(self, url: str, echo: bool = False, migrate: bool = True, sqlite_synchronous: str = "full") -> None:
        self.url = url
        self.engine = make_engine(url, echo, sqlite_synchronous)
        if migrate:
            upgrade_schema(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_sqlite = url.startswith("sqlite")
        # SQLite allows one writer; serialising in-process avoids busy-retry storms.
        self.write_lock: threading.Lock | _NullLock = threading.Lock() if self.is_sqlite else _NullLock()

    def session(self) -> Session:
        return self.sessions()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One write transaction: the writer lock (SQLite has one writer; a no-op on PostgreSQL),
        a session, and a transaction that commits when the block ends and rolls back when it
        raises. Every write of the node goes through here, so the lock is never forgotten."""
        with self.write_lock, self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


class _NullLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
