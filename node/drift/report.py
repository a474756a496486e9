"""Drift per stream: which images form the reference and recent windows, and what changed.

A stream is the images of one modality, manufacturer, manufacturer model and station name (the
header facts kept with each embedding), within the current embedding space (weights x
preprocessing). Its reference window is the stream's first ``reference_size`` embedded images,
or the window frozen by ``triage-node drift freeze`` (the last ``reference_size`` images at that
moment); its recent window is the last ``recent_size`` images after the reference.

Signals (node/drift/stats.py): embedding shift (MMD on PCA, permutation p-value), per-finding
score shift (KS on the study scores the worklist holds), no-assist rate change (Fisher), and
header changes (software versions, pixel spacing, photometric interpretation new in the recent
window). The tests share one family-wise level ``alpha`` (weighted Bonferroni): the embedding
shift gets ``alpha / 2``, the score and no-assist tests share the other half, so a stream whose
images did not change alerts with probability <= alpha per run.
A header value never seen in the reference is a reason by itself (no test needed).

Read-only: the CLI and the node's background job both call :func:`drift_report`; only the job
(node/drift/watch.py) records alert transitions.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import select

from node.config import DriftSection, Settings
from node.db.engine import Database
from node.db.models import DriftStream, ImageEmbedding, WorklistItem
from node.drift.stats import ks_shift, mmd_permutation_test, rate_change
from node.drift.streams import freeze_reference
from node.store.read import StoredFiles, instances_by_uid

__all__ = ["HEADER_TAGS", "StreamReport", "drift_report", "freeze_references", "stream_key"]

HEADER_TAGS = ("SoftwareVersions", "PhotometricInterpretation", "PixelSpacing", "ImagerPixelSpacing")
_DTYPE = np.dtype("<f4")


def stream_key(modality: str, manufacturer: str, model: str, station: str) -> str:
    return "|".join(v.replace("|", "/") for v in (modality, manufacturer, model, station))


@dataclass
class StreamReport:
    key: str
    preprocessing_version: str
    n_images: int
    n_reference: int
    n_recent: int
    reference: str  # "first-N" | "frozen <iso time>"
    new_stream: bool  # its reference window is not complete yet (a stream first seen recently)
    embedding_shift: float | None = None  # MMD^2 on the PCA projection
    p_value: float | None = None
    score_shift: dict[str, float] = field(default_factory=dict)  # finding -> KS statistic
    score_p_values: dict[str, float] = field(default_factory=dict)
    no_assist_rate: dict[str, float | None] = field(default_factory=dict)  # window -> rate
    header_changes: list[str] = field(default_factory=list)
    alert: bool = False
    reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "preprocessing_version": self.preprocessing_version,
            "n_images": self.n_images,
            "n_reference": self.n_reference,
            "n_recent": self.n_recent,
            "reference": self.reference,
            "new_stream": self.new_stream,
            "embedding_shift": self.embedding_shift,
            "p_value": self.p_value,
            "score_shift": self.score_shift,
            "score_p_values": self.score_p_values,
            "no_assist_rate": self.no_assist_rate,
            "header_changes": self.header_changes,
            "alert": self.alert,
            "reasons": self.reasons,
        }


@dataclass
class _Row:
    id: int
    sop: str
    study: str


def _streams(db: Database, weights: str, version: str) -> dict[str, list[_Row]]:
    out: dict[str, list[_Row]] = defaultdict(list)
    with db.session() as session:
        for r in session.execute(
            select(
                ImageEmbedding.id,
                ImageEmbedding.sop_instance_uid,
                ImageEmbedding.study_instance_uid,
                ImageEmbedding.modality,
                ImageEmbedding.manufacturer,
                ImageEmbedding.manufacturer_model,
                ImageEmbedding.station_name,
            )
            .where(ImageEmbedding.weights_sha256 == weights, ImageEmbedding.preprocessing_version == version)
            .order_by(ImageEmbedding.id)
        ):
            out[stream_key(r[3], r[4], r[5], r[6])].append(_Row(r[0], r[1], r[2]))
    return out


def _frozen(db: Database, weights: str, version: str) -> dict[str, DriftStream]:
    with db.session() as session:
        rows = session.execute(
            select(DriftStream).where(
                DriftStream.weights_sha256 == weights, DriftStream.preprocessing_version == version
            )
        ).scalars()
        return {r.stream_key: r for r in rows}


def _windows(rows: list[_Row], state: DriftStream | None, cfg: DriftSection) -> tuple[list[_Row], list[_Row], str]:
    if state is not None and state.frozen_at is not None and state.reference_last_id is not None:
        lo, hi = state.reference_first_id or 0, state.reference_last_id
        reference = [r for r in rows if lo <= r.id <= hi]
        after = [r for r in rows if r.id > hi]
        frozen = state.frozen_at if state.frozen_at.tzinfo else state.frozen_at.replace(tzinfo=UTC)
        return reference, after[-cfg.recent_size :], f"frozen {frozen.isoformat(timespec='seconds')}"
    reference = rows[: cfg.reference_size]
    return reference, rows[cfg.reference_size :][-cfg.recent_size :], f"first {cfg.reference_size}"


def _vectors(db: Database, ids: list[int]) -> np.ndarray:
    with db.session() as session:
        found = {
            r[0]: np.frombuffer(r[1], dtype=_DTYPE, count=r[2])
            for r in session.execute(
                select(ImageEmbedding.id, ImageEmbedding.vector, ImageEmbedding.dim).where(ImageEmbedding.id.in_(ids))
            )
        }
    v = np.stack([found[i] for i in ids]).astype(np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _study_outcomes(db: Database, studies: set[str], meaning_to_key: dict[str, str]) -> dict[str, tuple[bool, dict]]:
    """study uid -> (assist, {finding key: score}) from the worklist (the current SR of each study)."""
    out: dict[str, tuple[bool, dict]] = {}
    uids = sorted(studies)
    with db.session() as session:
        for start in range(0, len(uids), 500):
            for uid, assist, findings in session.execute(
                select(WorklistItem.study_instance_uid, WorklistItem.assist, WorklistItem.findings).where(
                    WorklistItem.study_instance_uid.in_(uids[start : start + 500])
                )
            ):
                try:
                    items = json.loads(findings or "[]")
                except ValueError:
                    items = []
                scores = {
                    meaning_to_key.get(f.get("finding", ""), f.get("finding", "")): float(f["score"])
                    for f in items
                    if isinstance(f, dict) and "score" in f
                }
                out[uid] = (bool(assist), scores)
    return out


def _header_values(db: Database, files: StoredFiles, sops: list[str]) -> dict[str, set[str]]:
    values: dict[str, set[str]] = {t: set() for t in HEADER_TAGS}
    for stored in instances_by_uid(db, sops):
        try:
            ds = files.read_header(stored.path, stop_before_pixels=True, specific_tags=list(HEADER_TAGS))
        except Exception:
            continue
        for tag in HEADER_TAGS:
            if tag in ds:
                value = ds.get(tag)
                text = (
                    "\\".join(str(v) for v in value)
                    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"
                    else str(value)
                )
                values[tag].add(text)
    return values


def _meaning_to_key(settings: Settings) -> dict[str, str]:
    from node.triage.profiles import ProfileError, load_profiles

    try:
        profiles = load_profiles(settings.triage.profiles_path)
    except ProfileError:
        return {}
    return {f.code[2]: f.key for p in profiles.values() for f in p.findings}


def _analyse(
    report: StreamReport,
    db: Database,
    settings: Settings,
    reference: list[_Row],
    recent: list[_Row],
    meaning_to_key: dict[str, str],
) -> None:
    cfg = settings.drift
    outcomes = _study_outcomes(db, {r.study for r in reference + recent}, meaning_to_key)
    ref_studies = list(dict.fromkeys(r.study for r in reference if r.study in outcomes))
    rec_studies = list(dict.fromkeys(r.study for r in recent if r.study in outcomes))
    findings = sorted({k for s in ref_studies + rec_studies for k in outcomes[s][1]})
    # Weighted Bonferroni: half of alpha for the embedding shift (the signal that needs no labels and
    # no model output), half shared by the score and no-assist tests.
    embedding_level = cfg.alpha / 2
    level = cfg.alpha / 2 / (len(findings) + 1)
    permutations = max(cfg.permutations, math.ceil(4 / embedding_level))  # p can go well below the level
    mmd = mmd_permutation_test(
        _vectors(db, [r.id for r in reference]),
        _vectors(db, [r.id for r in recent]),
        components=cfg.pca_components,
        permutations=permutations,
        seed=0,
    )
    report.embedding_shift, report.p_value = mmd.mmd2, mmd.p_value
    if mmd.p_value < embedding_level:
        report.reasons.append(
            f"embedding shift: MMD^2 {mmd.mmd2:.4f} on {mmd.components} principal components, "
            f"permutation p {mmd.p_value:.4f} < {embedding_level:.4f}"
        )
    for key in findings:
        a = [outcomes[s][1][key] for s in ref_studies if key in outcomes[s][1]]
        b = [outcomes[s][1][key] for s in rec_studies if key in outcomes[s][1]]
        stat, p = ks_shift(np.array(a), np.array(b))
        if np.isfinite(stat):
            report.score_shift[key], report.score_p_values[key] = stat, p
            if p < level:
                report.reasons.append(f"score shift of {key}: KS {stat:.3f}, p {p:.4f} < {level:.4f}")
    k_ref = sum(not outcomes[s][0] for s in ref_studies)
    k_rec = sum(not outcomes[s][0] for s in rec_studies)
    report.no_assist_rate = {
        "reference": k_ref / len(ref_studies) if ref_studies else None,
        "recent": k_rec / len(rec_studies) if rec_studies else None,
    }
    p = rate_change(k_ref, len(ref_studies), k_rec, len(rec_studies))
    if p < level:
        report.reasons.append(
            f"no-assist rate {k_ref}/{len(ref_studies)} -> {k_rec}/{len(rec_studies)}, Fisher p {p:.4f} < {level:.4f}"
        )
    files = StoredFiles(settings.storage.path)
    before = _header_values(db, files, [r.sop for r in reference])
    after = _header_values(db, files, [r.sop for r in recent])
    for tag in HEADER_TAGS:
        new = sorted(after[tag] - before[tag])
        if new:
            report.header_changes.append(
                f"{tag} {', '.join(new)} (reference: {', '.join(sorted(before[tag])) or 'absent'})"
            )
    report.reasons += [f"header change: {h}" for h in report.header_changes]
    report.alert = bool(report.reasons)


def drift_report(
    settings: Settings, db: Database, weights: str | None, preprocessings: list[str]
) -> list[StreamReport]:
    """One report per stream of the current embedding space(s), sorted by key."""
    if not weights:
        return []
    cfg = settings.drift
    meaning_to_key = _meaning_to_key(settings)
    reports: list[StreamReport] = []
    for version in preprocessings:
        states = _frozen(db, weights, version)
        for key, rows in sorted(_streams(db, weights, version).items()):
            state = states.get(key)
            reference, recent, how = _windows(rows, state, cfg)
            frozen = state is not None and state.frozen_at is not None
            report = StreamReport(
                key=key,
                preprocessing_version=version,
                n_images=len(rows),
                n_reference=len(reference),
                n_recent=len(recent),
                reference=how,
                new_stream=not frozen and len(reference) < cfg.reference_size,
            )
            if report.new_stream:
                report.reasons.append(
                    f"new stream: reference window filling ({len(reference)} of "
                    f"{cfg.reference_size} images); no drift test yet"
                )
            elif len(recent) >= cfg.min_recent and len(reference) >= 2:
                _analyse(report, db, settings, reference, recent, meaning_to_key)
            reports.append(report)
    return reports


def freeze_references(
    settings: Settings, db: Database, weights: str, preprocessings: list[str], stream: str | None = None
) -> list[tuple[str, int]]:
    """Make the last ``reference_size`` images of each stream (or of ``stream``) its reference.

    Returns (stream key, images in the reference) per frozen stream; an unknown ``stream`` gives [].
    """
    cfg = settings.drift
    now = datetime.now(UTC)
    frozen: list[tuple[str, int]] = []
    with db.write() as session:
        for version in preprocessings:
            for key, rows in sorted(_streams(db, weights, version).items()):
                if stream is not None and key != stream:
                    continue
                window = rows[-cfg.reference_size :]
                freeze_reference(session, key, weights, version, first_id=window[0].id, last_id=window[-1].id, now=now)
                frozen.append((key, len(window)))
    return frozen
