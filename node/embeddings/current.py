"""Which embedding space is "current": the configured model's weights SHA-256 and the
preprocessing versions of the configured profiles.

Search, probes and drift compare only vectors of one space; vectors of older weights stay in the
store (for evaluation) but are never mixed in. The weights hash is computed from the configured
checkpoint without loading the model (cached in ``<data_dir>/cache``, so this is a stat() call
after the first time); when the checkpoint is not on this machine the newest kept embedding's
weights are taken, which are the weights the worker last ran with.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from node.config import Settings
from node.db.engine import Database
from node.db.models import ImageEmbedding
from node.triage.profiles import ProfileError, load_profiles

__all__ = ["configured_weights_sha256", "current_weights_sha256", "profile_preprocessing_versions"]


def configured_weights_sha256(settings: Settings) -> str | None:
    """The SHA-256 of the configured checkpoint's weights, or None when it is not on this machine."""
    from node.triage.weights import _hub_snapshot, weights_sha256

    m = settings.model
    folder = Path(m.path) if m.path else _hub_snapshot(m.id, m.revision)
    if folder is None:
        return None
    try:
        return weights_sha256(folder, Path(settings.node.data_dir) / "cache")
    except (FileNotFoundError, OSError):
        return None


def current_weights_sha256(settings: Settings, db: Database) -> str | None:
    """The configured weights, else those of the newest kept embedding, else None (nothing kept)."""
    sha = configured_weights_sha256(settings)
    if sha:
        return sha
    with db.session() as session:
        return session.execute(
            select(ImageEmbedding.weights_sha256).order_by(ImageEmbedding.id.desc()).limit(1)
        ).scalar_one_or_none()


def profile_preprocessing_versions(settings: Settings) -> list[str]:
    """The preprocessing versions the configured profiles use, in profile order, without repeats."""
    try:
        available = load_profiles(settings.triage.profiles_path)
    except ProfileError:
        return []
    out: list[str] = []
    for name in settings.triage.profiles:
        if name in available and available[name].preprocessing.method not in out:
            out.append(available[name].preprocessing.method)
    return out
