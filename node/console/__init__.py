"""The operator console: server-rendered pages under /ui/ on the node's own HTTP server.

Worklist, study detail (the SR read back, the model's input images, skipped images, audit
events, forwarding), outbox (requeue), audit tail (chain status) and health (model, queues,
rates and latency of the last hour, disk). Jinja2 templates and static files live in this
package; there is no JavaScript and no build step. Access rules: node/console/access.py.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

from node.console.audit_read import ChainStatus
from node.console.images import RenderCache
from node.console.sessions import SessionStore

STATIC = Path(__file__).parent / "static"


def mount(app: FastAPI) -> None:
    """Add the console to the node's FastAPI app (its WebContext is ``app.state.ctx``)."""
    from node.console.routes import install_handlers, router
    from node.console.samples import sampler

    app.state.console_sessions = SessionStore()
    app.state.console_renders = RenderCache()
    app.state.console_chain = ChainStatus()
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
    app.include_router(router)
    install_handlers(app)
    sampler()  # the health page's last hour starts now, not at its first view

    @app.get("/ui", include_in_schema=False)
    def _ui() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)


def console_url(host: str, port: int) -> str:
    """The URL to print for people: a wildcard bind address is reached as 127.0.0.1."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/ui/"


__all__ = ["console_url", "mount"]
