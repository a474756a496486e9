"""`triage-node evaluate`: labelled studies in the index -> metrics.json, scores.csv, report.html.

Steps: read labels.csv; find each study in the index; select its images with the profile (as the
worker does); embed the eligible images that have no kept embedding (or name them, with
``--no-embed``); score with ``policy.decide`` on the kept embeddings and the profile's prompts
(one text forward, no image pass when everything is kept); analyse each finding; write the files.
With ``--preprocessing A,B`` the same cohort is embedded and analysed once per preprocessing
version, side by side in one report.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select

from node.config import Settings
from node.db.engine import Database
from node.db.models import Study
from node.embeddings.compute import embed_missing, with_preprocessing
from node.embeddings.facts import age_band
from node.embeddings.store import get_embeddings
from node.evaluate.analysis import FindingAnalysis, FindingInput, analyse_finding
from node.evaluate.cohort import CohortStudy, ScoredCohort, score_cohort
from node.evaluate.labels import LabelTable, read_labels
from node.store.read import StoredFiles, instances_of_studies
from node.triage.model import LoadedModel, ModelUnavailable, load_model
from node.triage.policy import embed_profile
from node.triage.profiles import PREPROCESSING_METHODS, ProfileError, TriageProfile, load_profile, load_profiles
from node.triage.select import select_images

__all__ = [
    "HEADER_SUBGROUPS",
    "EvaluationError",
    "EvaluationOptions",
    "analyse_cohort",
    "load_named_profile",
    "run_evaluation",
]

#: Subgroup columns every evaluation reports (from the kept header facts of each study's first evaluated image).
HEADER_SUBGROUPS = ("sex", "age_band", "manufacturer", "view_position", "modality")


class EvaluationError(RuntimeError):
    """The evaluation cannot run; one sentence for the user (exit 2)."""


@dataclass
class EvaluationOptions:
    labels: Path
    out_dir: Path = Path("evaluation")
    profile: str | None = None  # a profile name from triage.profiles_dir (default: the first configured)
    profile_file: Path | None = None  # or a candidate profile file that is not deployed yet
    by: Sequence[str] = ()
    bootstrap: int = 1000
    seed: int = 0
    target_sensitivity: float = 0.95
    no_embed: bool = False
    preprocessing: Sequence[str] = ()  # versions to compare; default: the profile's own
    progress: bool = True


def load_named_profile(settings: Settings, name: str | None, path: Path | None) -> TriageProfile:
    try:
        if path is not None:
            return load_profile(Path(path))
        available = load_profiles(settings.triage.profiles_path)
    except ProfileError as exc:
        raise EvaluationError(str(exc)) from None
    name = name or settings.triage.profiles[0]
    if name not in available:
        raise EvaluationError(
            f"no profile named {name} in {settings.triage.profiles_path} (have: {', '.join(sorted(available))})"
        )
    return available[name]


# ------------------------------------------------------------------------------------------ cohort


@dataclass
class _Resolved:
    study_uid: str | None  # None: not in the index
    row_index: int


def _resolve(db: Database, table: LabelTable) -> list[_Resolved]:
    ids = [r.identifier for r in table.rows]
    column = Study.study_instance_uid if table.id_column == "study_instance_uid" else Study.accession_number
    found: dict[str, list[str]] = {}
    with db.session() as session:
        for start in range(0, len(ids), 500):
            for uid, key in session.execute(
                select(Study.study_instance_uid, column).where(column.in_(ids[start : start + 500]))
            ):
                found.setdefault(key, []).append(uid)
    out = []
    for i, ident in enumerate(ids):
        uids = found.get(ident, [])
        if len(uids) > 1:
            raise EvaluationError(
                f"accession number on labels.csv line {i + 2} matches {len(uids)} studies; use study_instance_uid"
            )
        out.append(_Resolved(uids[0] if uids else None, i))
    return out


@dataclass
class _StudyImages:
    study_uid: str
    row_index: int
    accepted: list[Any] = field(default_factory=list)  # pydicom Datasets (pixel data deferred)


def _gather(
    settings: Settings, db: Database, profile: TriageProfile, resolved: list[_Resolved], progress: bool
) -> list[_StudyImages | None]:
    from tqdm import tqdm

    out: list[_StudyImages | None] = []
    files = StoredFiles(settings.storage.path)
    stored = instances_of_studies(db, [r.study_uid for r in resolved if r.study_uid is not None])
    for r in tqdm(resolved, desc="reading headers", unit="study", file=sys.stderr, disable=not progress, leave=False):
        if r.study_uid is None:
            out.append(None)
            continue
        selection = select_images(files.read_headers([i.path for i in stored[r.study_uid]]), profile)
        out.append(_StudyImages(r.study_uid, r.row_index, list(selection.accepted)))
    return out


def _cohort_for_version(
    db: Database,
    model: LoadedModel,
    profile: TriageProfile,
    table: LabelTable,
    studies: list[_StudyImages | None],
    opts: EvaluationOptions,
    missing: list[tuple[str, str]],
) -> list[CohortStudy]:
    version = profile.preprocessing.method
    images = [ds for s in studies if s is not None for ds in s.accepted]
    failed: dict[str, str] = {}
    if not opts.no_embed:
        outcome = embed_missing(db, model, profile, images, batch_size=model.batch_size, progress=opts.progress)
        failed = outcome.failed
    kept = get_embeddings(
        db,
        (str(ds.SOPInstanceUID) for ds in images),
        weights_sha256=model.identity.weights_sha256,
        preprocessing_version=version,
    )
    cohort = []
    for i, row in enumerate(table.rows):
        s = studies[i]
        study = CohortStudy(study_uid=s.study_uid if s else row.identifier, labels=row.labels, extra=row.extra)
        if s is None:
            study.reason = "not-in-index"
        else:
            usable = [str(ds.SOPInstanceUID) for ds in s.accepted if str(ds.SOPInstanceUID) not in failed]
            absent = [u for u in usable if u not in kept]
            if absent:
                study.reason = "embedding-missing"
                missing.append((s.study_uid, version))
            else:
                study.embeddings = [kept[u] for u in usable]
        cohort.append(study)
    return cohort


# ------------------------------------------------------------------------------------------ analysis


def _group_values(scored: ScoredCohort, by: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {c: [] for c in (*HEADER_SUBGROUPS, *by)}
    for s in scored.studies:
        f = s.facts
        groups["sex"].append(f.sex or "unknown")
        groups["age_band"].append(age_band(f.age_years))
        groups["manufacturer"].append(f.manufacturer or "unknown")
        groups["view_position"].append(f.view_position or "unknown")
        groups["modality"].append(f.modality or "unknown")
        for c in by:
            groups[c].append(s.extra.get(c, "unknown"))
    return groups


def analyse_cohort(
    scored: ScoredCohort,
    profile: TriageProfile,
    findings: Sequence[str],
    *,
    by: Sequence[str],
    bootstrap: int,
    seed: int,
    target_sensitivity: float,
    progress: bool = True,
) -> dict[str, FindingAnalysis]:
    """Per finding of ``findings`` (those labels.csv has): the numbers and the plot data."""
    from tqdm import tqdm

    groups = _group_values(scored, by)
    inputs = []
    for key in findings:
        spec = profile.finding(key)
        scores = np.array([s.scores[key] for s in scored.studies], dtype=np.float64)
        labels = np.array([s.labels.get(key, math.nan) for s in scored.studies], dtype=np.float64)
        inputs.append(
            FindingInput(
                key=key,
                urgent=spec.urgency == "high",
                threshold=spec.threshold,
                band=spec.indeterminate_band,
                scores=scores,
                labels=labels,
                groups=groups,
            )
        )
    # Findings in parallel threads: the bootstrap is numpy work that releases the GIL, and each
    # finding draws from its own seeded generator, so the result does not depend on the order.
    with (
        tqdm(
            total=2 * len(findings),
            desc=f"bootstrap x{bootstrap}",
            unit="step",
            file=sys.stderr,
            disable=not progress,
            leave=False,
        ) as bar,
        ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool,
    ):
        futures = {
            f.key: pool.submit(
                analyse_finding,
                f,
                bootstrap=bootstrap,
                seed=seed,
                target_sensitivity=target_sensitivity,
                tick=lambda: bar.update(1),
            )
            for f in inputs
        }
        return {key: futures[key].result() for key in findings}


def _clean(value: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf to null."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        v = float(value)
        return v if math.isfinite(v) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# ------------------------------------------------------------------------------------------ the command


def run_evaluation(
    settings: Settings, opts: EvaluationOptions, *, model_loader: Callable[..., LoadedModel] = load_model
) -> dict[str, Any]:
    """Run the whole evaluation; write the files into ``opts.out_dir``; return metrics.json's content."""
    from node.evaluate.report import write_report

    if not 0 < opts.target_sensitivity <= 1:
        raise EvaluationError("--target-sensitivity must be within (0, 1]")
    if opts.bootstrap < 1:
        raise EvaluationError("--bootstrap must be at least 1")
    profile = load_named_profile(settings, opts.profile, opts.profile_file)
    versions = list(opts.preprocessing) or [profile.preprocessing.method]
    unknown = [v for v in versions if v not in PREPROCESSING_METHODS]
    if unknown:
        raise EvaluationError(
            f"--preprocessing: unknown version {unknown[0]} (have: {', '.join(PREPROCESSING_METHODS)})"
        )
    try:
        table = read_labels(opts.labels, [f.key for f in profile.findings], opts.by)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    clash = [c for c in opts.by if c in HEADER_SUBGROUPS]
    if clash:
        raise EvaluationError(f"--by {clash[0]}: always reported from the image headers; name another column")

    db = Database(settings.database.url)
    try:
        try:
            model = model_loader(settings.model, cache_dir=Path(settings.node.data_dir) / "cache")
        except ModelUnavailable as exc:
            raise EvaluationError(f"the model is needed (prompt embeddings, missing image embeddings): {exc}") from None
        from node.probes.probe import ProbeError, check_probe

        try:
            for f in profile.findings:
                if f.probe is not None:
                    check_probe(f.probe, weights_sha256=model.identity.weights_sha256)
        except ProbeError as exc:
            raise EvaluationError(str(exc)) from None
        prompts = embed_profile(model, profile)  # one text forward; cached per prompt set
        resolved = _resolve(db, table)
        studies = _gather(settings, db, profile, resolved, opts.progress)
        per_version: dict[str, dict[str, Any]] = {}
        analyses: dict[str, dict[str, FindingAnalysis]] = {}
        scored_by_version: dict[str, ScoredCohort] = {}
        missing: list[tuple[str, str]] = []
        for version in versions:
            vprofile = with_preprocessing(profile, version)
            cohort = _cohort_for_version(db, model, vprofile, table, studies, opts, missing)
            scored = score_cohort(cohort, vprofile, prompts, model.logit_scale)
            analysis = analyse_cohort(
                scored,
                vprofile,
                table.findings,
                by=opts.by,
                bootstrap=opts.bootstrap,
                seed=opts.seed,
                target_sensitivity=opts.target_sensitivity,
                progress=opts.progress,
            )
            scored_by_version[version], analyses[version] = scored, analysis
            per_version[version] = {
                "n_studies": len(scored.studies),
                "not_eligible": dict(sorted(scored.not_eligible.items())),
                "findings": {k: a.metrics for k, a in analysis.items()},
            }
    finally:
        db.dispose()

    first = versions[0]
    ident = model.identity
    metrics: dict[str, Any] = {
        "profile": profile.name,
        "profile_version": profile.version,
        "model_id": ident.model_id,
        "weights_sha256": ident.weights_sha256,
        "is_test_model": ident.is_test_model,
        "preprocessing_version": first,
        "labels_file_sha256": hashlib.sha256(Path(opts.labels).read_bytes()).hexdigest(),
        "n_labelled": len(table.rows),
        "n_studies": per_version[first]["n_studies"],
        "not_eligible": per_version[first]["not_eligible"],
        "bootstrap": opts.bootstrap,
        "seed": opts.seed,
        "target_sensitivity": opts.target_sensitivity,
        "by": list(opts.by),
        "findings": per_version[first]["findings"],
        "preprocessing": per_version,
        "warnings": sorted({f"{k}: {w}" for k, m in per_version[first]["findings"].items() for w in m["warnings"]}),
    }
    metrics = _clean(metrics)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    body = json.dumps(metrics, indent=2) + "\n"
    (out / "metrics.json").write_text(body, encoding="utf-8")
    with (out / "scores.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["study_instance_uid", "finding", "score", "label", "preprocessing"])
        for version in versions:
            for s in scored_by_version[version].studies:
                for key in table.findings:
                    label = s.labels.get(key, math.nan)
                    if math.isfinite(label):
                        w.writerow([s.study_uid, key, repr(float(s.scores[key])), int(label), version])
    if missing:
        with (out / "missing_embeddings.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["study_instance_uid", "preprocessing"])
            w.writerows(missing)
    not_found = [table.rows[r.row_index].identifier for r in resolved if r.study_uid is None]
    if not_found:
        with (out / "not_found.csv").open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow([table.id_column])
            w.writerows([n] for n in not_found)
    write_report(out / "report.html", metrics, analyses, versions)
    metrics_sha = hashlib.sha256(body.encode()).hexdigest()
    print(
        f"evaluate: {metrics['n_studies']} of {len(table.rows)} labelled studies scored; "
        f"metrics.json sha256 {metrics_sha}; report {out / 'report.html'}",
        file=sys.stderr,
    )
    if missing:
        print(
            f"evaluate: {len(missing)} studies lack embeddings (--no-embed): {out / 'missing_embeddings.csv'}",
            file=sys.stderr,
        )
    if not_found:
        print(
            f"evaluate: {len(not_found)} labelled studies are not in the index: {out / 'not_found.csv'}",
            file=sys.stderr,
        )
    for warning in metrics["warnings"]:
        print(f"evaluate: WARNING {warning}", file=sys.stderr)
    return metrics
