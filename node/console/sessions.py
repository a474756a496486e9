"""Console sessions: the DICOMweb token entered once, then an HttpOnly, SameSite=Strict cookie.

Why a server-side session and not the token itself in the cookie: the cookie value is a fresh
random secret per login that the node can forget (logout, expiry, restart) without changing
the token every DICOMweb client uses. Each session also has a public id (``sid``), which the
audit log records for every action, and its own CSRF token for every form that changes state.
The secret cookie value is never written anywhere.

Sessions live in memory: a restart logs everyone out, which is the safe direction.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass, field

COOKIE_NAME = "triage_console"
COOKIE_PATH = "/ui"
IDLE_SECONDS = 8 * 3600  # a session unused this long is gone
MAX_AGE_SECONDS = 24 * 3600  # and none lives longer than this


@dataclass
class ConsoleSession:
    """One logged-in browser."""

    sid: str  # public: shown on the pages and written to the audit log
    csrf: str  # hidden field of every state-changing form
    client: str  # network address at login, for the audit log
    created: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given.encode(), self.csrf.encode())  # type: ignore[union-attr]


def token_matches(configured: str | None, given: str | None) -> bool:
    """Constant-time comparison of the entered token with ``[http] token``."""
    if not configured or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), configured.encode())


class SessionStore:
    """Thread-safe map of secret cookie value (hashed) -> session, with idle and absolute expiry."""

    def __init__(self, *, idle_seconds: float = IDLE_SECONDS, max_age_seconds: float = MAX_AGE_SECONDS) -> None:
        self.idle_seconds = idle_seconds
        self.max_age_seconds = max_age_seconds
        self._by_key: dict[str, ConsoleSession] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _key(secret: str) -> str:
        # Only a hash of the cookie value is kept, so a memory dump of the map alone opens nothing.
        return hashlib.sha256(secret.encode()).hexdigest()

    def create(self, client: str) -> tuple[str, ConsoleSession]:
        """A new session; returns (cookie value, session)."""
        secret = secrets.token_urlsafe(32)
        session = ConsoleSession(sid=secrets.token_hex(6), csrf=secrets.token_urlsafe(24), client=client)
        with self._lock:
            self._expire_locked(time.monotonic())
            self._by_key[self._key(secret)] = session
        return secret, session

    def get(self, secret: str | None) -> ConsoleSession | None:
        if not secret:
            return None
        now = time.monotonic()
        with self._lock:
            session = self._by_key.get(self._key(secret))
            if session is None:
                return None
            if now - session.last_seen > self.idle_seconds or now - session.created > self.max_age_seconds:
                del self._by_key[self._key(secret)]
                return None
            session.last_seen = now
            return session

    def drop(self, secret: str | None) -> None:
        if secret:
            with self._lock:
                self._by_key.pop(self._key(secret), None)

    def _expire_locked(self, now: float) -> None:
        for key in [
            k
            for k, s in self._by_key.items()
            if now - s.last_seen > self.idle_seconds or now - s.created > self.max_age_seconds
        ]:
            del self._by_key[key]
