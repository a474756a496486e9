"""Put and get kept embeddings: SQLAlchemy on SQLite and PostgreSQL alike.

A vector is stored as little-endian float32 bytes. float16 would halve the table, but the
issue allows it only where scores move by < 1e-4; float32 makes that question moot (the
model's own output is float32 on CPU and bfloat16-rounded float32 on CUDA, so nothing is lost).

Writes are idempotent: the key (SOP Instance UID, weights SHA-256, preprocessing version) is
unique and a second put of the same key is ignored (``ON CONFLICT DO NOTHING``), so a backfill
killed half way and started again, or a re-triage of the same study, never duplicates a row.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.db.engine import Database
from node.db.models import ImageEmbedding
from node.embeddings.facts import HeaderFacts, header_facts
from node.oplog import get_logger

__all__ = [
    "StoredEmbedding",
    "existing_sop_uids",
    "get_embeddings",
    "keep_batch_embeddings",
    "put_embeddings",
    "study_embeddings",
]

log = get_logger("embeddings")
_CHUNK = 500  # UIDs per IN (...) query: well below SQLite's variable limit
_DTYPE = np.dtype("<f4")


@dataclass(frozen=True)
class StoredEmbedding:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    vector: np.ndarray  # (dim,) float32
    facts: HeaderFacts


def _row(
    ds: Dataset, vector: np.ndarray, weights_sha256: str, preprocessing_version: str, now: datetime
) -> dict[str, Any]:
    facts = header_facts(ds)
    v = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(-1), dtype=_DTYPE)
    return {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
        "series_instance_uid": str(ds.get("SeriesInstanceUID", "") or ""),
        "weights_sha256": weights_sha256,
        "preprocessing_version": preprocessing_version,
        "dim": int(v.size),
        "vector": v.tobytes(),
        "created_at": now,
        "patient_sex": facts.sex,
        "patient_age_years": facts.age_years,
        "manufacturer": facts.manufacturer,
        "manufacturer_model": facts.manufacturer_model,
        "station_name": facts.station_name,
        "institution_name": facts.institution_name,
        "modality": facts.modality,
        "view_position": facts.view_position,
        "body_part": facts.body_part,
    }


def put_embeddings(
    db: Database,
    images: Sequence[Dataset],
    vectors: np.ndarray | Any,
    *,
    weights_sha256: str,
    preprocessing_version: str,
) -> None:
    """Keep one vector per image (row i of ``vectors`` belongs to ``images[i]``); existing keys are left as they are."""
    arr = vectors.detach().float().cpu().numpy() if hasattr(vectors, "detach") else np.asarray(vectors, np.float32)
    if arr.ndim != 2 or arr.shape[0] != len(images):
        raise ValueError(f"{len(images)} images but vectors of shape {arr.shape}")
    if not images:
        return
    now = datetime.now(UTC)
    rows = [_row(ds, arr[i], weights_sha256, preprocessing_version, now) for i, ds in enumerate(images)]
    insert = pg_insert if db.engine.dialect.name == "postgresql" else sqlite_insert
    stmt = insert(ImageEmbedding).on_conflict_do_nothing(
        index_elements=["sop_instance_uid", "weights_sha256", "preprocessing_version"]
    )
    with db.write() as session:
        session.execute(stmt, rows)


def _decode(row: ImageEmbedding) -> StoredEmbedding:
    return StoredEmbedding(
        sop_instance_uid=row.sop_instance_uid,
        study_instance_uid=row.study_instance_uid,
        series_instance_uid=row.series_instance_uid,
        vector=np.frombuffer(row.vector, dtype=_DTYPE, count=row.dim).astype(np.float32),
        facts=HeaderFacts(
            sex=row.patient_sex,
            age_years=row.patient_age_years,
            manufacturer=row.manufacturer,
            manufacturer_model=row.manufacturer_model,
            station_name=row.station_name,
            institution_name=row.institution_name,
            modality=row.modality,
            view_position=row.view_position,
            body_part=row.body_part,
        ),
    )


def _chunks(items: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def get_embeddings(
    db: Database, sop_uids: Iterable[str], *, weights_sha256: str, preprocessing_version: str
) -> dict[str, StoredEmbedding]:
    """The kept embeddings of these images for these weights and preprocessing (absent ones are left out)."""
    uids = sorted(set(sop_uids))
    out: dict[str, StoredEmbedding] = {}
    with db.session() as session:
        for chunk in _chunks(uids):
            rows = session.execute(
                select(ImageEmbedding).where(
                    ImageEmbedding.weights_sha256 == weights_sha256,
                    ImageEmbedding.preprocessing_version == preprocessing_version,
                    ImageEmbedding.sop_instance_uid.in_(chunk),
                )
            ).scalars()
            for row in rows:
                out[row.sop_instance_uid] = _decode(row)
    return out


def study_embeddings(
    db: Database, *, weights_sha256: str, preprocessing_version: str, study_uids: Iterable[str] | None = None
) -> list[StoredEmbedding]:
    """Every kept embedding for these weights and preprocessing (optionally of some studies only)."""
    with db.session() as session:
        base = select(ImageEmbedding).where(
            ImageEmbedding.weights_sha256 == weights_sha256,
            ImageEmbedding.preprocessing_version == preprocessing_version,
        )
        if study_uids is None:
            return [_decode(r) for r in session.execute(base.order_by(ImageEmbedding.id)).scalars()]
        out: list[StoredEmbedding] = []
        for chunk in _chunks(sorted(set(study_uids))):
            out += [
                _decode(r) for r in session.execute(base.where(ImageEmbedding.study_instance_uid.in_(chunk))).scalars()
            ]
        return out


def existing_sop_uids(
    db: Database, sop_uids: Iterable[str], *, weights_sha256: str, preprocessing_version: str
) -> set[str]:
    """Which of these images already have an embedding for these weights and preprocessing."""
    uids = sorted(set(sop_uids))
    found: set[str] = set()
    with db.session() as session:
        for chunk in _chunks(uids):
            found.update(
                session.execute(
                    select(ImageEmbedding.sop_instance_uid).where(
                        ImageEmbedding.weights_sha256 == weights_sha256,
                        ImageEmbedding.preprocessing_version == preprocessing_version,
                        ImageEmbedding.sop_instance_uid.in_(chunk),
                    )
                ).scalars()
            )
    return found


def keep_batch_embeddings(db: Database, works: Sequence[Any], embeddings: Any, weights_sha256: str) -> None:
    """The worker's hook: keep the embeddings of one model call over several studies.

    ``works`` are the worker's per-study items in the order their images were stacked (each with
    ``images`` and ``profile``); row ``i`` of ``embeddings`` is the i-th image over all of them.
    Never raises: keeping embeddings must not cost a study its answer.
    """
    from node.triage.preprocess import preprocess_version

    try:
        start = 0
        for work in works:
            n = len(work.images)
            if n:
                put_embeddings(
                    db,
                    work.images,
                    embeddings[start : start + n],
                    weights_sha256=weights_sha256,
                    preprocessing_version=preprocess_version(work.profile.preprocessing),
                )
            start += n
    except Exception as exc:
        log.warning("embeddings_not_kept", error=type(exc).__name__, detail=str(exc)[:300])
