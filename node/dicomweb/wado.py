"""WADO-RS: studies, series and instances as stored (multipart/related; type="application/dicom"),
and their metadata as application/dicom+json in which pixel data and any binary value over 1 KiB
are a ``BulkDataURI`` (served by node.dicomweb.frames, with frames and rendered images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from sqlalchemy import select

from node.audit import AuditObject, EventCode
from node.db.models import Instance, Series, Study
from node.dicomweb.context import audit, base_url, ctx
from node.dicomweb.multipart import build_multipart, new_boundary, related_content_type
from node.dicomweb.problems import Problem

router = APIRouter()
DICOM_JSON = "application/dicom+json"
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024


def _instances(request: Request, study: str, series: str | None = None,
               instance: str | None = None) -> list[tuple[str, str, str]]:
    """(sop uid, transfer syntax, absolute path) of what the URL names; 404 when nothing."""
    q = (select(Instance.sop_instance_uid, Instance.transfer_syntax_uid, Instance.path)
         .join(Series, Instance.series_pk == Series.id).join(Study, Series.study_pk == Study.id)
         .where(Study.study_instance_uid == study))
    if series:
        q = q.where(Series.series_instance_uid == series)
    if instance:
        q = q.where(Instance.sop_instance_uid == instance)
    q = q.order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    c = ctx(request)
    with c.db.session() as session:
        rows = session.execute(q).all()
    if not rows:
        raise Problem(404, "no such study, series or instance")
    root = Path(c.files.root)
    return [(uid, ts, str(root / rel)) for uid, ts, rel in rows]


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "*/*").lower()
    if not any(t in accept for t in ("*/*", "multipart/related", "application/dicom", "multipart/*")):
        raise Problem(406, "only multipart/related; type=\"application/dicom\" (as stored) is offered")


def _retrieve(request: Request, study: str, series: str | None, instance: str | None) -> Response:
    _check_accept(request)
    rows = _instances(request, study, series, instance)
    audit(request, EventCode.INSTANCES_TRANSFERRED, desc=f"WADO-RS: {len(rows)} instances", source=False,
          objects=[AuditObject(type="study", id=study)])
    boundary = new_boundary()

    def parts():
        for _uid, ts, path in rows:
            with open(path, "rb") as f:
                body = f.read()
            yield {"Content-Type": f"application/dicom; transfer-syntax={ts}",
                   "Content-Length": str(len(body))}, body

    return StreamingResponse(build_multipart(parts(), boundary),
                             media_type=related_content_type("application/dicom", boundary))


def instance_path(request: Request, study: str, series: str, instance: str) -> Path:
    """The stored file of one instance; 404 when the index does not hold it."""
    return Path(_instances(request, study, series, instance)[0][2])


def _metadata(request: Request, study: str, series: str | None, instance: str | None) -> Response:
    rows = _instances(request, study, series, instance)
    root = base_url(request)
    out: list[dict[str, Any]] = []
    for _uid, _ts, path in rows:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        out.append(_json_with_bulk_uris(ds, f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
                                            f"/instances/{ds.SOPInstanceUID}"))
    audit(request, EventCode.INSTANCES_TRANSFERRED, desc=f"WADO-RS metadata: {len(rows)} instances",
          source=False, objects=[AuditObject(type="study", id=study)])
    return JSONResponse(out, media_type=DICOM_JSON)


def _json_with_bulk_uris(ds: pydicom.Dataset, instance_url: str, prefix: str = "") -> dict[str, Any]:
    """DICOM JSON of ``ds`` with every large binary value replaced by a BulkDataURI under
    ``{instance_url}/bulkdata/`` (a nested value's path is ``tag/item/tag``). Pixel data (cut off
    by the caller's stop_before_pixels) is announced with a BulkDataURI when the header says the
    instance has an image."""
    out: dict[str, Any] = {}
    for elem in ds:
        tag = f"{elem.tag:08X}"
        if elem.VR == "SQ":
            items = [_json_with_bulk_uris(item, instance_url, f"{prefix}{tag}/{i}/") for i, item in enumerate(elem.value)]
            out[tag] = {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        elif elem.VR in BULK_VRS and elem.value is not None and len(elem.value) > BULK_THRESHOLD:
            out[tag] = {"vr": elem.VR, "BulkDataURI": f"{instance_url}/bulkdata/{prefix}{tag}"}
        else:
            out[tag] = elem.to_json_dict(bulk_data_element_handler=None, bulk_data_threshold=BULK_THRESHOLD)
    if not prefix and "Rows" in ds and "PixelData" not in ds:
        vr = "OW" if int(ds.get("BitsAllocated", 8) or 8) > 8 else "OB"
        out["7FE00010"] = {"vr": vr, "BulkDataURI": f"{instance_url}/bulkdata/7FE00010"}
    return dict(sorted(out.items()))


@router.get("/studies/{study}", summary="WADO-RS: retrieve a study")
def retrieve_study(request: Request, study: str) -> Response:
    return _retrieve(request, study, None, None)


@router.get("/studies/{study}/series/{series}", summary="WADO-RS: retrieve a series")
def retrieve_series(request: Request, study: str, series: str) -> Response:
    return _retrieve(request, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}", summary="WADO-RS: retrieve an instance")
def retrieve_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _retrieve(request, study, series, instance)


@router.get("/studies/{study}/metadata", summary="WADO-RS: study metadata")
def study_metadata(request: Request, study: str) -> Response:
    return _metadata(request, study, None, None)


@router.get("/studies/{study}/series/{series}/metadata", summary="WADO-RS: series metadata")
def series_metadata(request: Request, study: str, series: str) -> Response:
    return _metadata(request, study, series, None)


@router.get("/studies/{study}/series/{series}/instances/{instance}/metadata", summary="WADO-RS: instance metadata")
def instance_metadata(request: Request, study: str, series: str, instance: str) -> Response:
    return _metadata(request, study, series, instance)
