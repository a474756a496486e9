"""QIDO-RS: search studies, series and instances in the index (application/dicom+json).

Matching is node.query.find, the C-FIND matching shared with the DIMSE Q/R SCP (exact and
wildcard * ? strings, DA/TM ranges, UID lists, ModalitiesInStudy). This module maps query
parameters (keywords or tags; comma-separated lists) to its criteria, applies limit/offset, and
answers every key the index holds for the level and the levels above (a superset of the
PS3.18 default return attributes; includefield asks for nothing more). Match keys the index
does not hold are ignored with a ``Warning: 299`` header (PS3.18 8.3.4.2).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword

from node.audit import AuditObject, EventCode
from node.dicomweb.context import audit, base_url, ctx
from node.dicomweb.problems import Problem
from node.query import InvalidQuery, find
from node.query.match import SUPPORTED_KEYS

router = APIRouter()
DICOM_JSON = "application/dicom+json"
MAX_LIMIT = 1000
LIST_KEYS = {"StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "ModalitiesInStudy"}


def _keyword(name: str) -> str:
    """A query parameter (keyword or 8 hex digits) as a keyword; '' if unknown."""
    if len(name) == 8:
        try:
            return keyword_for_tag(int(name, 16)) or ""
        except ValueError:
            pass
    return name if tag_for_keyword(name) is not None else ""


MAX_QUERY_INT = 2**31 - 1  # larger offsets overflow the database's integer (was a 500)


def _int(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise Problem(400, f"{name} must be an integer") from None
    if not 0 <= number <= MAX_QUERY_INT:
        raise Problem(400, f"{name} must be between 0 and {MAX_QUERY_INT}")
    return number


def _parse(request: Request) -> tuple[dict[str, Any], int, int, list[str]]:
    criteria: dict[str, Any] = {}
    ignored: list[str] = []
    limit, offset = MAX_LIMIT, 0
    for name, value in request.query_params.multi_items():
        if name == "limit":
            limit = max(0, min(_int(name, value), MAX_LIMIT))
        elif name == "offset":
            offset = max(0, _int(name, value))
        elif name == "includefield":
            continue  # every key the index holds is returned anyway
        elif name == "fuzzymatching":
            if value.lower() == "true":
                ignored.append("fuzzymatching")
        else:
            kw = _keyword(name)
            if not kw:
                raise Problem(400, f"unknown query parameter {name!r}")
            if kw not in SUPPORTED_KEYS:
                ignored.append(kw)
            elif value:
                criteria[kw] = value.replace(",", "\\") if kw in LIST_KEYS else value
    return criteria, limit, offset, ignored


def _json(values: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for keyword, value in values.items():
        tag = tag_for_keyword(keyword)
        if tag is None:
            continue
        vr = dictionary_VR(tag)
        if value is None or value == "" or value == []:
            out[f"{tag:08X}"] = {"vr": vr}
        elif vr == "PN":
            out[f"{tag:08X}"] = {"vr": vr, "Value": [{"Alphabetic": str(value)}]}
        else:
            out[f"{tag:08X}"] = {"vr": vr, "Value": value if isinstance(value, list) else [value]}
    return dict(sorted(out.items()))


def search(request: Request, level: str, study: str | None = None, series: str | None = None) -> Response:
    criteria, limit, offset, ignored = _parse(request)
    if study:
        criteria["StudyInstanceUID"] = study
    if series:
        criteria["SeriesInstanceUID"] = series
    dimse_level = {"study": "STUDY", "series": "SERIES", "instance": "IMAGE"}[level]
    root = base_url(request)
    results: list[dict[str, Any]] = []
    try:
        with ctx(request).db.session() as session:
            for m in find(session, dimse_level, criteria, limit=limit, offset=offset):
                values = dict(m.values)
                url = f"{root}/studies/{values['StudyInstanceUID']}"
                if level != "study":
                    url += f"/series/{values['SeriesInstanceUID']}"
                if level == "instance":
                    url += f"/instances/{values['SOPInstanceUID']}"
                    values["AvailableTransferSyntaxUID"] = m.transfer_syntax_uid
                values["RetrieveURL"] = url
                results.append(_json(values))
    except InvalidQuery as exc:
        raise Problem(400, str(exc)) from None
    audit(
        request,
        EventCode.QUERY,
        desc=f"QIDO-RS {level}: {len(results)} results",
        objects=[AuditObject(type="query", id=level, details={"query": str(request.query_params)})],
    )
    headers = {}
    if ignored:
        headers["Warning"] = f'299 triage-node: "The following match keys were ignored: {", ".join(ignored)}"'
    return JSONResponse(results, media_type=DICOM_JSON, headers=headers)


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request) -> Response:
    return search(request, "study")


@router.get("/series", summary="QIDO-RS: search for series")
def search_all_series(request: Request) -> Response:
    return search(request, "series")


@router.get("/instances", summary="QIDO-RS: search for instances")
def search_all_instances(request: Request) -> Response:
    return search(request, "instance")


@router.get("/studies/{study}/series", summary="QIDO-RS: search for series of a study")
def search_series(request: Request, study: str) -> Response:
    return search(request, "series", study=study)


@router.get("/studies/{study}/instances", summary="QIDO-RS: search for instances of a study")
def search_study_instances(request: Request, study: str) -> Response:
    return search(request, "instance", study=study)


@router.get("/studies/{study}/series/{series}/instances", summary="QIDO-RS: search for instances of a series")
def search_instances(request: Request, study: str, series: str) -> Response:
    return search(request, "instance", study=study, series=series)
