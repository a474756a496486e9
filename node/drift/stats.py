"""The drift statistics: pure functions over arrays, seeded, so a report is reproducible.

- Embedding shift: squared maximum mean discrepancy (MMD^2, biased V-statistic) with a Gaussian
  kernel, on a PCA projection fitted on the reference window (the CheXstray recipe: a few
  principal components carry the distribution; 1152 raw dimensions would drown the kernel in
  noise). Bandwidth: the median pairwise distance of the pooled sample. p-value: a permutation
  test, ``(1 + #{permuted >= observed}) / (1 + permutations)``, which is exact under the null of
  exchangeable windows whatever the kernel.
- Score shift: the two-sample Kolmogorov-Smirnov statistic and p-value (scipy) per finding.
- No-assist rate: Fisher's exact test on the 2x2 table (assist / no assist x window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MmdResult", "ks_shift", "mmd_permutation_test", "rate_change"]


@dataclass(frozen=True)
class MmdResult:
    mmd2: float
    p_value: float
    components: int


def _mmd2(k: np.ndarray, first: np.ndarray, n_ref: int) -> float:
    """MMD^2 of the split (rows ``first`` vs the rest) given the pooled kernel matrix."""
    a = k[np.ix_(first[:n_ref], first[:n_ref])]
    b = k[np.ix_(first[n_ref:], first[n_ref:])]
    ab = k[np.ix_(first[:n_ref], first[n_ref:])]
    return float(a.mean() + b.mean() - 2 * ab.mean())


def mmd_permutation_test(
    reference: np.ndarray, recent: np.ndarray, *, components: int = 10, permutations: int = 500, seed: int = 0
) -> MmdResult:
    """Is ``recent`` (m, D) drawn from the distribution of ``reference`` (n, D)?"""
    from sklearn.decomposition import PCA

    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(recent, dtype=np.float64)
    n_comp = int(max(1, min(components, ref.shape[0] - 1, ref.shape[1])))
    pca = PCA(n_components=n_comp, random_state=seed).fit(ref)
    pooled = np.concatenate([pca.transform(ref), pca.transform(rec)])
    sq = np.sum(pooled**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * pooled @ pooled.T, 0.0)
    upper = d2[np.triu_indices_from(d2, k=1)]
    bandwidth2 = float(np.median(upper)) if upper.size and np.median(upper) > 0 else 1.0
    k = np.exp(-d2 / bandwidth2)
    n = ref.shape[0]
    order = np.arange(pooled.shape[0])
    observed = _mmd2(k, order, n)
    rng = np.random.default_rng(seed)
    exceed = sum(_mmd2(k, rng.permutation(order), n) >= observed for _ in range(permutations))
    return MmdResult(observed, (1 + exceed) / (1 + permutations), n_comp)


def ks_shift(reference: np.ndarray, recent: np.ndarray) -> tuple[float, float]:
    """(KS statistic, p-value); (nan, 1.0) when a window is empty."""
    from scipy.stats import ks_2samp

    if len(reference) == 0 or len(recent) == 0:
        return float("nan"), 1.0
    result = ks_2samp(np.asarray(reference, dtype=np.float64), np.asarray(recent, dtype=np.float64))
    return float(result.statistic), float(result.pvalue)


def rate_change(k_ref: int, n_ref: int, k_rec: int, n_rec: int) -> float:
    """Fisher's exact two-sided p-value that two proportions differ (1.0 when a window is empty)."""
    from scipy.stats import fisher_exact

    if n_ref == 0 or n_rec == 0:
        return 1.0
    return float(fisher_exact([[k_ref, n_ref - k_ref], [k_rec, n_rec - k_rec]]).pvalue)
