"""Everything the study page shows, gathered in one place: index facts, the current SR read back
with dicom_sr, the images the model was given (with their thumbnails checked against the SR's
recorded preprocessing), the images it was not given and why, the study's audit events and its
forwarding state.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import pydicom

from node.console import audit_read
from node.console.images import DEFAULT_SIZE, RenderCache, size_from_description
from node.console.queries import StudyFacts, study_facts, study_forwarding
from node.dicomweb.context import WebContext
from node.store.read import instances_of_study, study_headers

MAX_THUMBNAILS = 24
MAX_RECOMPUTED_SKIPS = 500  # instances read again (headers only) when the audit log has no skip list

#: The selection's reason codes (node/triage/select.py) in words.
SKIP_REASONS = {
    "own-sr": "a report written by this node",
    "not-an-image": "not an image (no pixel data, or a non-image object)",
    "modality": "modality not accepted by the profile",
    "sop-class": "SOP class not accepted by the profile",
    "photometric": "photometric interpretation not accepted by the profile",
    "body-part": "body part not accepted by the profile",
    "body-part-unknown": "body part not given",
    "view-position": "view position not accepted by the profile (e.g. a lateral view)",
    "view-position-unknown": "view position not given",
    "patient-age": "patient age outside the profile's range",
    "patient-age-unknown": "patient age unknown, and the profile has an age range",
    "duplicate": "the same SOP Instance UID was already accepted",
}


@functools.lru_cache(maxsize=4)
def _profiles_from(directory: str) -> dict[str, Any]:
    from node.triage.profiles import load_profiles

    try:
        return load_profiles(Path(directory))
    except Exception:
        return {}


def profile_named(c: WebContext, name: str) -> Any | None:
    """The triage profile the worker runs (else the one in profiles_dir) called ``name``."""
    for profile in getattr(c.worker, "profiles", None) or []:
        if profile.name == name:
            return profile
    return _profiles_from(str(c.settings.triage.profiles_path)).get(name)


def model_size(c: WebContext) -> int:
    model = getattr(c.worker, "model", None)
    return int(model.image_size) if model is not None else DEFAULT_SIZE


def image_url(study_uid: str, sop_uid: str, kind: str, **query: Any) -> str:
    q = urlencode({k: v for k, v in query.items() if v})
    return f"/ui/study/{quote(study_uid)}/image/{quote(sop_uid)}/{kind}.png" + (f"?{q}" if q else "")


def _read_sr(path: Path) -> tuple[Any | None, str | None, str]:
    """(TriageResult, predecessor SOP UID, error text)."""
    from dicom_sr import TriageSRError, read_predecessor, read_triage_sr

    try:
        ds = pydicom.dcmread(path)
        predecessor = read_predecessor(ds)
        return read_triage_sr(ds), predecessor.sop_instance_uid if predecessor else None, ""
    except (OSError, TriageSRError, ValueError) as exc:
        return None, None, f"{type(exc).__name__}: {exc}"


def _images(
    c: WebContext, facts: StudyFacts, result: Any, renders: RenderCache, paths: dict[str, str]
) -> list[dict[str, Any]]:
    profile = profile_named(c, result.algorithm.profile_name)
    defaults = profile.preprocessing if profile is not None else None
    out = []
    for n, assessment in enumerate(result.images):
        sop = assessment.image.sop_instance_uid
        entry: dict[str, Any] = dict(
            sop_instance_uid=sop,
            series_instance_uid=assessment.image.series_instance_uid,
            evaluated=assessment.evaluated,
            domain_score=assessment.domain_score,
            preprocessing=assessment.preprocessing,
            thumbnail=False,
            error="",
            matches_sr=None,
            size=None,
        )
        rel = paths.get(sop)
        if rel is None:
            entry["error"] = "the instance is not in the index any more"
        elif n < MAX_THUMBNAILS:
            size = size_from_description(assessment.preprocessing) or model_size(c)
            try:
                rendered = renders.model_input(c.files.path(rel), size, defaults)
            except Exception as exc:
                entry["error"] = f"cannot recompute the model input: {type(exc).__name__}: {exc}"[:300]
            else:
                entry.update(
                    thumbnail=True,
                    size=size,
                    matches_sr=rendered.description == assessment.preprocessing,
                    model_input_url=image_url(
                        facts.study_instance_uid, sop, "model-input", size=size, profile=profile.name if profile else ""
                    ),
                    original_url=image_url(
                        facts.study_instance_uid, sop, "original", profile=profile.name if profile else ""
                    ),
                    recomputed=rendered.description,
                )
        out.append(entry)
    return out


def _recompute_skips(c: WebContext, study_uid: str, profile_name: str) -> list[dict[str, Any]]:
    """The profile's selection over the study's stored headers (no pixel data read), own SRs left out."""
    from node.triage.select import select_images

    profile = profile_named(c, profile_name)
    if profile is None:
        return []
    # an unreadable file is simply not listed
    headers = study_headers(c.db, c.files, study_uid, stop_before_pixels=True, limit=MAX_RECOMPUTED_SKIPS)
    selection = select_images(headers, profile, require_pixel_data=False)
    return [
        dict(sop_instance_uid=s.sop_instance_uid, reason=s.reason, words=SKIP_REASONS.get(s.reason, ""))
        for s in selection.skipped
        if s.reason != "own-sr"
    ]


def study_view(c: WebContext, study_uid: str, renders: RenderCache, *, show_identifiers: bool) -> dict[str, Any] | None:
    facts = study_facts(c.db, study_uid)
    if facts is None:
        return None
    events = audit_read.study_events(Path(c.settings.audit.path), study_uid)
    current_sop = (facts.worklist or {}).get("sr_sop_instance_uid") or (
        facts.reports[0]["sop_instance_uid"] if facts.reports else ""
    )
    paths = {r["sop_instance_uid"]: r["path"] for r in facts.reports}
    result, predecessor, sr_error = (None, None, "")
    images: list[dict[str, Any]] = []
    if current_sop and current_sop in paths:
        result, predecessor, sr_error = _read_sr(c.files.path(paths[current_sop]))
    elif current_sop:
        sr_error = "the current SR is not in the index"
    if result is not None:
        paths.update(
            {
                i.sop_instance_uid: i.path
                for i in instances_of_study(c.db, study_uid, sop_uids=[a.image.sop_instance_uid for a in result.images])
            }
        )
        images = _images(c, facts, result, renders, paths)
    skipped = [
        dict(sop_instance_uid=sop, reason=why, words=SKIP_REASONS.get(why.split(":")[0], ""))
        for sop, why in (audit_read.skipped_images(events, current_sop) if current_sop else [])
    ]
    skipped_source = "recorded by the triage that wrote the current SR" if skipped else ""
    if not skipped and result is not None and facts.instance_count <= MAX_RECOMPUTED_SKIPS:
        skipped = _recompute_skips(c, study_uid, result.algorithm.profile_name)
        skipped_source = (
            (
                f"worked out again now with profile {result.algorithm.profile_name} (the triage "
                "recorded no list: no image of the study was accepted)"
            )
            if skipped
            else ""
        )
    if not show_identifiers:
        events = [audit_read.redact(e) for e in events]
    return dict(
        facts=facts,
        result=result,
        predecessor=predecessor,
        sr_error=sr_error,
        current_sop=current_sop,
        images=images,
        skipped=skipped,
        skipped_source=skipped_source,
        events=events,
        forwarding=study_forwarding(c.db, study_uid),
        calibration=getattr(getattr(result, "algorithm", None), "calibration", None) if result else None,
    )
