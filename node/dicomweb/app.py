"""The node's HTTP application: DICOMweb under /dicomweb, operations at the root.

``create_app(node_or_parts)`` takes a node.service.Node (or a WebContext, or a dict of its
fields) so tests can build the app without a running node. HttpServer runs it with uvicorn in
a thread of the node process, on a socket bound before the thread starts (port 0 works; the
bound port is HttpServer.port).
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from node import __version__, console
from node.dicomweb import frames, ops, problems, qido, stow, ups_rs, wado
from node.dicomweb.auth import require_token
from node.dicomweb.context import WebContext
from node.oplog import get_logger

log = get_logger("http")
BASE = "/dicomweb"


def create_app(node_or_parts: Any) -> FastAPI:
    context = WebContext.of(node_or_parts)
    app = FastAPI(
        title="triage-node",
        version=__version__,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        description="DICOMweb (STOW-RS, QIDO-RS, WADO-RS, UPS-RS) and operations endpoints.",
    )
    app.state.ctx = context
    problems.install(app)
    auth = [Depends(require_token)]
    app.include_router(ops.public)
    app.include_router(ops.router, dependencies=auth)
    from node.search.http import router as search_router  # GET /search (issue 9)

    app.include_router(search_router, dependencies=auth, tags=["search"])
    for module, tag in (
        (stow, "STOW-RS"),
        (qido, "QIDO-RS"),
        (frames, "WADO-RS"),
        (wado, "WADO-RS"),
        (ups_rs, "UPS-RS"),
    ):
        app.include_router(module.router, prefix=BASE, dependencies=auth, tags=[tag])

    console.mount(app)  # the operator console under /ui/ (its own access rules: node/console/access.py)

    @app.get("/openapi.json", dependencies=auth, include_in_schema=False)
    def openapi() -> JSONResponse:
        if app.openapi_schema is None:
            app.openapi_schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
        return JSONResponse(app.openapi_schema)

    if context.settings.http.cors_origins:
        # A viewer served from another origin (OHIF) calls DICOMweb from the browser: the preflight
        # must pass without the token (browsers send none on OPTIONS), every other request still needs it.
        from fastapi.middleware.cors import CORSMiddleware

        origins = list(context.settings.http.cors_origins)
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_credentials="*" not in origins,
            allow_methods=["GET", "POST", "PUT", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Content-Type", "Content-Length", "Warning"],
            max_age=600,
        )
    if not context.settings.http.token:
        log.warning("http_without_token", detail="[http] token is not set: every endpoint is open")
    return app


class HttpServer:
    """uvicorn in a daemon thread; start() raises if the port cannot be bound."""

    def __init__(self, node_or_parts: Any) -> None:
        import uvicorn

        context = WebContext.of(node_or_parts)
        cfg = context.settings.http
        self.host = cfg.host
        self.sock = socket.socket(socket.AF_INET6 if ":" in cfg.host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((cfg.host, cfg.port))
        self.port: int = self.sock.getsockname()[1]
        # log_config=None: uvicorn keeps its hands off logging, its records reach our JSON handler
        self.server = uvicorn.Server(
            uvicorn.Config(create_app(context), log_level="warning", access_log=False, log_config=None, lifespan="off")
        )
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> None:
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the HTTP server did not start on {self.host}:{self.port}")
            time.sleep(0.02)
        log.info("http_listening", host=self.host, port=self.port)

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.sock.close()
        except OSError:
            pass
