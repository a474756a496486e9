"""`triage-node embed`: compute the missing embeddings of stored studies (after an upgrade, a
model change or a new preprocessing version), batched across studies, resumable after kill -9
(each batch is committed; what is kept is never embedded again for the same weights and
preprocessing version).

Each study is embedded for the first configured profile that accepts one of its images -- the
profile the worker would triage it with -- with that profile's preprocessing (or ``--preprocessing``).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from node.config import Settings
from node.db.engine import Database
from node.embeddings.compute import EmbedOutcome, all_study_uids, embed_missing, with_preprocessing
from node.store.read import StoredFiles, study_headers
from node.triage.model import LoadedModel, ModelUnavailable, load_model
from node.triage.profiles import PREPROCESSING_METHODS, ProfileError, TriageProfile, load_profiles
from node.triage.select import select_images

__all__ = ["BackfillError", "BackfillSummary", "backfill"]


class BackfillError(RuntimeError):
    """The backfill cannot run; one sentence for the user (exit 2)."""


@dataclass
class BackfillSummary:
    studies: int = 0
    studies_without_eligible_image: int = 0
    embedded: int = 0
    already: int = 0
    failed: int = 0


def backfill(
    settings: Settings,
    *,
    study_uids: Sequence[str] = (),
    all_studies: bool = False,
    preprocessing: str | None = None,
    progress: bool = True,
    model_loader: Callable[..., LoadedModel] = load_model,
) -> BackfillSummary:
    from tqdm import tqdm

    if not study_uids and not all_studies:
        raise BackfillError("name studies with --study UID, or pass --all")
    if preprocessing is not None and preprocessing not in PREPROCESSING_METHODS:
        raise BackfillError(
            f"--preprocessing: unknown version {preprocessing} (have: {', '.join(PREPROCESSING_METHODS)})"
        )
    try:
        available = load_profiles(settings.triage.profiles_path)
    except ProfileError as exc:
        raise BackfillError(str(exc)) from None
    profiles: list[TriageProfile] = [available[n] for n in settings.triage.profiles if n in available]
    if preprocessing is not None:
        profiles = [with_preprocessing(p, preprocessing) for p in profiles]
    db = Database(settings.database.url)
    try:
        try:
            model = model_loader(settings.model, cache_dir=Path(settings.node.data_dir) / "cache")
        except ModelUnavailable as exc:
            raise BackfillError(f"cannot load the model: {exc}") from None
        uids = list(study_uids) if study_uids else all_study_uids(db)
        summary = BackfillSummary(studies=len(uids))
        by_profile: dict[str, list] = {p.name: [] for p in profiles}
        files = StoredFiles(settings.storage.path)
        for uid in tqdm(uids, desc="reading headers", unit="study", file=sys.stderr, disable=not progress, leave=False):
            headers = study_headers(db, files, uid)
            for profile in profiles:
                accepted = select_images(headers, profile).accepted
                if accepted:
                    by_profile[profile.name].extend(accepted)
                    break
            else:
                summary.studies_without_eligible_image += 1
        for profile in profiles:
            images = by_profile[profile.name]
            if not images:
                continue
            outcome: EmbedOutcome = embed_missing(
                db,
                model,
                profile,
                images,
                batch_size=model.batch_size,
                progress=progress,
                desc=f"embedding for {profile.name}",
            )
            summary.embedded += outcome.embedded
            summary.already += outcome.already
            summary.failed += len(outcome.failed)
        return summary
    finally:
        db.dispose()
