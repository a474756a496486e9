"""A cosine top-k index over L2-normalised image embeddings that stays fast as the archive grows.

Up to ``exact_max`` vectors it is an exact search: one float32 matrix-vector product in numpy
(bench/search.py: p95 well under 10 ms at 10k vectors of 1152 dims on two cores). Beyond it the
vectors move into a FAISS inverted-file index (``IndexIVFFlat``, inner product): ~sqrt(n) k-means
cells trained on a sample of the vectors held at that moment, ``nprobe`` cells visited per query. IVF-Flat keeps
the full vectors, so the scores it returns are the exact cosine of the images it finds; only
*which* images are found is approximate (recall@10 measured in bench/RESULTS.md).

Vectors are added incrementally (``add``); an IVF index trained on far fewer vectors than it
now holds has unbalanced cells, so ``needs_rebuild`` turns true once it holds ``rebuild_factor``
times its training size and the owner rebuilds it from the database (in the background).

Ids are the ``image_embedding`` row ids (int64). A per-row modality code allows the
``--modality`` filter: exact search masks rows; IVF search passes a FAISS id selector.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import faiss  # imported where used: only the node's HTTP role needs it

__all__ = ["Hit", "VectorIndex", "ivf_nlist", "ivf_nprobe"]

_FORMAT = 1


@dataclass(frozen=True)
class Hit:
    id: int
    score: float


def ivf_nlist(n: int) -> int:
    """Cells for n vectors: ~sqrt(n), at least 16 and at most n / 39 (k-means wants >= 39 training
    points per centroid). Fewer, larger cells than the usual 4 sqrt(n) keep k-means training and
    assignment affordable on two cores at 1M x 1152 (bench/search.py)."""
    return int(max(16, min(math.sqrt(max(n, 1)), max(16, n // 39))))


def ivf_nprobe(nlist: int) -> int:
    """Cells visited per query: 1/32 of the cells, at least 16 (recall@10 >= 0.95 in bench/search.py)."""
    return int(min(nlist, max(16, nlist // 32)))


TRAIN_PER_CELL = 64  # k-means training points per cell (FAISS's own cap is 256; 64 is plenty for IVF)


def _normalised(vectors: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if v.ndim == 1:
        v = v[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray(v / norms, dtype=np.float32)


class VectorIndex:
    """Exact below ``exact_max`` vectors, FAISS IVF-Flat above; not thread-safe (callers lock)."""

    def __init__(
        self, dim: int, *, exact_max: int = 20_000, nprobe: int | None = None, rebuild_factor: float = 4.0
    ) -> None:
        self.dim = int(dim)
        self.exact_max = int(exact_max)
        self.nprobe_override = nprobe
        self.rebuild_factor = float(rebuild_factor)
        self._ids = np.empty(0, dtype=np.int64)
        self._mods = np.empty(0, dtype="<U16")
        self._matrix = np.empty((0, self.dim), dtype=np.float32)  # exact mode only (capacity >= len)
        self._faiss: faiss.IndexIVFFlat | None = None  # once beyond exact_max
        self.trained_on = 0
        self.watermark = 0  # the largest image_embedding id added (catch-up starts after it)

    # ------------------------------------------------------------------ state
    def __len__(self) -> int:
        return int(self._ids.size)

    @property
    def mode(self) -> str:
        return "exact" if self._faiss is None else "faiss-ivf"

    @property
    def needs_rebuild(self) -> bool:
        return self._faiss is not None and len(self) >= self.rebuild_factor * max(self.trained_on, 1)

    # ------------------------------------------------------------------ add
    def add(self, ids: np.ndarray, vectors: np.ndarray, modalities: Sequence[str] | np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size == 0:
            return
        v = _normalised(vectors)
        if v.shape != (ids.size, self.dim):
            raise ValueError(f"{ids.size} ids but vectors of shape {v.shape} (index dim {self.dim})")
        mods = np.asarray(modalities, dtype="<U16")
        n_old = len(self)
        self._ids = np.concatenate([self._ids, ids])
        self._mods = np.concatenate([self._mods, mods])
        self.watermark = max(self.watermark, int(ids.max()))
        if self._faiss is not None:
            self._faiss.add_with_ids(v, ids)
            return
        if self._matrix.shape[0] < len(self):  # grow by doubling: amortised O(1) per add
            grown = np.empty((max(len(self), 2 * self._matrix.shape[0], 1024), self.dim), dtype=np.float32)
            grown[:n_old] = self._matrix[:n_old]
            self._matrix = grown
        self._matrix[n_old : len(self)] = v
        if len(self) > self.exact_max:
            self._to_faiss()

    def _new_ivf(self, sample: np.ndarray, total: int) -> faiss.IndexIVFFlat:
        import faiss

        nlist = ivf_nlist(total)
        quantizer = faiss.IndexFlatIP(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 5  # quiet: ivf_nlist already keeps >= 39 points per cell
        index.cp.max_points_per_centroid = TRAIN_PER_CELL
        index.cp.niter = 10
        index.train(np.ascontiguousarray(sample, dtype=np.float32))
        index.nprobe = self.nprobe_override or ivf_nprobe(nlist)
        return index

    def _to_faiss(self) -> None:
        data = self._matrix[: len(self)]
        nlist = ivf_nlist(len(self))
        rng = np.random.default_rng(0)
        want = TRAIN_PER_CELL * nlist
        sample = data if len(data) <= want else data[rng.choice(len(data), want, replace=False)]
        index = self._new_ivf(sample, len(self))
        index.add_with_ids(data, self._ids)
        self._faiss = index
        self.trained_on = len(self)
        self._matrix = np.empty((0, self.dim), dtype=np.float32)

    @classmethod
    def build(
        cls,
        dim: int,
        total: int,
        chunks: Callable[[], Iterable[tuple[np.ndarray, np.ndarray, Sequence[str]]]],
        *,
        exact_max: int = 20_000,
        nprobe: int | None = None,
        rebuild_factor: float = 4.0,
    ) -> VectorIndex:
        """A fresh index over ``total`` vectors that ``chunks()`` yields as (ids, vectors, modalities).

        Beyond ``exact_max`` the vectors never sit in memory twice: a first pass keeps every s-th
        vector as the k-means training sample, a second pass streams the rest into FAISS.
        """
        out = cls(dim, exact_max=exact_max, nprobe=nprobe, rebuild_factor=rebuild_factor)
        if total <= exact_max:
            for ids, vectors, mods in chunks():
                out.add(ids, vectors, mods)
            return out
        want = TRAIN_PER_CELL * ivf_nlist(total)
        stride = max(1, math.ceil(total / want))
        sample = [_normalised(v)[::stride] for _, v, _ in chunks()]
        index = out._new_ivf(np.concatenate(sample), total)
        seen = 0
        for ids, vectors, mods in chunks():
            ids = np.asarray(ids, dtype=np.int64)
            if ids.size == 0:
                continue
            index.add_with_ids(_normalised(vectors), ids)
            out._ids = np.concatenate([out._ids, ids])
            out._mods = np.concatenate([out._mods, np.asarray(mods, dtype="<U16")])
            out.watermark = max(out.watermark, int(ids.max()))
            seen += ids.size
        out._faiss, out.trained_on = index, seen
        return out

    # ------------------------------------------------------------------ search
    def search(self, query: np.ndarray, k: int, *, modality: str | None = None) -> list[Hit]:
        """The ``k`` most similar vectors to ``query`` (cosine), best first."""
        q = _normalised(query)
        if q.shape != (1, self.dim):
            raise ValueError(f"query of shape {q.shape}, index dim {self.dim}")
        if len(self) == 0 or k <= 0:
            return []
        mask = None
        if modality:
            mask = self._mods == modality.upper()
            if not mask.any():
                return []
        if self._faiss is None:
            scores = self._matrix[: len(self)] @ q[0]
            candidates = np.flatnonzero(mask) if mask is not None else None
            pool = scores if candidates is None else scores[candidates]
            k = min(k, pool.size)
            top = np.argpartition(-pool, k - 1)[:k]
            top = top[np.argsort(-pool[top], kind="stable")]
            rows = top if candidates is None else candidates[top]
            return [Hit(int(self._ids[r]), float(scores[r])) for r in rows]
        import faiss

        params = None
        if mask is not None:
            selector = faiss.IDSelectorBatch(self._ids[mask])
            # faiss's stubs lack the keywords its Python wrapper takes (which also keep `sel` referenced)
            params = faiss.SearchParametersIVF(sel=selector, nprobe=self._faiss.nprobe)  # type: ignore[call-arg]
        k = min(k, len(self))
        distances, labels = self._faiss.search(q, k, params=params) if params else self._faiss.search(q, k)
        return [Hit(int(i), float(d)) for d, i in zip(distances[0], labels[0]) if i >= 0]

    # ------------------------------------------------------------------ persistence (FAISS mode)
    def save(self, folder: Path) -> None:
        """Write the FAISS index and the id/modality arrays (atomically replaced); exact mode writes
        nothing: it is rebuilt from the database at start, which at <= exact_max rows takes seconds."""
        if self._faiss is None:
            return
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".index.{os.getpid()}.tmp"
        faiss.write_index(self._faiss, str(tmp))
        os.replace(tmp, folder / "index.faiss")
        tmp_meta = folder / f".meta.{os.getpid()}.npz"
        np.savez(tmp_meta, ids=self._ids, mods=self._mods)
        os.replace(tmp_meta, folder / "meta.npz")
        info = {
            "format": _FORMAT,
            "dim": self.dim,
            "watermark": self.watermark,
            "trained_on": self.trained_on,
            "count": len(self),
        }
        tmp_info = folder / f".info.{os.getpid()}.json"
        tmp_info.write_text(json.dumps(info), encoding="utf-8")
        os.replace(tmp_info, folder / "info.json")

    @classmethod
    def load(
        cls, folder: Path, *, exact_max: int, nprobe: int | None = None, rebuild_factor: float = 4.0
    ) -> VectorIndex | None:
        """The saved index, or None when it is missing, unreadable or inconsistent (then: rebuild)."""
        folder = Path(folder)
        try:
            import faiss

            info = json.loads((folder / "info.json").read_text(encoding="utf-8"))
            if info.get("format") != _FORMAT:
                return None
            index = faiss.read_index(str(folder / "index.faiss"))
            if not isinstance(index, faiss.IndexIVFFlat):  # save() writes only IVF-Flat
                return None
            with np.load(folder / "meta.npz") as meta:
                ids, mods = meta["ids"].astype(np.int64), meta["mods"].astype("<U16")
        except (OSError, ValueError, KeyError, RuntimeError):
            return None
        if index.ntotal != ids.size or ids.size != info.get("count") or index.d != info.get("dim"):
            return None
        out = cls(int(info["dim"]), exact_max=exact_max, nprobe=nprobe, rebuild_factor=rebuild_factor)
        out._faiss, out._ids, out._mods = index, ids, mods
        out.trained_on, out.watermark = int(info["trained_on"]), int(info["watermark"])
        if nprobe:
            index.nprobe = nprobe
        return out
