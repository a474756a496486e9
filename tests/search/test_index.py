"""The search index beyond exact_max: FAISS IVF built incrementally, filtered, saved and rebuilt.

Small sizes with a tiny exact_max, so the FAISS path runs in a second; the latency and recall at
10k-1M vectors are bench/search.py's job (bench/RESULTS.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from node.config import SearchSection
from node.db.engine import Database
from node.embeddings.store import put_embeddings
from node.search.index import VectorIndex
from node.search.service import SearchIndexes

DIM = 48


def clustered(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).standard_normal((20, DIM))
    v = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, DIM))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_ivf_built_incrementally_finds_what_exact_search_finds(tmp_path: Path) -> None:
    data, mods = clustered(2000, 1), np.where(np.arange(2000) % 4 == 0, "CT", "DX")
    index = VectorIndex(DIM, exact_max=300, nprobe=8)
    for start in range(0, 2000, 250):  # incremental adds, as images are embedded
        index.add(np.arange(start, start + 250) + 1, data[start : start + 250], mods[start : start + 250])
    assert index.mode == "faiss-ivf" and len(index) == 2000 and index.needs_rebuild  # trained on 500 < 2000 / 4
    queries = clustered(50, 2)
    recall = []
    for q in queries:
        truth = set((np.argsort(-(data @ q))[:10] + 1).tolist())
        hits = index.search(q, 10)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
        for h in hits:  # IVF-Flat keeps the vectors: scores are exact cosines
            assert abs(h.score - float(data[h.id - 1] @ q)) < 1e-5
        recall.append(len(truth & {h.id for h in hits}) / 10)
    assert np.mean(recall) >= 0.9
    ct = index.search(queries[0], 10, modality="ct")
    assert ct and all(mods[h.id - 1] == "CT" for h in ct)
    assert index.search(queries[0], 10, modality="MR") == []

    index.save(tmp_path / "ix")
    again = VectorIndex.load(tmp_path / "ix", exact_max=300, nprobe=8)
    assert again is not None and again.watermark == 2000
    assert [h.id for h in again.search(queries[1], 10)] == [h.id for h in index.search(queries[1], 10)]
    (tmp_path / "ix" / "meta.npz").write_bytes(b"broken")
    assert VectorIndex.load(tmp_path / "ix", exact_max=300) is None  # unreadable: the owner rebuilds


def test_node_indexes_catch_up_persist_and_rebuild_when_missing(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    vectors = clustered(400, 3)

    def images(n: int) -> list[Dataset]:
        out = []
        for _ in range(n):
            ds = Dataset()
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = (
                generate_uid(),
                generate_uid(),
                generate_uid(),
            )
            ds.Modality = "DX"
            out.append(ds)
        return out

    first = images(300)
    put_embeddings(db, first, vectors[:300], weights_sha256="a" * 64, preprocessing_version="tn-pre-1")
    put_embeddings(db, images(5), vectors[:5], weights_sha256="b" * 64, preprocessing_version="tn-pre-1")
    cfg = SearchSection(exact_max=100, nprobe=16)
    space = ("a" * 64, "tn-pre-1")
    indexes = SearchIndexes(db, tmp_path, cfg)
    indexes.refresh([space])
    saved = tmp_path / "search" / f"{'a' * 16}-tn-pre-1" / "index.faiss"
    assert saved.is_file() and len(indexes.index(*space)) == 300  # the other weights' vectors are not in it
    more = images(100)
    put_embeddings(db, more, vectors[300:], weights_sha256="a" * 64, preprocessing_version="tn-pre-1")
    top = indexes.like(str(more[7].SOPInstanceUID), *space[:1], [space[1]], limit=3)
    assert top[0].sop_instance_uid == str(more[7].SOPInstanceUID) and abs(top[0].score - 1.0) < 1e-5
    indexes.save()

    reloaded = SearchIndexes(db, tmp_path, cfg)  # a restart: loaded from disk, nothing to catch up
    assert len(reloaded.index(*space)) == 400
    saved.unlink()
    rebuilt = SearchIndexes(db, tmp_path, cfg)  # a restart with the file gone: rebuilt from the database
    again = rebuilt.like(str(first[0].SOPInstanceUID), *space[:1], [space[1]], limit=1)
    assert again[0].sop_instance_uid == str(first[0].SOPInstanceUID)
    assert len(rebuilt.index(*space)) == 400
    db.dispose()
