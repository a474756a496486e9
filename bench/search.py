"""Search latency and recall at 10k, 100k and 1M stored image embeddings (node/search/index.py).

Vectors are synthetic, of MedSigLIP-448's real size (1152), float32, L2-normalised. They are
*clustered* (2,000 centres in a 128-dim subspace plus isotropic noise) because real image
embeddings lie near a low-dimensional manifold; uniformly random 1152-dim vectors have no
neighbours worth the name and would make any approximate index look worse than it is on images.
Queries come from the same distribution but are not in the index.

For each size the script reports, per method, p50/p95 latency of single queries (one query at
a time, as `GET /search` runs) and recall@10 against exact search:
  exact  -- numpy float32 matrix-vector product over all vectors (the peer: what the node does
            below [search] exact_max);
  ivf    -- the node's VectorIndex beyond exact_max: FAISS IndexIVFFlat, nlist ~ sqrt(n),
            nprobe = max(16, nlist / 32), built with VectorIndex.build (streamed, as at start).

    .venv/bin/python bench/search.py                      # 10k, 100k, 1M (needs ~10 GB RAM, ~15 min on 2 cores)
    .venv/bin/python bench/search.py --sizes 10000,100000 --queries 200
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from node.search.index import VectorIndex, ivf_nlist, ivf_nprobe

DIM = 1152
CHUNK = 50_000


class Synthetic:
    """Deterministic clustered unit vectors; chunk i is a pure function of (seed, i)."""

    def __init__(self, seed: int = 0, centres: int = 2000, latent: int = 128, noise: float = 0.6) -> None:
        rng = np.random.default_rng(seed)
        basis = np.linalg.qr(rng.standard_normal((DIM, latent)))[0].T  # (latent, DIM) orthonormal rows
        self.centres = (rng.standard_normal((centres, latent)) @ basis).astype(np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        self.noise, self.seed = noise / np.sqrt(DIM), seed

    def chunk(self, i: int, n: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, i))
        which = rng.integers(0, len(self.centres), n)
        v = self.centres[which] + rng.standard_normal((n, DIM)).astype(np.float32) * self.noise
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def chunks(self, total: int):  # type: ignore[no-untyped-def]
        for i, start in enumerate(range(0, total, CHUNK)):
            n = min(CHUNK, total - start)
            yield np.arange(start, start + n, dtype=np.int64), self.chunk(i, n), ["DX"] * n


def percentiles(ms: list[float]) -> tuple[float, float]:
    a = np.array(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 95))


def run_size(n: int, queries: np.ndarray, data: Synthetic) -> list[dict]:
    k = 10
    # exact: hold the matrix once (n x 1152 float32), time single queries, keep the truth
    matrix = np.empty((n, DIM), dtype=np.float32)
    for ids, v, _ in data.chunks(n):
        matrix[ids[0] : ids[0] + len(ids)] = v
    exact = VectorIndex(DIM, exact_max=n + 1)
    exact._matrix, exact._ids = matrix, np.arange(n, dtype=np.int64)  # no copy: the bench has one matrix
    exact._mods = np.full(n, "DX", dtype="<U16")
    t_exact, truth = [], []
    for q in queries:
        t0 = time.perf_counter()
        hits = exact.search(q, k)
        t_exact.append((time.perf_counter() - t0) * 1e3)
        truth.append({h.id for h in hits})
    del exact, matrix
    gc.collect()
    # ivf: streamed build as at start, then single queries
    t0 = time.perf_counter()
    ivf = VectorIndex.build(DIM, n, lambda: data.chunks(n), exact_max=0)
    build_s = time.perf_counter() - t0
    nlist = ivf_nlist(n)
    results = []
    for nprobe in sorted({ivf_nprobe(nlist), max(8, nlist // 64), min(nlist, max(32, nlist // 16))}):
        ivf._faiss.nprobe = nprobe
        t_ivf, recall = [], []
        for q, want in zip(queries, truth):
            t0 = time.perf_counter()
            hits = ivf.search(q, k)
            t_ivf.append((time.perf_counter() - t0) * 1e3)
            recall.append(len({h.id for h in hits} & want) / k)
        results.append((nprobe, t_ivf, recall))
    del ivf
    gc.collect()
    (e50, e95) = percentiles(t_exact)
    rows = []
    for nprobe, t_ivf, recall in results:
        i50, i95 = percentiles(t_ivf)
        rows.append(
            {
                "n": n,
                "exact_p50_ms": e50,
                "exact_p95_ms": e95,
                "ivf_p50_ms": i50,
                "ivf_p95_ms": i95,
                "ivf_recall_at_10": float(np.mean(recall)),
                "ivf_recall_min": float(np.min(recall)),
                "nlist": nlist,
                "nprobe": nprobe,
                "default": nprobe == ivf_nprobe(nlist),
                "ivf_build_s": build_s,
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    args = ap.parse_args()
    import faiss

    data = Synthetic()
    queries = Synthetic(seed=0).chunk(10_000, args.queries)  # same centres, a chunk index never stored
    rows = []
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, faiss {faiss.__version__}, "
        f"omp threads {faiss.omp_get_max_threads()}, dim {DIM}, {args.queries} single queries, k=10"
    )
    header = (
        f"{'vectors':>9} | {'exact p50':>9} {'exact p95':>9} | {'ivf p50':>8} {'ivf p95':>8} | "
        f"{'recall@10':>9} {'min':>5} | {'nlist':>5} {'nprobe':>6} | {'build s':>7} | {'exact/ivf p95':>13}"
    )
    print(header)
    print("-" * len(header))
    for n in (int(s) for s in args.sizes.split(",")):
        for r in run_size(n, queries, data):
            rows.append(r)
            print(
                f"{n:>9} | {r['exact_p50_ms']:>7.2f}ms {r['exact_p95_ms']:>7.2f}ms | {r['ivf_p50_ms']:>6.2f}ms "
                f"{r['ivf_p95_ms']:>6.2f}ms | {r['ivf_recall_at_10']:>9.3f} {r['ivf_recall_min']:>5.1f} | "
                f"{r['nlist']:>5} {r['nprobe']:>6} | {r['ivf_build_s']:>7.1f} | "
                f"{r['exact_p95_ms'] / r['ivf_p95_ms']:>12.1f}x" + ("  <- default nprobe" if r["default"] else ""),
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"dim": DIM, "queries": args.queries, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
