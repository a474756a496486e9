"""`triage-node probe train`: a logistic-regression probe for one finding from local labels.

The cohort is found exactly as `evaluate` finds it (labels.csv, the profile's image selection,
the kept embeddings; missing ones are embedded once and kept). Features are the L2-normalised
image embeddings, standardised; scikit-learn's LogisticRegression (L2, C=1, balanced class
weights) is the model. Each image carries its study's label; a study's score is the maximum over
its images, as in triage.

Cross-validation: 5 folds grouped by study and stratified by label (StratifiedGroupKFold), so no
study has images on both sides; the out-of-fold study scores give the AUROC, and a stratified
bootstrap over studies (node.evaluate.metrics) its 95 % percentile interval. The probe that is
written is then fitted on every labelled image.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from node.config import Settings
from node.db.engine import Database
from node.triage.model import LoadedModel, ModelUnavailable, load_model

__all__ = ["ProbeTrainError", "TrainOptions", "train_probe"]

MIN_PER_CLASS = 5  # five folds need five studies of each label


class ProbeTrainError(RuntimeError):
    """Training cannot proceed; one sentence for the user (exit 2)."""


@dataclass
class TrainOptions:
    labels: Path
    finding: str
    out: Path | None = None  # default: ./<profile>-<finding>.probe.json
    profile: str | None = None
    c: float = 1.0
    folds: int = 5
    bootstrap: int = 1000
    seed: int = 0
    progress: bool = False


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000, random_state=seed)
    )
    return model.fit(x, y)


def _study_scores(image_scores: np.ndarray, groups: np.ndarray, n_studies: int) -> np.ndarray:
    out = np.full(n_studies, -np.inf)
    np.maximum.at(out, groups, image_scores)
    return out


def cross_validated_auroc(
    x: np.ndarray,
    y_image: np.ndarray,
    groups: np.ndarray,
    y_study: np.ndarray,
    *,
    folds: int,
    c: float,
    seed: int,
    bootstrap: int,
) -> dict[str, Any]:
    """Out-of-fold study-level AUROC and its bootstrap CI."""
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold

    from node.evaluate.metrics import bootstrap_auroc, resamples, rng_for

    oof = np.empty(len(y_image))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in splitter.split(x, y_image, groups):
        oof[test] = _fit(x[train], y_image[train], c, seed).predict_proba(x[test])[:, 1]
    scores = _study_scores(oof, groups, len(y_study))
    auroc = float(roc_auc_score(y_study, scores))
    boot = np.concatenate(
        [bootstrap_auroc(r) for r in resamples(scores, y_study, bootstrap, rng_for(seed, "probe-cv"))]
    )
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return {
        "folds": folds,
        "auroc": auroc,
        "auroc_ci": [float(lo), float(hi)],
        "bootstrap": bootstrap,
        "seed": seed,
        "study_scores": scores,
    }


def train_probe(
    settings: Settings, opts: TrainOptions, *, model_loader: Callable[..., LoadedModel] = load_model
) -> dict[str, Any]:
    """Train, cross-validate and write the probe; return the summary (``--json``)."""
    import sklearn

    from node.embeddings.compute import embed_missing
    from node.embeddings.store import get_embeddings
    from node.evaluate.labels import read_labels
    from node.evaluate.run import EvaluationError, _gather, _resolve, load_named_profile

    try:
        profile = load_named_profile(settings, opts.profile, None)
    except EvaluationError as exc:
        raise ProbeTrainError(str(exc)) from None
    try:
        table = read_labels(opts.labels, [opts.finding])
    except ValueError as exc:
        raise ProbeTrainError(f"{exc} (--finding {opts.finding})") from None
    if opts.folds < 2:
        raise ProbeTrainError("--folds must be at least 2")
    labels_sha = hashlib.sha256(Path(opts.labels).read_bytes()).hexdigest()
    db = Database(settings.database.url)
    try:
        try:
            model = model_loader(settings.model, cache_dir=Path(settings.node.data_dir) / "cache")
        except ModelUnavailable as exc:
            raise ProbeTrainError(f"the model is needed (missing image embeddings, its weights hash): {exc}") from None
        try:
            studies = _gather(settings, db, profile, _resolve(db, table), opts.progress)
        except EvaluationError as exc:
            raise ProbeTrainError(str(exc)) from None
        images = [ds for s in studies if s is not None for ds in s.accepted]
        outcome = embed_missing(db, model, profile, images, batch_size=model.batch_size, progress=opts.progress)
        weights, version = model.identity.weights_sha256, profile.preprocessing.method
        kept = get_embeddings(
            db, (str(ds.SOPInstanceUID) for ds in images), weights_sha256=weights, preprocessing_version=version
        )
    finally:
        db.dispose()

    vectors: list[np.ndarray] = []
    y_image: list[int] = []
    groups: list[int] = []
    y_study: list[int] = []
    not_used = 0
    for row, s in zip(table.rows, studies):
        label = row.labels.get(opts.finding, math.nan)
        usable = [
            kept[str(ds.SOPInstanceUID)]
            for ds in (s.accepted if s else [])
            if str(ds.SOPInstanceUID) in kept and str(ds.SOPInstanceUID) not in outcome.failed
        ]
        if not math.isfinite(label) or not usable:
            not_used += 1
            continue
        for e in usable:
            vectors.append(e.vector / np.linalg.norm(e.vector))
            y_image.append(int(label))
            groups.append(len(y_study))
        y_study.append(int(label))
    y_s = np.array(y_study, dtype=np.int64)
    n_pos, n_neg = int(y_s.sum()), int((1 - y_s).sum())
    if min(n_pos, n_neg) < max(MIN_PER_CLASS, opts.folds):
        raise ProbeTrainError(
            f"{opts.finding}: {n_pos} positive and {n_neg} negative studies with embeddings; "
            f"need at least {max(MIN_PER_CLASS, opts.folds)} of each"
        )
    x = np.stack(vectors).astype(np.float64)
    y_i, g = np.array(y_image), np.array(groups)
    cv = cross_validated_auroc(x, y_i, g, y_s, folds=opts.folds, c=opts.c, seed=opts.seed, bootstrap=opts.bootstrap)
    final = _fit(x, y_i, opts.c, opts.seed)
    scaler, logreg = final[0], final[1]
    out = Path(opts.out) if opts.out else Path(f"{profile.name}-{opts.finding}.probe.json")
    doc = {
        "format": "triage-node-probe/1",
        "finding": opts.finding,
        "profile": profile.name,
        "weights_sha256": weights,
        "model_id": model.identity.model_id,
        "is_test_model": model.identity.is_test_model,
        "preprocessing_version": version,
        "embedding_dim": int(x.shape[1]),
        "labels_file_sha256": labels_sha,
        "cohort": {
            "n_studies": len(y_study),
            "n_pos": n_pos,
            "n_neg": n_neg,
            "n_images": len(y_i),
            "labelled_rows_not_used": not_used,
        },
        "cv": {k: v for k, v in cv.items() if k != "study_scores"},
        "model": {
            "kind": "logistic-regression",
            "C": opts.c,
            "class_weight": "balanced",
            "features": "L2-normalised image embedding, standardised",
            "mean": scaler.mean_.tolist(),
            "scale": scaler.scale_.tolist(),
            "coef": logreg.coef_[0].tolist(),
            "intercept": float(logreg.intercept_[0]),
        },
        "trained_at": datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "sklearn_version": sklearn.__version__,
    }
    body = (json.dumps(doc, indent=1) + "\n").encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(body)
    os.replace(tmp, out)
    return {
        "finding": opts.finding,
        "n_pos": n_pos,
        "n_neg": n_neg,
        "n_images": len(y_i),
        "cv_auroc": cv["auroc"],
        "cv_auroc_ci": cv["auroc_ci"],
        "folds": opts.folds,
        "path": str(out),
        "probe_version": "sha256:" + hashlib.sha256(body).hexdigest()[:16],
        "weights_sha256": weights,
        "preprocessing_version": version,
        "labels_file_sha256": labels_sha,
        "is_test_model": model.identity.is_test_model,
    }
