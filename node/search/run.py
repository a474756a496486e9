"""One search as the CLI and `GET /search` run it: validate, pick the space, query, list.

The text query is embedded with the loaded model's ``embed_texts`` -- the very tokenisation
triage uses for its prompts (padded to 64 tokens) -- so a search for "pneumothorax" and a
prompt "pneumothorax" land on the same vector.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from node.search.service import SearchError, SearchIndexes, SearchResult

__all__ = ["MAX_TEXT_CHARS", "run_search", "text_query_vector"]

MAX_TEXT_CHARS = 1000


def text_query_vector(model: Any, text: str) -> np.ndarray:
    return model.embed_texts([text])[0].detach().float().cpu().numpy()


def run_search(
    indexes: SearchIndexes,
    *,
    weights: str | None,
    preprocessings: list[str],
    text: str | None = None,
    like: str | None = None,
    limit: int = 20,
    max_limit: int = 1000,
    modality: str | None = None,
    model: Any = None,
) -> list[SearchResult]:
    """``text`` or ``like`` (exactly one); ``model`` is needed for ``text``."""
    if (text is None) == (like is None):
        raise SearchError("give exactly one of text or like")
    if not 1 <= limit <= max_limit:
        raise SearchError(f"limit must be within 1..{max_limit}")
    if modality is not None and not (modality.strip() and len(modality) <= 16):
        raise SearchError("modality must be a DICOM modality code such as DX")
    modality = modality.strip().upper() if modality else None
    if not preprocessings:
        raise SearchError("no triage profile is configured, so there is no embedding space to search", status=409)
    if text is not None:
        if not text.strip() or len(text) > MAX_TEXT_CHARS:
            raise SearchError(f"text must be 1..{MAX_TEXT_CHARS} characters")
        if model is None:
            raise SearchError("the model is not loaded, so text cannot be embedded", status=503)
        weights = model.identity.weights_sha256
        return indexes.query(text_query_vector(model, text), weights, preprocessings, limit=limit, modality=modality)
    if not weights:
        raise SearchError("no embeddings are kept yet", status=404)
    uid = like.strip()  # type: ignore[union-attr]
    if not uid or len(uid) > 64 or not all(c.isdigit() or c == "." for c in uid):
        raise SearchError("like must be a SOP Instance UID")
    return indexes.like(uid, weights, preprocessings, limit=limit, modality=modality)
