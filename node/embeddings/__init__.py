"""Kept image embeddings (DESIGN rule 8): every image the worker embeds is stored, keyed by
SOP Instance UID, model weights SHA-256 and preprocessing version, with the header facts that
subgroup analysis needs. Evaluation, tuning and prompt changes read these instead of running
the vision tower again.
"""

from node.embeddings.facts import HeaderFacts, header_facts
from node.embeddings.store import (
    StoredEmbedding,
    existing_sop_uids,
    get_embeddings,
    keep_batch_embeddings,
    put_embeddings,
)

__all__ = [
    "HeaderFacts",
    "StoredEmbedding",
    "existing_sop_uids",
    "get_embeddings",
    "header_facts",
    "keep_batch_embeddings",
    "put_embeddings",
]
