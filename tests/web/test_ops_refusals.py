"""Refusals on the HTTP side are audited (aggregated per client), odd inputs get problem documents
instead of 500s, and /healthz and /metrics tell the truth about disk floor, association slots and
the model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.polling import wait_until

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _entries(path: Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _web_node(tmp_path, make_settings, node_factory, **overrides):  # type: ignore[no-untyped-def]
    http = {"enabled": True, "host": "127.0.0.1", "port": 0, "token": TOKEN}
    node = node_factory(make_settings(tmp_path, http=http, **overrides))
    return node, f"http://127.0.0.1:{node.http_port}"


def test_wrong_tokens_are_audited_once_per_client_and_window(tmp_path, make_settings, node_factory) -> None:
    node, url = _web_node(tmp_path, make_settings, node_factory)
    with httpx.Client(base_url=url) as client:
        for i in range(20):
            headers = {"Authorization": f"Bearer guess-{i}"} if i % 2 else {}
            assert client.get("/dicomweb/studies", headers=headers).status_code == 401
    lines = [e for e in _entries(node.settings.audit.path) if e["outcome_desc"].startswith("http_401")]
    assert len(lines) == 1 and lines[0]["event_id"]["code"] == "110113"
    assert lines[0]["participants"][0]["network_address"] == "127.0.0.1"
    node.refusals.flush()
    lines = [e for e in _entries(node.settings.audit.path) if e["outcome_desc"].startswith("http_401")]
    assert len(lines) == 2 and lines[1]["objects"][0]["details"]["count"] == 19


@pytest.mark.parametrize(
    "request_args",
    [
        ("GET", "/dicomweb/studies", {"params": {"offset": "9223372036854775808"}}),
        ("GET", "/dicomweb/studies", {"params": {"limit": "-1", "offset": str(2**63)}}),
        ("GET", "/dicomweb/workitems", {"params": {"offset": "9223372036854775808"}}),
        ("PUT", "/dicomweb/workitems/1.2.3/state", {"content": b"[" * 100_000 + b"]" * 100_000}),
        ("PUT", "/dicomweb/workitems/1.2.3/state", {"json": {"00741000": {"vr": "CS", "Value": 5}}}),
        ("PUT", "/dicomweb/workitems/1.2.3/state", {"json": {"00741000": "IN PROGRESS"}}),
        ("PUT", "/dicomweb/workitems/1.2.3/state", {"json": {"00741000": {"vr": "CS", "Value": [{"a": 1}]}}}),
    ],
    ids=[
        "qido-offset-2^63",
        "qido-offset-2^63-limit",
        "ups-offset-2^63",
        "ups-nested-json",
        "ups-value-int",
        "ups-element-not-object",
        "ups-value-object",
    ],
)
def test_odd_inputs_get_400_problem_documents(request_args, tmp_path, make_settings, node_factory) -> None:
    _, url = _web_node(tmp_path, make_settings, node_factory)
    method, path, kwargs = request_args
    r = httpx.request(method, url + path, headers=AUTH, timeout=30, **kwargs)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["status"] == 400


def test_healthz_unhealthy_below_the_disk_floor_and_warned_at_start(
    tmp_path, make_settings, node_factory, capfd
) -> None:
    from node import oplog

    oplog.configure("warning")  # bind the operational log to the captured stderr
    node, url = _web_node(tmp_path, make_settings, node_factory, storage={"min_free_bytes": 10**18})
    assert "storage_below_floor" in capfd.readouterr().err
    r = httpx.get(url + "/healthz")
    assert r.status_code == 503
    assert r.json()["status"] == "unhealthy"
    assert any("below storage.min_free_bytes" in reason for reason in r.json()["reasons"])
    text = httpx.get(url + "/metrics", headers=AUTH).text
    free = next(line for line in text.splitlines() if line.startswith("triage_node_storage_free_bytes "))
    assert float(free.split()[1]) == pytest.approx(node.files.free_bytes(), rel=0.01)
    assert "triage_node_storage_floor_bytes 1e+18" in text


def test_healthz_unhealthy_while_every_association_slot_is_taken(tmp_path, make_settings, node_factory) -> None:
    node, url = _web_node(tmp_path, make_settings, node_factory, dicom={"max_associations": 1})
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    ae = AE(ae_title="PYSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", node.listener.port, ae_title="TRIAGE_NODE")
    assert assoc.is_established
    try:
        r = httpx.get(url + "/healthz")
        assert r.status_code == 503
        assert "every DICOM association slot is taken" in r.json()["reasons"]
        assert r.json()["checks"]["associations"] == {"active": 1, "max": 1}
        text = httpx.get(url + "/metrics", headers=AUTH).text
        assert "triage_node_associations_active 1.0" in text
        assert "triage_node_connections_pending 0.0" in text
    finally:
        assoc.release()


def test_healthz_degraded_while_the_model_is_not_loaded(tmp_path, make_settings, node_factory) -> None:
    missing = tmp_path / "no-model-here"
    node, url = _web_node(
        tmp_path,
        make_settings,
        node_factory,
        triage={"enabled": True},
        model={"path": str(missing), "offline": True, "retry_load_seconds": 3600},
    )
    wait_until(lambda: node.worker.model_error not in ("", "not loaded yet"), 60, "the failed model load", interval=0.1)
    assert node.worker.model is None
    r = httpx.get(url + "/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "degraded"
    assert any("no AI assessment" in reason for reason in body["reasons"])
    text = httpx.get(url + "/metrics", headers=AUTH).text
    assert 'triage_node_model_state{state="not_loaded"} 1.0' in text


def test_healthz_degraded_while_a_model_call_is_stuck_past_its_deadline(
    tmp_path, make_settings, node_factory, tiny_model_dir
) -> None:
    """A loaded model that stops answering (a stuck GPU) still reads "loaded"; /healthz must say
    that studies get no AI assessment while a call hangs past model.timeout_seconds, and go back
    to ok when it ends. The stuck call is staged through the worker's own DeadlineRunner."""
    import threading

    from node.triage.infer import InferenceTimeout

    node, url = _web_node(
        tmp_path,
        make_settings,
        node_factory,
        triage={"enabled": True},
        model={"path": str(tiny_model_dir), "offline": True, "device": "cpu"},
    )
    wait_until(lambda: node.worker.model is not None, 60, "the tiny model to load", interval=0.1)
    assert httpx.get(url + "/healthz").json()["status"] == "ok"

    release = threading.Event()
    with pytest.raises(InferenceTimeout):
        node.worker.runner.run(lambda: release.wait(60), 0.05)
    try:
        body = httpx.get(url + "/healthz").json()
        assert body["status"] == "degraded" and body["checks"]["model_calls_past_deadline"] == 1
        assert any("past model.timeout_seconds" in reason for reason in body["reasons"]), body["reasons"]
        text = httpx.get(url + "/metrics", headers=AUTH).text
        assert "triage_node_model_calls_past_deadline 1.0" in text
    finally:
        release.set()
    wait_until(lambda: httpx.get(url + "/healthz").json()["status"] == "ok", 30, "healthz back to ok", interval=0.1)
    assert httpx.get(url + "/healthz").json()["checks"]["model_calls_past_deadline"] == 0
