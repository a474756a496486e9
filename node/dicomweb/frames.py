"""WADO-RS pixel and bulk data: frames, bulk data and rendered images (PS3.18 10.4).

Why: OHIF (cornerstone's wadors image loader) asks for every image as
``.../instances/{uid}/frames/{n}`` and for encapsulated documents and other binary values through
the ``BulkDataURI`` that our metadata gives; without these routes no image renders.

- **frames**: ``multipart/related; type="application/octet-stream"``. A frame of a native
  (uncompressed) image is its raw little-endian bytes (``transfer-syntax=1.2.840.10008.1.2.1``);
  a frame of an encapsulated image is sent as stored (``image/jpeg``, ``image/jls``, ``image/jp2``
  ... with its transfer syntax) when the client accepts it (``transfer-syntax=*`` or that UID), and
  otherwise decoded to native bytes.
- **bulkdata**: ``.../instances/{uid}/bulkdata/{path}``, where path is the tag, or for a value
  inside a sequence ``tag/item/tag...`` (the URIs our metadata hands out). Multipart by default, a
  single part (the raw value) when the client asks for one media type that is not multipart.
- **rendered** and **thumbnail**: PNG (or JPEG) of the image as the triage model sees it
  (modality LUT, VOI window, MONOCHROME1 inverted, 8 bit), padded to a square; ``application/pdf``
  for an encapsulated PDF.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydicom.dataset import Dataset
from pydicom.encaps import generate_frames
from pydicom.uid import UID, ExplicitVRLittleEndian

from node.audit import AuditObject, EventCode
from node.dicomweb.context import audit
from node.dicomweb.multipart import build_multipart, new_boundary, parse_media_type, related_content_type
from node.dicomweb.problems import Problem
from node.dicomweb.wado import read_instance

router = APIRouter()
OCTET = "application/octet-stream"
RENDER_MAX = 1024
THUMBNAIL = 256

#: media type of a frame of an encapsulated transfer syntax (PS3.18 Table 8.7.3-2)
MEDIA_TYPE_OF_TS = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
}


def _accepted(request: Request) -> list[tuple[str, dict[str, str]]]:
    """The Accept header as (media type, params) pairs; the ``type`` of multipart/related is
    unwrapped, so ``multipart/related; type=application/octet-stream`` reads as application/octet-stream."""
    out = []
    for raw in request.headers.get("accept", "*/*").split(","):
        media, params = parse_media_type(raw.strip())
        if media == "multipart/related":
            inner, inner_params = parse_media_type(params.get("type", OCTET))
            inner_params.update({k: v for k, v in params.items() if k == "transfer-syntax"})
            out.append((inner, inner_params))
        elif media in ("*/*", "multipart/*"):
            out.append(("*/*", params))
        else:
            out.append((media, params))
    return out or [("*/*", {})]


def _frame_numbers(frames: str, count: int) -> list[int]:
    try:
        numbers = [int(x) for x in frames.split(",") if x.strip()]
    except ValueError:
        raise Problem(400, "frame numbers must be integers separated by commas") from None
    if not numbers:
        raise Problem(400, "no frame number given")
    bad = [n for n in numbers if not 1 <= n <= count]
    if bad:
        raise Problem(404, f"frame {bad[0]} does not exist (the instance has {count})")
    return numbers


def _native_frames(ds: Dataset, numbers: list[int]) -> list[bytes]:
    """Raw little-endian bytes of the frames (native pixel data is sliced, not decoded, when it
    is already little-endian; otherwise decoded)."""
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.BitsAllocated)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    if not ts.is_compressed and ts.is_little_endian and bits % 8 == 0 and "PixelData" in ds:
        size = rows * cols * spp * bits // 8
        data = ds.PixelData
        return [bytes(data[(n - 1) * size : n * size]) for n in numbers]
    out = []
    for n in numbers:
        arr = pydicom.pixels.pixel_array(ds, index=n - 1, raw=True)
        if spp > 1 and str(ds.get("PlanarConfiguration", 0)) == "1":
            arr = np.moveaxis(arr, -1, 0)  # keep the stored planar layout
        out.append(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
    return out


def _multipart(parts: list[tuple[str, bytes]], root_type: str) -> Response:
    boundary = new_boundary()
    body = b"".join(
        build_multipart(((({"Content-Type": ct, "Content-Length": str(len(b))}), b) for ct, b in parts), boundary)
    )
    return Response(body, media_type=related_content_type(root_type, boundary))


@router.get("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", summary="WADO-RS: retrieve frames")
def retrieve_frames(request: Request, study: str, series: str, instance: str, frames: str) -> Response:
    ds = read_instance(request, study, series, instance)
    if "PixelData" not in ds:
        raise Problem(404, "the instance has no pixel data (no frames)")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    numbers = _frame_numbers(frames, count)
    ts = UID(ds.file_meta.TransferSyntaxUID)
    accepted = _accepted(request)
    as_stored = False
    if ts.is_compressed:
        media = MEDIA_TYPE_OF_TS.get(str(ts), OCTET)
        for m, params in accepted:
            wanted_ts = params.get("transfer-syntax", "")
            if (m in (media, "*/*", OCTET) and wanted_ts in ("*", str(ts))) or (m == media and not wanted_ts):
                as_stored = True
    if not as_stored and not any(m in (OCTET, "*/*") for m, _ in accepted):
        raise Problem(
            406,
            "frames are offered as application/octet-stream (native) or as stored "
            f"({MEDIA_TYPE_OF_TS.get(str(ts), OCTET)}; transfer-syntax={ts})",
        )
    if as_stored:
        all_frames = list(generate_frames(ds.PixelData, number_of_frames=count))
        parts = [(f"{media}; transfer-syntax={ts}", all_frames[n - 1]) for n in numbers]
        root = media
    else:
        try:
            parts = [(f"{OCTET}; transfer-syntax={ExplicitVRLittleEndian}", b) for b in _native_frames(ds, numbers)]
        except Exception as exc:
            raise Problem(
                406, f"the frames cannot be decoded here ({type(exc).__name__}); ask for transfer-syntax={ts}"
            ) from None
        root = OCTET
    audit(
        request,
        EventCode.INSTANCES_TRANSFERRED,
        desc=f"WADO-RS frames: {len(numbers)}",
        source=False,
        objects=[AuditObject(type="study", id=study)],
    )
    return _multipart(parts, root)


def _element_at(ds: Dataset, tag_path: str) -> bytes:
    parts = [p for p in tag_path.split("/") if p]
    current: Dataset = ds
    try:
        for i, part in enumerate(parts):
            if i % 2 == 0:
                elem = current[int(part, 16)]
                if i == len(parts) - 1:
                    value = elem.value
                    if value is None:
                        return b""
                    if isinstance(value, (bytes, bytearray)):
                        return bytes(value)
                    raise Problem(404, f"{part} is not a binary (bulk data) element")
            else:
                current = elem.value[int(part)]
    except (KeyError, IndexError, ValueError, TypeError):
        raise Problem(404, f"no bulk data at {tag_path}") from None
    raise Problem(404, f"no bulk data at {tag_path}")


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/bulkdata/{tag_path:path}",
    summary="WADO-RS: retrieve bulk data (the BulkDataURI of the metadata)",
)
def retrieve_bulkdata(request: Request, study: str, series: str, instance: str, tag_path: str) -> Response:
    ds = read_instance(request, study, series, instance)
    value = _element_at(ds, tag_path)
    audit(
        request,
        EventCode.INSTANCES_TRANSFERRED,
        desc="WADO-RS bulk data",
        source=False,
        objects=[AuditObject(type="study", id=study)],
    )
    accept = request.headers.get("accept", "*/*").lower()
    single = [m for m, _ in _accepted(request)]
    if "multipart" not in accept and single and single[0] not in ("*/*",):
        return Response(value, media_type=single[0])
    return _multipart([(OCTET, value)], OCTET)


def _png_or_jpeg(request: Request, pixels: np.ndarray) -> Response:
    from PIL import Image

    accepted = [m for m, _ in _accepted(request)]
    fmt, media = (
        ("JPEG", "image/jpeg") if "image/jpeg" in accepted and "image/png" not in accepted else ("PNG", "image/png")
    )
    if not any(m in ("image/png", "image/jpeg", "image/*", "*/*") for m in accepted):
        raise Problem(406, "rendered images are offered as image/png or image/jpeg")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return Response(buf.getvalue(), media_type=media)


def render_image(ds: Dataset, size: int) -> np.ndarray:
    """The image as 8-bit RGB, the way the triage model sees it (one frame, VOI applied, square)."""
    from node.triage.preprocess import PreprocessError, to_model_input

    try:
        pixels, _ = to_model_input(ds, size=size)
    except PreprocessError as exc:
        raise Problem(406, f"the instance cannot be rendered: {exc}") from None
    return pixels


def _rendered(request: Request, study: str, series: str, instance: str, max_size: int) -> Response:
    ds = read_instance(request, study, series, instance)
    audit(
        request,
        EventCode.INSTANCES_TRANSFERRED,
        desc="WADO-RS rendered",
        source=False,
        objects=[AuditObject(type="study", id=study)],
    )
    if "EncapsulatedDocument" in ds and str(ds.get("MIMETypeOfEncapsulatedDocument", "")) == "application/pdf":
        return Response(bytes(ds.EncapsulatedDocument), media_type="application/pdf")
    if "PixelData" not in ds:
        raise Problem(406, "the instance has no image to render")
    size = min(max(int(ds.Rows), int(ds.Columns)), max_size)
    return _png_or_jpeg(request, render_image(ds, size))


@router.get("/studies/{study}/series/{series}/instances/{instance}/rendered", summary="WADO-RS: rendered instance")
def rendered_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _rendered(request, study, series, instance, RENDER_MAX)


@router.get(
    "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered",
    summary="WADO-RS: rendered frame (single-frame images)",
)
def rendered_frame(request: Request, study: str, series: str, instance: str, frames: str) -> Response:
    ds = read_instance(request, study, series, instance, stop_before_pixels=True)
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if _frame_numbers(frames, count) != [1] or count > 1:
        # the renderer draws one chosen frame (as the model sees it); any other would be a lie
        raise Problem(406, "rendered frames are offered for frame 1 of single-frame images; use /frames")
    return _rendered(request, study, series, instance, RENDER_MAX)


@router.get("/studies/{study}/series/{series}/instances/{instance}/thumbnail", summary="WADO-RS: thumbnail")
def thumbnail_instance(request: Request, study: str, series: str, instance: str) -> Response:
    return _rendered(request, study, series, instance, THUMBNAIL)
