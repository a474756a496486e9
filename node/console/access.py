"""Who is looking: the access rules of every console page and action.

- ``[http] token`` set: every page needs a logged-in session (else a redirect to the login
  page, or 401 for images and downloads); actions need the session's CSRF token too.
- no token set: anyone may read, nobody may act (there is nothing to log in with), and patient
  identifiers are hidden, because no page shows them to a session that has not logged in.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request

from node.console.sessions import COOKIE_NAME, ConsoleSession, SessionStore
from node.dicomweb.context import ctx


@dataclass(frozen=True)
class Viewer:
    token_required: bool
    session: ConsoleSession | None

    @property
    def logged_in(self) -> bool:
        return self.session is not None

    @property
    def read_only(self) -> bool:
        """No token configured: the console shows, it never changes anything."""
        return not self.token_required

    @property
    def can_act(self) -> bool:
        return self.token_required and self.session is not None

    @property
    def shows_identifiers(self) -> bool:
        return self.session is not None


class LoginRequired(Exception):
    """A page asked for without a session while a token is set (answered with a redirect)."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class NotAllowed(Exception):
    """A resource or action refused: (status, message) answered as a small HTML page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def store(request: Request) -> SessionStore:
    return request.app.state.console_sessions


def current_viewer(request: Request) -> Viewer:
    token = ctx(request).settings.http.token
    session = store(request).get(request.cookies.get(COOKIE_NAME)) if token else None
    return Viewer(token_required=bool(token), session=session)


def page_viewer(request: Request) -> Viewer:
    """Dependency of every page: a session when a token is set, else a redirect to the login page."""
    viewer = current_viewer(request)
    if viewer.token_required and not viewer.logged_in:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise LoginRequired(target)
    return viewer


def resource_viewer(request: Request) -> Viewer:
    """Dependency of images and downloads: 401 instead of a redirect."""
    viewer = current_viewer(request)
    if viewer.token_required and not viewer.logged_in:
        raise NotAllowed(401, "log in to the console first")
    return viewer


def check_action(viewer: Viewer, csrf: str | None) -> ConsoleSession:
    """Every state-changing POST: a token is configured, the session is valid, the CSRF token matches."""
    if viewer.read_only:
        raise NotAllowed(403, "the console is read-only: no [http] token is set, so no action is allowed")
    if viewer.session is None:
        raise NotAllowed(401, "log in to the console first")
    if not viewer.session.csrf_ok(csrf):
        raise NotAllowed(403, "the form's CSRF token is missing or wrong: reload the page and try again")
    return viewer.session


def login_location(next_path: str) -> str:
    return "/ui/login?next=" + quote(next_path, safe="/")


def safe_next(value: str | None) -> str:
    """Only a console path may follow a login (no open redirect to another site)."""
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/"
