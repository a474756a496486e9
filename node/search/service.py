"""The node's search indexes: one VectorIndex per embedding space (weights SHA-256 x preprocessing
version), kept up to date from the ``image_embedding`` table.

Incremental: each index remembers the largest row id it holds (its watermark) and ``refresh``
reads only the rows after it. The node refreshes on a schedule (APScheduler, ``[search]
refresh_seconds``) and before every query, so a query sees every image embedded before it. An
index beyond ``exact_max`` is saved under ``<data_dir>/search/`` and loaded at the next start;
a missing or unreadable file is rebuilt from the database.

Only the current weights are searched (node.embeddings.current): vectors of other weights live
in another space and never meet a query of these.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from node.config import SearchSection
from node.db.engine import Database
from node.db.models import ImageEmbedding
from node.oplog import get_logger
from node.search.index import VectorIndex

__all__ = ["SearchError", "SearchIndexes", "SearchResult"]

log = get_logger("search")
_CHUNK = 5000
_DTYPE = np.dtype("<f4")


class SearchError(ValueError):
    """A search that cannot be answered; one sentence for the user (CLI exit 2, HTTP 4xx)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class SearchResult:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    score: float

    def as_dict(self) -> dict[str, object]:
        return {
            "sop_instance_uid": self.sop_instance_uid,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "score": self.score,
        }


def _space_filter(weights: str, preprocessing: str):
    return (ImageEmbedding.weights_sha256 == weights, ImageEmbedding.preprocessing_version == preprocessing)


