"""WADO-RS pixel and bulk data as a viewer (OHIF / cornerstone) asks for them, against the node's real
HTTP server: frames (native and as stored), bulk data URIs from the metadata, rendered images and
thumbnails, refusals, and CORS for a viewer on another origin."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import JPEG2000Lossless, RLELossless

from node.dicomweb.multipart import parse_media_type, parse_multipart
from tests.support.config import make_settings

TOKEN = "pixels-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VIEWER_ORIGIN = "http://viewer.example:3000"


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, session_dicom_factory, module_node_factory):  # type: ignore[no-untyped-def]
    node = module_node_factory(
        make_settings(
            tmp_path_factory.mktemp("pixels"),
            dicom={"allowed_peers": ["STORESCU"]},
            http={"enabled": True, "token": TOKEN, "cors_origins": [VIEWER_ORIGIN]},
        )
    )
    factory = session_dicom_factory
    paths = [
        factory.mr_small(n=2, size=32, out_dir="pixels-mr")[0],
        factory.compressed(RLELossless, out_dir="px-rle"),
        factory.compressed(JPEG2000Lossless, out_dir="px-j2k"),
    ]
    client = httpx.Client(base_url=f"http://127.0.0.1:{node.http_port}/dicomweb", headers=AUTH, timeout=30)
    for path in paths:
        body = path.read_bytes()
        boundary = "b0undary"
        payload = (
            f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + body
            + f"\r\n--{boundary}--\r\n".encode()
        )
        r = client.post(
            "/studies",
            content=payload,
            headers={"Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'},
        )
        assert r.status_code == 200, r.text
    try:
        yield node, client, [pydicom.dcmread(p) for p in paths]
    finally:
        client.close()


def _url(ds: pydicom.Dataset) -> str:
    return f"/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def _parts(response: httpx.Response) -> list[Any]:
    media, params = parse_media_type(response.headers["content-type"])
    assert media == "multipart/related", response.headers["content-type"]
    return parse_multipart(response.content, params["boundary"])


def test_native_frame_is_the_raw_pixel_bytes(web) -> None:  # type: ignore[no-untyped-def]
    _, client, (mr, _, _) = web
    r = client.get(
        f"{_url(mr)}/frames/1",
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    assert r.status_code == 200
    (part,) = _parts(r)
    assert part.content_type == "application/octet-stream; transfer-syntax=1.2.840.10008.1.2.1"
    assert bytes(part.body) == mr.PixelData
    assert client.get(f"{_url(mr)}/frames/2").status_code == 404
    assert client.get(f"{_url(mr)}/frames/x").status_code == 400
    assert client.get(f"{_url(mr)}/frames/1", headers={"Accept": "image/png"}).status_code == 406


@pytest.mark.parametrize("which, media", [(1, "image/dicom-rle"), (2, "image/jp2")])
def test_compressed_frame_as_stored_or_decoded(web, which: int, media: str) -> None:  # type: ignore[no-untyped-def]
    _, client, datasets = web
    ds = datasets[which]
    ts = str(ds.file_meta.TransferSyntaxUID)
    stored = client.get(
        f"{_url(ds)}/frames/1",
        headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"},
    )
    (part,) = _parts(stored)
    assert part.content_type == f"{media}; transfer-syntax={ts}"
    assert bytes(part.body) == next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1))

    decoded = client.get(f"{_url(ds)}/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"})
    (part,) = _parts(decoded)
    assert part.content_type.endswith("transfer-syntax=1.2.840.10008.1.2.1")
    expected = ds.pixel_array
    assert np.array_equal(np.frombuffer(bytes(part.body), dtype=expected.dtype).reshape(expected.shape), expected)


def test_metadata_bulk_data_uris_resolve(web) -> None:  # type: ignore[no-untyped-def]
    _, client, (mr, _, _) = web
    (meta,) = client.get(f"{_url(mr)}/metadata").json()
    uri = meta["7FE00010"]["BulkDataURI"]
    assert uri.startswith("http://127.0.0.1:") and uri.endswith("/bulkdata/7FE00010")
    (part,) = _parts(client.get(uri))
    assert bytes(part.body) == mr.PixelData
    single = client.get(uri, headers={"Accept": "application/octet-stream"})
    assert single.headers["content-type"] == "application/octet-stream" and single.content == mr.PixelData
    assert client.get(f"{_url(mr)}/bulkdata/00100010").status_code == 404  # not binary
    assert client.get(f"{_url(mr)}/bulkdata/7FE10010").status_code == 404  # absent


def test_rendered_and_thumbnail_are_images(web) -> None:  # type: ignore[no-untyped-def]
    _, client, (mr, rle, _) = web
    png = client.get(f"{_url(mr)}/rendered", headers={"Accept": "image/png"})
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    img = np.asarray(Image.open(io.BytesIO(png.content)))
    assert img.shape[:2] == (32, 32) and img.std() > 1
    jpeg = client.get(f"{_url(rle)}/thumbnail", headers={"Accept": "image/jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(jpeg.content)).size == (128, 128)
    assert client.get(f"{_url(mr)}/rendered", headers={"Accept": "application/dicom"}).status_code == 406
    frame = client.get(f"{_url(mr)}/frames/1/rendered", headers={"Accept": "image/png"})
    assert frame.status_code == 200 and frame.content == png.content
    assert client.get(f"{_url(mr)}/frames/2/rendered").status_code == 404


def test_cors_lets_the_configured_viewer_origin_in_and_still_needs_the_token(web) -> None:  # type: ignore[no-untyped-def]
    node, client, (_mr, _, _) = web
    base = f"http://127.0.0.1:{node.http_port}/dicomweb"
    preflight = httpx.options(
        f"{base}/studies",
        headers={
            "Origin": VIEWER_ORIGIN,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == VIEWER_ORIGIN
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    other = httpx.options(
        f"{base}/studies", headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"}
    )
    assert "access-control-allow-origin" not in other.headers
    assert httpx.get(f"{base}/studies", headers={"Origin": VIEWER_ORIGIN}).status_code == 401
    ok = client.get("/studies", headers={"Origin": VIEWER_ORIGIN})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == VIEWER_ORIGIN


def test_config_send_lists_and_old_single_values() -> None:
    from node.config import ConfigError, load_settings

    def send_of(value: str) -> tuple[str, ...]:
        env = {"TRIAGE_NODE__FORWARD": f'[{{ae_title = "P", host = "h", port = 104, send = {value} }}]'}
        return load_settings(None, env).forward[0].send

    assert send_of('"sr"') == ("sr",)
    assert send_of('"study"') == ("study",)
    assert send_of('"both"') == ("sr", "study")
    assert send_of('["sr", "sc", "pdf", "study"]') == ("sr", "sc", "pdf", "study")
    for bad in ('"all"', '["sr", "xml"]', "[]"):
        with pytest.raises(ConfigError, match="forward.0.send"):
            send_of(bad)


def test_hl7_and_fhir_destinations_are_checked_at_start(tmp_path: Path) -> None:
    from node.config import ConfigError, load_settings

    cfg = tmp_path / "node.toml"
    cfg.write_text(
        '[[hl7]]\nhost = "ris"\nport = 2575\npriority_update = true\n'
        '[[fhir]]\nurl = "https://fhir.example/r5/"\ntoken_env = "FHIR_TOKEN"\n'
        "[results]\nsummary_card = true\n"
    )
    settings = load_settings(cfg, {})
    assert settings.hl7[0].priority_update and settings.fhir[0].url == "https://fhir.example/r5"
    cfg.write_text('[[fhir]]\nurl = "fhir.example"\n')
    with pytest.raises(ConfigError, match="fhir.0.url"):
        load_settings(cfg, {})
    cfg.write_text('[[hl7]]\nhost = "ris"\nport = 70000\n')
    with pytest.raises(ConfigError, match="hl7.0.port"):
        load_settings(cfg, {})
