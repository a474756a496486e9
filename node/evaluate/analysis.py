"""Per-finding analysis of one scored cohort: the numbers metrics.json and report.html show.

Input is plain arrays (one score and one label per study, and the subgroup value of each study
per column), so the same code serves ``triage-node evaluate`` and ``bench/evaluate.py``.

Operating points (``suggested``):

- urgent findings (``urgency = "high"``, the ones that raise priority): the highest threshold
  whose sensitivity reaches ``target_sensitivity`` -- what a site needs for a finding it must not
  miss;
- routine findings: the threshold maximising Youden's J (sensitivity + specificity - 1), and
  its sensitivity becomes that finding's target for the band below;
- the indeterminate band: the 2.5-97.5 % bootstrap interval of the threshold that reaches that
  sensitivity (widened to contain the threshold itself): where the cohort cannot tell which side
  of the operating point a score lies on.

A finding with fewer than 30 positives gets a loud warning: "too few positives to set a threshold".
Subgroup CIs come from the cohort's resamples restricted to the subgroup (same draws for all).
Subgroups are flagged when their AUROC CI or their sensitivity's Wilson CI lies wholly below the
whole cohort's point estimate ("clearly below").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import numpy as np
from sklearn.metrics import roc_auc_score

from node.evaluate.metrics import (
    _BLOCK,
    Resamples,
    _counts,
    bootstrap_auroc,
    bootstrap_thresholds,
    confusion_at,
    point_metrics,
    reliability_bins,
    rng_for,
    roc_band,
    threshold_for_sensitivity,
    youden_threshold,
)

__all__ = ["FPR_GRID", "MIN_POSITIVES", "FindingAnalysis", "FindingInput", "analyse_finding"]

MIN_POSITIVES = 30
FPR_GRID = np.linspace(0.0, 1.0, 51)
_ROC_BAND_RESAMPLES = 200


@dataclass
class FindingInput:
    key: str
    urgent: bool
    threshold: float
    band: tuple[float, float]
    scores: np.ndarray  # (N,) float64, one per study
    labels: np.ndarray  # (N,) float64: 1, 0 or nan (unknown)
    groups: Mapping[str, Sequence[str]]  # subgroup column -> value per study (len N)


class PlotData(TypedDict, total=False):
    """The arrays report.py draws; ROC curve and band only when there are positives and negatives."""

    scores: np.ndarray
    labels: np.ndarray
    reliability: list[dict[str, float]]
    fpr: np.ndarray
    tpr: np.ndarray
    band: tuple[np.ndarray, np.ndarray, np.ndarray]  # FPR grid, 2.5 % and 97.5 % TPR


@dataclass
class FindingAnalysis:
    metrics: dict[str, object]
    plot: PlotData = field(default_factory=PlotData)


def _ci(values: np.ndarray) -> list[float] | None:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return None
    lo, hi = np.percentile(v, [2.5, 97.5])
    return [float(lo), float(hi)]


@dataclass
class _Boot:
    aurocs: np.ndarray
    thresholds: np.ndarray
    band: np.ndarray | None
    subgroup_aurocs: list[np.ndarray]


def _bootstrap(
    s: np.ndarray, y: np.ndarray, b: int, seed: int, key: str, target: float, subsets: list[np.ndarray]
) -> _Boot:
    """One pass of ``b`` stratified resamples of the cohort: its AUROCs, the thresholds reaching
    ``target``, ROC bands, and for each subgroup (a boolean mask over the studies) the AUROC of
    its slice of every cohort resample (the subgroup bootstrap: same draws, so subgroups and
    cohort stay comparable, and no second round of random numbers)."""
    rng = rng_for(seed, key, "all")
    pos_o = np.flatnonzero(y == 1)
    pos_o = pos_o[np.argsort(s[pos_o], kind="stable")]
    neg_o = np.flatnonzero(y == 0)
    neg_o = neg_o[np.argsort(s[neg_o], kind="stable")]
    pos, neg = s[pos_o], s[neg_o]
    masks = [(m[pos_o], m[neg_o]) for m in subsets]
    aurocs, thresholds, bands = [], [], []
    subs: list[list[np.ndarray]] = [[] for _ in subsets]
    done = kept = 0
    while done < b:
        k = min(_BLOCK, b - done)
        block = Resamples(pos, neg, _counts(pos.size, k, rng), _counts(neg.size, k, rng))
        done += k
        aurocs.append(bootstrap_auroc(block))
        thresholds.append(bootstrap_thresholds(block, target))
        if kept < _ROC_BAND_RESAMPLES:
            take = min(k, _ROC_BAND_RESAMPLES - kept)
            bands.append(roc_band(Resamples(pos, neg, block.cpos[:take], block.cneg[:take]), FPR_GRID))
            kept += take
        for out, (mp, mn) in zip(subs, masks):
            out.append(bootstrap_auroc(Resamples(pos[mp], neg[mn], block.cpos[:, mp], block.cneg[:, mn])))
    return _Boot(
        np.concatenate(aurocs),
        np.concatenate(thresholds),
        np.concatenate(bands) if bands else None,
        [np.concatenate(x) for x in subs],
    )


def analyse_finding(
    f: FindingInput, *, bootstrap: int, seed: int, target_sensitivity: float, tick: Callable[[], object] = lambda: None
) -> FindingAnalysis:
    known = np.isfinite(f.labels)
    s, y = f.scores[known].astype(np.float64), f.labels[known].astype(np.int64)
    n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
    warnings: list[str] = []
    if n_pos < MIN_POSITIVES:
        warnings.append(f"too few positives to set a threshold ({n_pos} < {MIN_POSITIVES})")
    point = point_metrics(s, y)
    m: dict[str, object] = {"n_pos": n_pos, "n_neg": n_neg, "n_unknown": int((~known).sum()), **point}
    at = confusion_at(s, y, f.threshold, f.band)
    m["at_threshold"] = at

    both = n_pos > 0 and n_neg > 0
    suggested: dict[str, object] | None = None
    subsets: list[tuple[str, str, np.ndarray]] = []
    for column, values in f.groups.items():
        v = np.asarray(values, dtype=object)[known]
        for value in sorted(set(v.tolist()), key=str):
            subsets.append((column, str(value), v == value))
    boot = _Boot(np.empty(0), np.empty(0), None, [np.empty(0)] * len(subsets))
    if both:
        if f.urgent:
            method, target = "target-sensitivity", target_sensitivity
            t_star = threshold_for_sensitivity(np.sort(s[y == 1])[::-1], target)
        else:
            method = "youden"
            t_star = youden_threshold(s, y)
            target = float((s[y == 1] >= t_star).mean())
        boot = _bootstrap(s, y, bootstrap, seed, f.key, target, [mask for _, _, mask in subsets])
        spread = _ci(boot.thresholds)
        low, high = (min(t_star, spread[0]), max(t_star, spread[1])) if spread else (t_star, t_star)
        low, high = max(0.0, low), min(1.0, high)
        c = confusion_at(s, y, t_star, (low, high))
        suggested = {
            "method": method,
            "threshold": t_star,
            "indeterminate_band": [low, high],
            "target_sensitivity": target if f.urgent else None,
            "sensitivity": c["sensitivity"],
            "sensitivity_ci": c["sensitivity_ci"],
            "specificity": c["specificity"],
            "specificity_ci": c["specificity_ci"],
            "ppv": c["ppv"],
            "npv": c["npv"],
            "indeterminate_fraction": c["indeterminate_fraction"],
            "present_sensitivity": c["present_sensitivity"],
        }
        if n_pos < MIN_POSITIVES:
            suggested["warning"] = "too few positives to set a threshold"
    tick()
    m["auroc_ci"] = _ci(boot.aurocs)
    m["suggested"] = suggested
    m["warnings"] = warnings

    cohort_sens = at["sensitivity"]
    subgroups = []
    for (column, value, sel), sub_aurocs in zip(subsets, boot.subgroup_aurocs):
        ss, yy = s[sel], y[sel]
        sp, sn = int((yy == 1).sum()), int((yy == 0).sum())
        row: dict[str, object] = {
            "by": column,
            "value": value,
            "n": int(sel.sum()),
            "n_pos": sp,
            "n_neg": sn,
            "auroc": None,
            "auroc_ci": None,
        }
        auroc_ci = None
        if sp and sn:
            row["auroc"] = float(roc_auc_score(yy, ss))
            row["auroc_ci"] = auroc_ci = _ci(sub_aurocs)
        c = confusion_at(ss, yy, f.threshold)
        sensitivity_ci = c["sensitivity_ci"]
        row["sensitivity"], row["sensitivity_ci"] = c["sensitivity"], sensitivity_ci
        reasons = []
        if point["auroc"] is not None and auroc_ci is not None and auroc_ci[1] < point["auroc"]:
            reasons.append("AUROC clearly below the cohort")
        if cohort_sens is not None and sensitivity_ci is not None and sensitivity_ci[1] < cohort_sens:
            reasons.append("sensitivity clearly below the cohort")
        row["flagged"] = bool(reasons)
        row["flag_reasons"] = reasons
        subgroups.append(row)
    m["subgroups"] = subgroups
    tick()

    plot: PlotData = {"scores": s, "labels": y, "reliability": reliability_bins(s, y)}
    band_b = boot.band
    if both:
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(y, s)
        plot["fpr"], plot["tpr"] = fpr, tpr
        if band_b is not None and band_b.size:
            plot["band"] = (FPR_GRID, np.nanpercentile(band_b, 2.5, axis=0), np.nanpercentile(band_b, 97.5, axis=0))
    m["reliability"] = plot["reliability"]
    return FindingAnalysis(m, plot)
