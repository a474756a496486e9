"""Compute the embeddings that are missing for some images: the one image pass that evaluation
and ``triage-node embed`` share with nothing but the worker's own functions (select,
preprocess, ``LoadedModel.embed_images``), so a kept vector is the vector the worker would use.

Resumable by construction: each batch is committed as soon as it is embedded, and what already
exists for (weights SHA-256, preprocessing version) is never embedded again; a run killed with
``kill -9`` loses at most the batch in flight.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy import select

from node.db.engine import Database
from node.db.models import Study
from node.embeddings.store import existing_sop_uids, put_embeddings
from node.triage.preprocess import PreprocessError, to_model_input
from node.triage.profiles import TriageProfile

__all__ = ["EmbedOutcome", "all_study_uids", "embed_missing", "with_preprocessing"]


def all_study_uids(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.execute(select(Study.study_instance_uid).order_by(Study.id)).scalars())


def with_preprocessing(profile: TriageProfile, version: str) -> TriageProfile:
    """The profile with another named preprocessing (for ``evaluate --preprocessing A,B``)."""
    return dataclasses.replace(profile, preprocessing=dataclasses.replace(profile.preprocessing, method=version))


@dataclass
class EmbedOutcome:
    embedded: int = 0  # images run through the vision tower now
    already: int = 0  # images that had an embedding for these weights and preprocessing
    failed: dict[str, str] = dataclasses.field(default_factory=dict)  # sop uid -> preprocessing error


def embed_missing(
    db: Database,
    model,
    profile: TriageProfile,
    images: Sequence[Dataset],
    *,
    batch_size: int = 32,
    progress: bool = True,
    desc: str = "embedding",
) -> EmbedOutcome:
    """Embed the ``images`` (accepted by ``profile``) that have no kept embedding yet for the model's
    weights and the profile's preprocessing version; commit after every batch."""
    from tqdm import tqdm

    version = profile.preprocessing.method
    weights = model.identity.weights_sha256
    have = existing_sop_uids(
        db, (str(ds.SOPInstanceUID) for ds in images), weights_sha256=weights, preprocessing_version=version
    )
    todo, seen = [], set()
    for ds in images:
        uid = str(ds.SOPInstanceUID)
        if uid not in have and uid not in seen:
            seen.add(uid)
            todo.append(ds)
    outcome = EmbedOutcome(already=len(have))
    bar = tqdm(
        total=len(todo),
        desc=f"{desc} ({version})",
        unit="image",
        file=sys.stderr,
        disable=not progress or not todo,
        leave=False,
    )
    try:
        for start in range(0, len(todo), batch_size):
            batch, pixels = [], []
            for ds in todo[start : start + batch_size]:
                try:
                    px, _ = to_model_input(ds, size=model.image_size, defaults=profile.preprocessing)
                except PreprocessError as exc:
                    outcome.failed[str(ds.SOPInstanceUID)] = f"preprocess: {exc}"[:120]
                    continue
                batch.append(ds)
                pixels.append(px)
            if batch:
                vectors = model.embed_images(np.stack(pixels))
                put_embeddings(db, batch, vectors, weights_sha256=weights, preprocessing_version=version)
                outcome.embedded += len(batch)
            bar.update(min(batch_size, len(todo) - start))
    finally:
        bar.close()
    return outcome
