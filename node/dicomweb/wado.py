"""WADO-RS: studies, series and instances as stored (multipart/related; type="application/dicom"),
and their metadata as application/dicom+json in which pixel data and any binary value over 1 KiB
are a ``BulkDataURI`` (served by node.dicomweb.frames, with frames and rendered images).
"""

from __future__ import annotations

from typing import Any

import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydicom.dataset import Dataset

from node.audit import AuditObject, EventCode
from node.dicomweb.context import audit, base_url, ctx
from node.dicomweb.multipart import build_multipart, new_boundary, related_content_type
from node.dicomweb.problems import Problem
from node.store.read import StoredInstance, instances_of_study

router = APIRouter()
DICOM_JSON = "application/dicom+json"
BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
BULK_THRESHOLD = 1024


def _instances(
    request: Request, study: str, series: str | None = None, instance: str | None = None
) -> list[StoredInstance]:
    """What the URL names, in reading order; 404 when nothing."""
    rows = instances_of_study(ctx(request).db, study, series_uid=series, sop_uids=[instance] if instance else None)
    if not rows:
        raise Problem(404, "no such study, series or instance")
    return rows


def _check_accept(request: Request) -> None:
    accept = request.headers.get("accept", "*/*").lower()
    if not any(t in accept for t in ("*/*", "multipart/related", "application/dicom", "multipart/*")):
        raise Problem(406, 'only multipart/related; type="application/dicom" (as stored) is offered')


def _retrieve(request: Request, study: str, series: str | None, instance: str | None) -> Response:
    _check_accept(request)
    rows = _instances(request, study, series, instance)
    audit(
        request,
        EventCode.INSTANCES_TRANSFERRED,
        desc=f"WADO-RS: {len(rows)} instances",
        source=False,
        objects=[AuditObject(type="study", id=study)],
    )
    boundary = new_boundary()

    files = ctx(request).files

    def parts():
        for row in rows:
            with files.open(row.path) as f:
                body = f.read()
            yield (
                {
                    "Content-Type": f"application/dicom; transfer-syntax={row.transfer_syntax_uid}",
                    "Content-Length": str(len(body)),
                },
                body,
            )

    return StreamingResponse(
        build_multipart(parts(), boundary), media_type=related_content_type("application/dicom", boundary)
    )


def read_instance(
    request: Request, study: str, series: str, instance: str, *, stop_before_pixels: bool = False
) -> Dataset:
    """One stored instance (header only with ``stop_before_pixels``); 404 when the index does not
    hold it, 500 as a problem when its file no longer parses (no traceback)."""
    rel = _instances(request, study, series, instance)[0].path
    files = ctx(request).files
    try:
        return files.read_header(rel, stop_before_pixels=True) if stop_before_pixels else files.read(rel)
    except Exception as exc:
        raise Problem(500, f"stored instance cannot be read: {type(exc).__name__}") from None


def _metadata(request: Request, study: str, series: str | None, instance: str | None) -> Response:
    rows = _instances(request, study, series, instance)
    root = base_url(request)
    out: list[dict[str, Any]] = []
    files = ctx(request).files
    for row in rows:
        ds = files.read_header(row.path, stop_before_pixels=True)
        out.append(
            _json_with_bulk_uris(
                ds, f"{root}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"
            )
        )
    audit(
        request,
        EventCode.INSTANCES_TRANSFERRED,
        desc=f"WADO-RS metadata: {len(rows)} instances",
        source=False,
        objects=[AuditObject(type="study", id=study)],
    )
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
            items = [
                _json_with_bulk_uris(item, instance_url, f"{prefix}{tag}/{i}/") for i, item in enumerate(elem.value)
            ]
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
