"""Bearer token on every endpoint but /healthz ([http] token; None = open, warned at start)."""

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
        raise Problem(401, "a valid bearer token is required", headers={"WWW-Authenticate": 'Bearer realm="triage-node"'})
