"""Stage 1 of the worker: prepare a batch. For each claimed job, read the study's headers from
storage, select the images of the first profile that accepts any, and preprocess them at the
model's input size.

Why a stage of its own: what reaches the model (which images, how they were made) is decided
here and nowhere else, so the inference stage only sees pixels and the answer stage only
describes what happened. Without a model nothing is decoded (the answer will be "model not
loaded", and decoding pixels for it would only cost time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
from pydicom.dataset import Dataset

from node.db.engine import Database
from node.store.read import StoredFiles, study_headers
from node.triage.preprocess import PreprocessError, to_model_input
from node.triage.profiles import TriageProfile
from node.triage.select import select_images

__all__ = ["StudyWork", "prepare_study", "read_study_headers"]


@dataclass
class StudyWork:
    """One claimed job on its way through the batch: what the answer stage needs to describe it."""

    job_id: int
    study_uid: str
    queued_at: datetime
    headers: list[Dataset]  # every readable instance of the study (pixels deferred)
    profile: TriageProfile  # the profile that accepted an image; else the first configured one
    eligible: bool = False  # the profile accepted at least one image (preprocessed or not)
    images: list[Dataset] = field(default_factory=list)  # accepted and preprocessed, in model input order
    pixels: list[np.ndarray] = field(default_factory=list)  # one (S, S, 3) uint8 array per image
    preprocessing: list[str] = field(default_factory=list)  # one description per image of ``images``
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (SOP Instance UID, why)


def read_study_headers(db: Database, files: StoredFiles, study_uid: str) -> list[Dataset]:
    """The study's stored instances in reading order; pixel data stays on disk (deferred) until
    preprocessing asks for it. An unreadable file is logged and left out."""
    return study_headers(db, files, study_uid)


def prepare_study(
    job_id: int,
    study_uid: str,
    queued_at: datetime,
    headers: list[Dataset],
    profiles: Sequence[TriageProfile],
    image_size: int | None,
) -> StudyWork:
    """Select the images of the first profile that accepts any; with a model (``image_size``
    given), preprocess them at the model's own input size."""
    for profile in profiles:
        selection = select_images(headers, profile)
        if not selection.accepted:
            continue
        work = StudyWork(
            job_id,
            study_uid,
            queued_at,
            headers,
            profile,
            eligible=True,
            skipped=[(s.sop_instance_uid, s.reason) for s in selection.skipped],
        )
        if image_size is None:
            return work
        for ds in selection.accepted:
            try:
                pixels, record = to_model_input(ds, size=image_size, defaults=profile.preprocessing)
            except PreprocessError as exc:
                work.skipped.append((str(ds.SOPInstanceUID), f"preprocess: {exc}"[:120]))
                continue
            work.images.append(ds)
            work.pixels.append(pixels)
            work.preprocessing.append(record.describe())
        return work
    return StudyWork(job_id, study_uid, queued_at, headers, profiles[0])