class SearchIndexes:
    """Thread-safe owner of the per-space indexes of one node (or one CLI run)."""

    def __init__(self, db: Database, data_dir: Path, cfg: SearchSection, *, persist: bool = True) -> None:
        self.db = db
        self.folder = Path(data_dir) / "search"
        self.cfg = cfg
        self.persist = persist
        self._indexes: dict[tuple[str, str], VectorIndex] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ building
    def _rows(self, weights: str, preprocessing: str, after: int) -> Iterator[tuple[np.ndarray, np.ndarray, list[str]]]:
        last = after
        while True:
            with self.db.session() as session:
                rows = session.execute(
                    select(ImageEmbedding.id, ImageEmbedding.vector, ImageEmbedding.dim, ImageEmbedding.modality)
                    .where(*_space_filter(weights, preprocessing), ImageEmbedding.id > last)
                    .order_by(ImageEmbedding.id)
                    .limit(_CHUNK)
                ).all()
            if not rows:
                return
            ids = np.array([r[0] for r in rows], dtype=np.int64)
            vectors = np.stack([np.frombuffer(r[1], dtype=_DTYPE, count=r[2]) for r in rows]).astype(np.float32)
            yield ids, vectors, [r[3] or "" for r in rows]
            last = int(ids[-1])

    def _folder(self, weights: str, preprocessing: str) -> Path:
        return self.folder / f"{weights[:16]}-{preprocessing}"

    def _build(self, weights: str, preprocessing: str) -> VectorIndex | None:
        with self.db.session() as session:
            total, dim = session.execute(
                select(func.count(), func.max(ImageEmbedding.dim)).where(*_space_filter(weights, preprocessing))
            ).one()
        if not total:
            return None
        index = VectorIndex.build(
            int(dim),
            int(total),
            lambda: self._rows(weights, preprocessing, 0),
            exact_max=self.cfg.exact_max,
            nprobe=self.cfg.nprobe,
        )
        log.info(
            "search_index_built", weights=weights[:12], preprocessing=preprocessing, vectors=len(index), mode=index.mode
        )
        if index.mode != "exact":
            self._dirty.add((weights, preprocessing))
        return index

    def index(self, weights: str, preprocessing: str) -> VectorIndex | None:
        """The space's index, loaded from disk or built from the database, then caught up."""
        key = (weights, preprocessing)
        with self._lock:
            index = self._indexes.get(key)
            if index is None:
                index = VectorIndex.load(self._folder(*key), exact_max=self.cfg.exact_max, nprobe=self.cfg.nprobe)
                if index is None:
                    index = self._build(*key)
                if index is None:
                    return None
                self._indexes[key] = index
            self._catch_up(key, index)
            return self._indexes[key]

    def _catch_up(self, key: tuple[str, str], index: VectorIndex) -> None:
        added = 0
        for ids, vectors, mods in self._rows(*key, index.watermark):
            if vectors.shape[1] != index.dim:
                continue  # another model size under the same hash cannot happen; never crash a query on it
            index.add(ids, vectors, mods)
            added += ids.size
        if added and index.mode != "exact":
            self._dirty.add(key)
        if index.needs_rebuild:  # IVF cells trained on far fewer vectors: retrain on all of them
            rebuilt = self._build(*key)
            if rebuilt is not None:
                self._indexes[key] = rebuilt

    def refresh(self, spaces: list[tuple[str, str]]) -> None:
        """Catch up (or build) these spaces and save the FAISS ones that changed (the scheduled job)."""
        for key in spaces:
            self.index(*key)
        self.save()

    def save(self) -> None:
        if not self.persist:
            return
        with self._lock:
            for key in list(self._dirty):
                index = self._indexes.get(key)
                if index is not None:
                    index.save(self._folder(*key))
                self._dirty.discard(key)

    # ------------------------------------------------------------------ queries
    def like(
        self, sop_uid: str, weights: str, preprocessings: list[str], *, limit: int, modality: str | None = None
    ) -> list[SearchResult]:
        """Images most like a stored image (its own embedding first: score 1.0)."""
        with self.db.session() as session:
            row = None
            for version in preprocessings:
                row = session.execute(
                    select(ImageEmbedding.vector, ImageEmbedding.dim).where(
                        *_space_filter(weights, version), ImageEmbedding.sop_instance_uid == sop_uid
                    )
                ).first()
                if row is not None:
                    break
        if row is None:
            raise SearchError(
                f"no embedding of SOP Instance UID {sop_uid} for the current model weights "
                f"({weights[:12]}); is it an image the triage profiles accept?",
                status=404,
            )
        query = np.frombuffer(row[0], dtype=_DTYPE, count=row[1]).astype(np.float32)
        return self.query(query, weights, [version], limit=limit, modality=modality)

    def query(
        self, vector: np.ndarray, weights: str, preprocessings: list[str], *, limit: int, modality: str | None = None
    ) -> list[SearchResult]:
        """Top ``limit`` images by cosine similarity with ``vector`` over these spaces."""
        best: dict[int, float] = {}
        for version in preprocessings:
            with self._lock:
                index = self.index(weights, version)
                if index is None:
                    continue
                if index.dim != np.asarray(vector).size:
                    raise SearchError(
                        f"query has {np.asarray(vector).size} dimensions, the stored embeddings {index.dim}"
                    )
                hits = index.search(vector, limit, modality=modality)
            for h in hits:
                best[h.id] = max(h.score, best.get(h.id, -2.0))
        if not best:
            return []
        with self.db.session() as session:
            rows = {
                r[0]: r[1:]
                for r in session.execute(
                    select(
                        ImageEmbedding.id,
                        ImageEmbedding.sop_instance_uid,
                        ImageEmbedding.study_instance_uid,
                        ImageEmbedding.series_instance_uid,
                    ).where(ImageEmbedding.id.in_(list(best)))
                )
            }
        seen: dict[str, SearchResult] = {}
        for i, score in sorted(best.items(), key=lambda kv: -kv[1]):
            if i in rows and rows[i][0] not in seen:  # one row per image, even across preprocessing versions
                seen[rows[i][0]] = SearchResult(rows[i][0], rows[i][1], rows[i][2], float(score))
        return list(seen.values())[:limit]
