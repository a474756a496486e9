"""DICOMweb and operations endpoints against the node's real uvicorn server (loopback, port 0).

STOW/QIDO/WADO through ``dicomweb-client``; refusals, UPS-RS and operations through httpx.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from requests.exceptions import HTTPError
from sqlalchemy import func, select

from node.db.models import Instance, WorklistItem
from tests.support.config import make_settings, triage_sections
from tests.support.polling import wait_until

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 3_000_000


def _instance_count(node) -> int:  # type: ignore[no-untyped-def]
    with node.db.session() as session:
        return session.execute(select(func.count()).select_from(Instance)).scalar_one()


def _stored_files(node) -> list[Path]:  # type: ignore[no-untyped-def]
    return [p for p in Path(node.files.root).rglob("*") if p.is_file() and ".incoming" not in p.parts]


def _multipart(parts: list[tuple[str, bytes]], boundary: str = "XyZbOuNdArY") -> tuple[bytes, str]:
    body = (
        b"".join(
            b"--" + boundary.encode() + b"\r\nContent-Type: " + ct.encode() + b"\r\n\r\n" + data + b"\r\n"
            for ct, data in parts
        )
        + b"--"
        + boundary.encode()
        + b"--\r\n"
    )
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _settings(root: Path):  # type: ignore[no-untyped-def]
    """A node on loopback with HTTP on port 0 and a body limit (built for module-scoped nodes)."""
    return make_settings(
        root, dicom={"allowed_peers": ["STORESCU"]}, http={"enabled": True, "token": TOKEN, "max_body_bytes": MAX_BODY}
    )


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory, session_dicom_factory, module_node_factory):  # type: ignore[no-untyped-def]
    node = module_node_factory(_settings(tmp_path_factory.mktemp("web")))
    return node, f"http://127.0.0.1:{node.http_port}", session_dicom_factory


@pytest.fixture(scope="module")
def stored_study(web):  # type: ignore[no-untyped-def]
    _node, url, factory = web
    paths = factory.mr_small(n=3, size=32, out_dir="web-study")
    datasets = [pydicom.dcmread(p) for p in paths]
    client = DICOMwebClient(url=f"{url}/dicomweb", headers=AUTH)
    response = client.store_instances(datasets)
    return datasets, response


def _without_pixels(ds: Dataset) -> Dataset:
    out = Dataset()
    for elem in ds:
        if elem.keyword != "PixelData":
            out.add(elem)
    return out


def test_stow_qido_wado_roundtrip(web, stored_study) -> None:  # type: ignore[no-untyped-def]
    node, url, _ = web
    datasets, response = stored_study
    study = datasets[0].StudyInstanceUID
    assert len(response.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in response
    assert response.RetrieveURL.endswith(f"/dicomweb/studies/{study}")
    client = DICOMwebClient(url=f"{url}/dicomweb", headers=AUTH)

    studies = client.search_for_studies(search_filters={"PatientID": datasets[0].PatientID})
    assert [Dataset.from_json(s).StudyInstanceUID for s in studies] == [study]
    found = Dataset.from_json(studies[0])
    assert found.ModalitiesInStudy == "MR" and found.NumberOfStudyRelatedInstances == 3
    name = str(datasets[0].PatientName)
    assert len(client.search_for_studies(search_filters={"PatientName": name[:6] + "*"})) >= 1
    assert client.search_for_studies(search_filters={"PatientName": "NOBODY*"}) == []
    assert (
        len(client.search_for_studies(search_filters={"StudyDate": "20240101-20241231", "ModalitiesInStudy": "MR"}))
        == 1
    )
    assert client.search_for_studies(search_filters={"StudyDate": "20250101-"}) == []
    assert len(client.search_for_studies(search_filters={"StudyInstanceUID": study})) == 1
    series = client.search_for_series(study_instance_uid=study)
    assert [Dataset.from_json(s).SeriesInstanceUID for s in series] == [
        datasets[0].SeriesInstanceUID,
        datasets[1].SeriesInstanceUID,
    ]
    instances = client.search_for_instances(study_instance_uid=study, series_instance_uid=datasets[0].SeriesInstanceUID)
    assert {Dataset.from_json(i).SOPInstanceUID for i in instances} == {
        datasets[0].SOPInstanceUID,
        datasets[2].SOPInstanceUID,
    }
    assert len(client.search_for_instances(study_instance_uid=study)) == 3
    assert len(client.search_for_instances(limit=2, search_filters={"StudyInstanceUID": study})) == 2
    assert len(client.search_for_series(search_filters={"Modality": "MR"})) >= 1

    retrieved = client.retrieve_study(study)
    originals = {d.SOPInstanceUID: d for d in datasets}
    assert len(retrieved) == 3
    for ds in retrieved:
        original = originals[ds.SOPInstanceUID]
        assert ds == original
        assert ds.PixelData == original.PixelData
    one = datasets[1]
    inst = client.retrieve_instance(study, one.SeriesInstanceUID, one.SOPInstanceUID)
    assert inst == one
    meta = client.retrieve_instance_metadata(study, one.SeriesInstanceUID, one.SOPInstanceUID)
    pixel_uri = meta.pop("7FE00010")["BulkDataURI"]  # pixel data is announced, not inlined
    assert pixel_uri.endswith(f"/instances/{one.SOPInstanceUID}/bulkdata/7FE00010")
    # (the URI's host is the Host header dicomweb-client sent, without the port: fetch on our URL)
    single = httpx.get(
        url + pixel_uri[pixel_uri.index("/dicomweb/") :], headers={**AUTH, "Accept": "application/octet-stream"}
    )
    assert single.status_code == 200 and single.content == one.PixelData
    assert Dataset.from_json(meta) == _without_pixels(one)
    assert len(client.retrieve_series_metadata(study, one.SeriesInstanceUID)) == 1
    assert len(client.retrieve_series(study, datasets[0].SeriesInstanceUID)) == 2
    assert len(client.retrieve_study_metadata(study)) == 3

    # Storing the same study again: duplicates are successes (kept the first copy).
    before = _instance_count(node)
    again = client.store_instances(datasets[:1], study_instance_uid=study)
    assert len(again.ReferencedSOPSequence) == 1 and _instance_count(node) == before


def test_auth_refused_and_healthz_open(web) -> None:  # type: ignore[no-untyped-def]
    _, url, _ = web
    for path in ("/dicomweb/studies", "/metrics", "/worklist", "/dicomweb/workitems", "/openapi.json"):
        r = httpx.get(url + path)
        assert r.status_code == 401, path
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["status"] == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(url + "/dicomweb/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
    client = DICOMwebClient(url=f"{url}/dicomweb")
    with pytest.raises(HTTPError) as err:
        client.search_for_studies()
    assert err.value.response.status_code == 401
    r = httpx.get(url + "/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["checks"]["database"] == "ok" and body["checks"]["storage"] == "ok"
    assert body["checks"]["model"] == "triage disabled"
    r = httpx.get(url + "/dicomweb/studies/1.2.3.999", headers=AUTH)
    assert r.status_code == 404 and r.headers["content-type"].startswith("application/problem+json")
    assert httpx.get(url + "/dicomweb/studies", params={"NoSuchKeyword": "x"}, headers=AUTH).status_code == 400
    r = httpx.get(url + "/dicomweb/studies", params={"PatientComments": "x"}, headers=AUTH)
    assert r.status_code == 200 and "ignored" in r.headers["warning"]
    schema = httpx.get(url + "/openapi.json", headers=AUTH).json()
    assert "/dicomweb/studies" in schema["paths"] and "/dicomweb/workitems/{uid}/state" in schema["paths"]


def test_refusals_store_nothing(web) -> None:  # type: ignore[no-untyped-def]
    node, url, factory = web
    before, files_before = _instance_count(node), len(_stored_files(node))
    good = factory.mr_small(n=1, size=16, out_dir="web-refusals")[0].read_bytes()
    post = f"{url}/dicomweb/studies"

    # 415: not multipart/related application/dicom
    r = httpx.post(post, content=good, headers={**AUTH, "Content-Type": "application/dicom"})
    assert r.status_code == 415 and r.json()["title"] == "Unsupported Media Type"
    body, ct = _multipart([("application/dicom", good)])
    r = httpx.post(
        post, content=body, headers={**AUTH, "Content-Type": ct.replace("application/dicom", "application/dicom+json")}
    )
    assert r.status_code == 415
    # 400: malformed multipart (wrong boundary, truncated)
    r = httpx.post(post, content=body, headers={**AUTH, "Content-Type": ct.replace("XyZbOuNdArY", "other")})
    assert r.status_code == 400 and "multipart" in r.json()["detail"]
    r = httpx.post(post, content=body[: len(body) // 2], headers={**AUTH, "Content-Type": ct})
    assert r.status_code == 400
    # 409: every part fails (a non-DICOM part, garbage labelled DICOM)
    body, ct = _multipart([("text/plain", b"hello"), ("application/dicom", b"\x00" * 300)])
    r = httpx.post(post, content=body, headers={**AUTH, "Content-Type": ct})
    assert r.status_code == 409 and r.headers["content-type"].startswith("application/dicom+json")
    failed = Dataset.from_json(r.json()).FailedSOPSequence
    assert len(failed) == 2 and all(item.FailureReason for item in failed)
    # 409: study UID in the URL does not match the instance
    body, ct = _multipart([("application/dicom", good)])
    r = httpx.post(f"{post}/1.2.3.4.5", content=body, headers={**AUTH, "Content-Type": ct})
    assert r.status_code == 409
    # 413: over max_body_bytes, by Content-Length and while streaming (chunked, no length)
    big = b"\x00" * (MAX_BODY + 10)
    body, ct = _multipart([("application/dicom", big)])
    r = httpx.post(post, content=body, headers={**AUTH, "Content-Type": ct})
    assert r.status_code == 413

    def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    r = httpx.post(post, content=chunks(), headers={**AUTH, "Content-Type": ct})
    assert r.status_code == 413
    assert _instance_count(node) == before and len(_stored_files(node)) == files_before

    # 202: one good part, one bad part -> the good one is stored, the bad one reported
    body, ct = _multipart([("application/dicom", good), ("application/octet-stream", b"junk")])
    r = httpx.post(post, content=body, headers={**AUTH, "Content-Type": ct})
    assert r.status_code == 202
    resp = Dataset.from_json(r.json())
    assert len(resp.ReferencedSOPSequence) == 1 and len(resp.FailedSOPSequence) == 1
    assert _instance_count(node) == before + 1


def test_metrics_move_after_store(web) -> None:  # type: ignore[no-untyped-def]
    _, url, factory = web

    def stored() -> float:
        text = httpx.get(url + "/metrics", headers=AUTH).text
        for line in text.splitlines():
            if line.startswith('triage_node_instances_received_total{outcome="stored"}'):
                return float(line.split()[-1])
        return 0.0

    first = stored()
    assert "triage_node_queue_depth" in httpx.get(url + "/metrics", headers=AUTH).text
    client = DICOMwebClient(url=f"{url}/dicomweb", headers=AUTH)
    client.store_instances([pydicom.dcmread(p) for p in factory.mr_small(n=2, size=16, out_dir="web-metrics")])
    assert stored() == first + 2


# --------------------------------------------------------------------------- UPS-RS after triage
def _state(client: httpx.Client, uid: str, state: str, transaction: str) -> httpx.Response:
    body = {"00741000": {"vr": "CS", "Value": [state]}, "00081195": {"vr": "UI", "Value": [transaction]}}
    return client.put(f"/dicomweb/workitems/{uid}/state", json=body, headers={"Content-Type": "application/dicom+json"})


def test_ups_rs_workitems_after_triage(
    tmp_path: Path,
    node_factory,
    make_settings,  # type: ignore[no-untyped-def]
    dicom_factory,
    tiny_model_dir: Path,
) -> None:
    settings = make_settings(
        tmp_path, http={"enabled": True, "port": 0, "token": TOKEN}, **triage_sections(tiny_model_dir)
    )
    node = node_factory(settings)
    url = f"http://127.0.0.1:{node.http_port}"
    chest = [pydicom.dcmread(dicom_factory.dx_image(rows=256, cols=200)) for _ in range(2)]
    DICOMwebClient(url=f"{url}/dicomweb", headers=AUTH).store_instances(chest)
    studies = {d.StudyInstanceUID for d in chest}

    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        items: list[Any] = wait_until(
            lambda: (lambda got: got if len(got) >= len(studies) else None)(client.get("/dicomweb/workitems").json()),
            60,
            "a workitem per study",
            interval=0.3,
        )
        workitems = [Dataset.from_json(i) for i in items]
        assert sorted(w.StudyInstanceUID for w in workitems) == sorted(studies)
        assert {w.ScheduledProcedureStepPriority for w in workitems} <= {"HIGH", "MEDIUM"}
        assert all(w.ProcedureStepState == "SCHEDULED" and "TransactionUID" not in w for w in workitems)
        for w in workitems:  # the study's series as input, our SR referenced
            row = next(
                r
                for r in node.db.session().execute(select(WorklistItem)).scalars()
                if r.study_instance_uid == w.StudyInstanceUID
            )
            assert w.ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == row.sr_sop_instance_uid
            assert w.InputInformationSequence[0].StudyInstanceUID == w.StudyInstanceUID
        rows = client.get("/worklist").json()
        assert {r["study_instance_uid"] for r in rows} == studies
        assert client.get("/healthz").json()["checks"]["model"] == "loaded"

        uid = workitems[0].SOPInstanceUID
        one = Dataset.from_json(client.get(f"/dicomweb/workitems/{uid}").json()[0])
        assert one.SOPInstanceUID == uid
        assert client.get("/dicomweb/workitems/1.2.3.999").status_code == 404
        transaction = pydicom.uid.generate_uid()
        assert _state(client, uid, "COMPLETED", transaction).status_code == 409  # not claimed yet
        assert _state(client, uid, "IN PROGRESS", "not a uid").status_code == 400
        assert _state(client, uid, "IN PROGRESS", transaction).status_code == 200
        assert _state(client, uid, "IN PROGRESS", pydicom.uid.generate_uid()).status_code == 409  # held
        high_first = client.get("/dicomweb/workitems", params={"ScheduledProcedureStepPriority": "HIGH"}).json()
        assert all(Dataset.from_json(h).ScheduledProcedureStepPriority == "HIGH" for h in high_first)
        assert len(client.get("/dicomweb/workitems", params={"limit": 1}).json()) == 1
        claimed = client.get("/dicomweb/workitems", params={"ProcedureStepState": "IN PROGRESS"}).json()
        assert [Dataset.from_json(c).SOPInstanceUID for c in claimed] == [uid]
        assert _state(client, uid, "COMPLETED", pydicom.uid.generate_uid()).status_code == 409  # wrong txn
        assert _state(client, uid, "COMPLETED", transaction).status_code == 200
        done = Dataset.from_json(client.get(f"/dicomweb/workitems/{uid}").json()[0])
        assert done.ProcedureStepState == "COMPLETED"
        r = _state(client, uid, "COMPLETED", transaction)
        assert r.status_code == 200 and "already" in r.headers["warning"]
        # the other item: claim then cancel
        other = workitems[1].SOPInstanceUID
        t2 = pydicom.uid.generate_uid()
        assert _state(client, other, "IN PROGRESS", t2).status_code == 200
        assert _state(client, other, "CANCELED", t2).status_code == 200
