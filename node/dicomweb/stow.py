"""STOW-RS: POST /dicomweb/studies[/{study}] with multipart/related; type="application/dicom".

Each part is a Part-10 file; its data set bytes (after the file meta group) go unchanged
through Ingestor.store, the same durable path as C-STORE. Status (PS3.18 Table 10.5.3-1):
200 all stored, 202 some failed, 409 none stored, 415 wrong media type, 400 malformed body,
413 body over [http] max_body_bytes (from Content-Length, and counted while reading).
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydicom.filereader import _read_file_meta_info, read_preamble
from starlette.concurrency import run_in_threadpool

from node.audit import AuditObject, EventCode
from node.dicomweb.context import audit, base_url, ctx
from node.dicomweb.multipart import MultipartError, parse_media_type, parse_multipart
from node.dicomweb.problems import Problem
from node.store.header import BadDataset, parse_header
from node.store.ingest import CANNOT_UNDERSTAND, IDENTIFIER_MISMATCH

router = APIRouter()
DICOM_JSON = "application/dicom+json"
CALLING_AE = "DICOMWEB"
TS_NOT_SUPPORTED = 0xC122
PROCESSING_FAILURE = 0x0110


async def read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise Problem(413, f"body of {length} bytes exceeds the limit of {limit} bytes")
        except ValueError:
            raise Problem(400, "invalid Content-Length") from None
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            raise Problem(413, f"body exceeds the limit of {limit} bytes")
    return bytes(buf)


def _failure(sop_class: str, sop_uid: str, reason: int) -> dict[str, Any]:
    return {
        "00081150": {"vr": "UI", "Value": [sop_class]} if sop_class else {"vr": "UI"},
        "00081155": {"vr": "UI", "Value": [sop_uid]} if sop_uid else {"vr": "UI"},
        "00081197": {"vr": "US", "Value": [reason]},
    }


def _store_part(
    request: Request, body: bytes | memoryview, content_type: str, study: str | None
) -> tuple[bool, dict[str, Any], str]:
    """(stored, response item, study uid) for one part."""
    media, _params = parse_media_type(content_type)
    if media != "application/dicom":  # a non-DICOM part: nothing we can understand
        return False, _failure("", "", CANNOT_UNDERSTAND), ""
    data = bytes(body)
    fp = BytesIO(data)
    try:
        read_preamble(fp, False)
        meta = _read_file_meta_info(fp)
    except Exception:
        return False, _failure("", "", CANNOT_UNDERSTAND), ""
    sop_class = str(meta.get("MediaStorageSOPClassUID", ""))
    sop_uid = str(meta.get("MediaStorageSOPInstanceUID", ""))
    ts = str(meta.get("TransferSyntaxUID", ""))
    if not ts:
        return False, _failure(sop_class, sop_uid, TS_NOT_SUPPORTED), ""
    dataset_bytes = memoryview(data)[fp.tell() :]
    if study is not None:
        try:
            ds = parse_header(dataset_bytes, ts, max_inflated_bytes=ctx(request).ingestor.max_dataset_bytes)
        except BadDataset:
            return False, _failure(sop_class, sop_uid, CANNOT_UNDERSTAND), ""
        if str(ds.get("StudyInstanceUID", "")) != study:
            return False, _failure(sop_class, sop_uid, IDENTIFIER_MISMATCH), ""
    outcome = ctx(request).ingestor.store(
        meta,
        dataset_bytes,
        calling_ae=CALLING_AE,
        expected_sop_instance_uid=sop_uid or None,
        expected_sop_class_uid=sop_class or None,
    )
    if not outcome.ok or outcome.header is None:
        return False, _failure(sop_class, sop_uid, outcome.status or PROCESSING_FAILURE), ""
    h = outcome.header
    url = (
        f"{base_url(request)}/studies/{h.study_instance_uid}/series/{h.series_instance_uid}"
        f"/instances/{h.sop_instance_uid}"
    )
    item: dict[str, Any] = {
        "00081150": {"vr": "UI", "Value": [h.sop_class_uid]},
        "00081155": {"vr": "UI", "Value": [h.sop_instance_uid]},
        "00081190": {"vr": "UR", "Value": [url]},
    }
    return True, item, h.study_instance_uid


def _stow(request: Request, body: bytes, content_type: str, study: str | None) -> tuple[int, dict[str, Any], list[str]]:
    media, params = parse_media_type(content_type)
    if media != "multipart/related":
        raise Problem(415, f'expected multipart/related; type="application/dicom", got {media or "nothing"}')
    root = params.get("type", "application/dicom").lower()
    if root != "application/dicom":
        raise Problem(415, f'only type="application/dicom" parts are accepted (got {root})')
    try:
        parts = parse_multipart(body, params.get("boundary", ""))
    except MultipartError as exc:
        raise Problem(400, f"malformed multipart body: {exc}") from None
    if not parts:
        raise Problem(400, "the multipart body holds no parts")
    stored: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    studies: list[str] = []
    for part in parts:
        ok, item, study_uid = _store_part(request, part.body, part.headers.get("content-type", root), study)
        (stored if ok else failed).append(item)
        if ok and study_uid not in studies:
            studies.append(study_uid)
    result: dict[str, Any] = {}
    if len(studies) == 1 or study is not None:
        result["00081190"] = {"vr": "UR", "Value": [f"{base_url(request)}/studies/{study or studies[0]}"]}
    if stored:
        result["00081199"] = {"vr": "SQ", "Value": stored}
    if failed:
        result["00081198"] = {"vr": "SQ", "Value": failed}
    status = 200 if not failed else (202 if stored else 409)
    return status, result, studies


@router.post("/studies", summary="STOW-RS: store instances")
@router.post("/studies/{study}", summary="STOW-RS: store instances of one study")
async def store_instances(request: Request, study: str | None = None) -> JSONResponse:
    body = await read_body(request, ctx(request).settings.http.max_body_bytes)
    status, result, studies = await run_in_threadpool(
        _stow, request, body, request.headers.get("content-type", ""), study
    )
    stored = len(result.get("00081199", {}).get("Value", []))
    failed = len(result.get("00081198", {}).get("Value", []))
    await run_in_threadpool(
        audit,
        request,
        EventCode.INSTANCES_TRANSFERRED,
        outcome=0 if not failed else 4,
        desc=f"STOW-RS: {stored} stored, {failed} failed",
        objects=[AuditObject(type="study", id=s) for s in studies],
    )
    return JSONResponse(result, status_code=status, media_type=DICOM_JSON)


__all__ = ["read_body", "router"]
