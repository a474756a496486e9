"""Bearer token on every endpoint but /healthz ([http] token; None = open, warned at start).

A refused token is audited through the refusal ledger (aggregated per client)."""

from __future__ import annotations

import hmac

from fastapi import Request

from node.dicomweb.context import ctx
from node.dicomweb.problems import Problem


def require_token(request: Request) -> None:
    token = ctx(request).settings.http.token
    if not token:
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        refusals = ctx(request).refusals
        if refusals is not None:  # audited, aggregated per client (a token-guessing loop cannot flood the log)
            client = request.client.host if request.client else ""
            refusals.note(
                "http_401",
                client,
                f"{request.method} {request.url.path}: " + ("no bearer token" if not header else "wrong bearer token"),
                user="dicomweb-client",
            )
        raise Problem(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="triage-node"'}
        )
