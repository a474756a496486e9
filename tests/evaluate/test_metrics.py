"""The evaluation arithmetic against scikit-learn and hand-worked numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

from node.evaluate.analysis import FindingInput, analyse_finding
from node.evaluate.labels import LabelError, read_labels
from node.evaluate.metrics import (
    bootstrap_auroc,
    bootstrap_thresholds,
    confusion_at,
    expected_calibration_error,
    point_metrics,
    resamples,
    rng_for,
    threshold_for_sensitivity,
    wilson,
)


def cohort(n: int = 400, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(np.int64)
    s = np.clip(rng.normal(0.45 + 0.2 * y, 0.15), 0, 1).round(2)  # rounded: plenty of ties
    return s, y


def test_every_bootstrap_auroc_equals_sklearn_with_the_resample_as_weights() -> None:
    s, y = cohort()
    (block,) = list(resamples(s, y, 20, rng_for(0, "t")))
    aurocs = bootstrap_auroc(block)
    scores = np.concatenate([block.pos, block.neg])
    truth = np.r_[np.ones(block.pos.size), np.zeros(block.neg.size)]
    for b in range(block.b):
        weights = np.concatenate([block.cpos[b], block.cneg[b]])
        assert aurocs[b] == pytest.approx(roc_auc_score(truth, scores, sample_weight=weights), abs=1e-12)
    assert block.cpos.sum(axis=1).tolist() == [block.pos.size] * 20  # stratified: n_pos every time


def test_bootstrap_thresholds_match_a_direct_computation() -> None:
    s, y = cohort()
    (block,) = list(resamples(s, y, 10, rng_for(1, "t")))
    got = bootstrap_thresholds(block, 0.9)
    for b in range(block.b):
        drawn = np.sort(np.repeat(block.pos, block.cpos[b]))[::-1]
        assert got[b] == threshold_for_sensitivity(drawn, 0.9)
    assert threshold_for_sensitivity(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), 0.8) == 0.6  # 4 of 5 at >= 0.6


def test_point_metrics_are_sklearns_and_ece_is_worked_by_hand() -> None:
    s, y = cohort()
    m = point_metrics(s, y)
    assert m["auroc"] == roc_auc_score(y, s)
    assert m["average_precision"] == average_precision_score(y, s)
    assert m["brier"] == brier_score_loss(y, s)
    # 20 scores, 10 equal-count bins of 2: bin means 0.05, 0.15, ...; positives put so each bin is off by 0.05
    scores = np.repeat(np.arange(10) / 10 + 0.05, 2)
    labels = np.zeros(20)
    assert expected_calibration_error(scores, labels) == pytest.approx(float(scores.mean()))
    labels_half = np.tile([0, 1], 10)  # each bin: fraction 0.5
    assert expected_calibration_error(scores, labels_half) == pytest.approx(float(np.abs(scores - 0.5).mean()))


def test_wilson_interval_by_hand() -> None:
    k, n, z = 8, 10, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert wilson(k, n) == pytest.approx([centre - half, centre + half], abs=1e-9)
    assert wilson(0, 0) is None


def test_confusion_and_band() -> None:
    s = np.array([0.1, 0.45, 0.55, 0.7, 0.3, 0.9])
    y = np.array([0, 0, 1, 1, 1, 0])
    c = confusion_at(s, y, 0.5, (0.4, 0.6))
    assert (c["tp"], c["fn"], c["fp"], c["tn"]) == (2, 1, 1, 2)
    assert c["sensitivity"] == 2 / 3 and c["specificity"] == 2 / 3 and c["ppv"] == 2 / 3 and c["npv"] == 2 / 3
    assert c["indeterminate_fraction"] == 2 / 6  # 0.45 and 0.55
    assert c["present_sensitivity"] == 1 / 3  # only 0.7 is above the band


def analysed(seed: int, groups=None):  # type: ignore[no-untyped-def]
    s, y = cohort(600)
    site = np.where(np.arange(600) % 4 == 0, "b", "a")
    # site b: scores shuffled, so its AUROC is near chance and clearly below the cohort
    s = s.copy()
    rng = np.random.default_rng(9)
    idx = np.flatnonzero(site == "b")
    s[idx] = s[rng.permutation(idx)]
    f = FindingInput("pneumothorax", True, 0.5, (0.4, 0.6), s, y.astype(float), groups or {"site": site.tolist()})
    return analyse_finding(f, bootstrap=300, seed=seed, target_sensitivity=0.9).metrics


def test_analysis_is_reproducible_flags_a_weak_subgroup_and_suggests_a_conservative_point() -> None:
    a, b = analysed(5), analysed(5)
    assert a == b
    assert analysed(6)["auroc_ci"] != a["auroc_ci"]
    lo, hi = a["auroc_ci"]
    assert lo < a["auroc"] < hi
    rows = {r["value"]: r for r in a["subgroups"]}
    assert rows["b"]["flagged"] and "AUROC clearly below the cohort" in rows["b"]["flag_reasons"]
    assert not rows["a"]["flagged"]
    s = a["suggested"]
    assert s["method"] == "target-sensitivity" and s["target_sensitivity"] == 0.9
    assert s["sensitivity"] >= 0.9
    low, high = s["indeterminate_band"]
    assert low <= s["threshold"] <= high


def test_too_few_positives_is_loud() -> None:
    s = np.array([0.2, 0.3, 0.8, 0.4, 0.9])
    f = FindingInput("x", True, 0.5, (0.4, 0.6), s, np.array([0, 0, 1, 0, 1.0]), {})
    m = analyse_finding(f, bootstrap=50, seed=0, target_sensitivity=0.95).metrics
    assert m["warnings"] == ["too few positives to set a threshold (2 < 30)"]
    assert m["suggested"]["warning"] == "too few positives to set a threshold"


@pytest.mark.parametrize(
    "text, message",
    [
        ("uid,pneumothorax\n1.2,1\n", "study_instance_uid or accession_number"),
        ("study_instance_uid,site\n1.2,a\n", "no column for any finding"),
        ("study_instance_uid,pneumothorax\n1.2,yes\n", "line 2, column pneumothorax: 'yes' is not 1, 0 or empty"),
        ("study_instance_uid,pneumothorax\n1.2,1\n1.2,0\n", "already on line 2"),
    ],
)
def test_bad_labels_are_named(tmp_path, text: str, message: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(LabelError, match=message):
        read_labels(path, ["pneumothorax", "pleural_effusion"])


def test_labels_read_unknowns_and_by_columns(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "labels.csv"
    path.write_text("accession_number,pneumothorax,site,other\nA1,1,north,x\nA2,,south,y\nA3,0,,z\n")
    table = read_labels(path, ["pneumothorax", "pleural_effusion"], ["site"])
    assert table.id_column == "accession_number" and table.findings == ("pneumothorax",)
    assert [r.labels["pneumothorax"] for r in table.rows][0::2] == [1.0, 0.0]
    assert math.isnan(table.rows[1].labels["pneumothorax"])
    assert [r.extra["site"] for r in table.rows] == ["north", "south", "unknown"]
    with pytest.raises(LabelError, match="--by ward"):
        read_labels(path, ["pneumothorax"], ["ward"])
