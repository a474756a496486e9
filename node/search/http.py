"""`GET /search?text=...|like=SOP_UID&limit=...&modality=...`: the CLI's search over HTTP.

Mounted by node/dicomweb/app.py behind the same bearer token as DICOMweb. Text queries use the
worker's loaded model (503 while it is not loaded); the index is the node's (refreshed in the
background), or, for an app built without a node, one made on first use.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from node.dicomweb.context import ctx
from node.dicomweb.problems import Problem
from node.search.run import run_search
from node.search.service import SearchError, SearchIndexes

router = APIRouter()


def _indexes(request: Request) -> SearchIndexes:
    c = ctx(request)
    found = getattr(c, "search", None)
    if found is not None:
        return found
    state = request.app.state
    if getattr(state, "search_indexes", None) is None:
        state.search_indexes = SearchIndexes(c.db, c.settings.node.data_dir, c.settings.search, persist=False)
    return state.search_indexes


@router.get("/search", summary="Images most like a text or a stored image (cosine of MedSigLIP embeddings)")
def search(
    request: Request,
    text: str | None = Query(None),
    like: str | None = Query(None),
    limit: int = Query(20),
    modality: str | None = Query(None),
) -> JSONResponse:
    from node.embeddings.current import current_weights_sha256, profile_preprocessing_versions

    c = ctx(request)
    model = getattr(c.worker, "model", None)
    weights = model.identity.weights_sha256 if model is not None else current_weights_sha256(c.settings, c.db)
    try:
        results = run_search(
            _indexes(request),
            weights=weights,
            preprocessings=profile_preprocessing_versions(c.settings),
            text=text,
            like=like,
            limit=limit,
            max_limit=c.settings.search.max_limit,
            modality=modality,
            model=model,
        )
    except SearchError as exc:
        raise Problem(exc.status, str(exc)) from None
    return JSONResponse([r.as_dict() for r in results])
