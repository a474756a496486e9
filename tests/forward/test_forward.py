"""Durable forwarding to a real PACS (issue 4, item 1): Orthanc (Debian's `Orthanc` binary),
started by these tests on free loopback ports with its own config, is the [[forward]]
destination of an in-process node that receives chest studies from DCMTK's storescu.

- send = "sr": the study's SR ends in Orthanc without any manual step; export audited (110106);
- Orthanc stopped: the SR waits in the outbox (pending, attempts >= 1, listed by
  `triage-node outbox --json`) and arrives once Orthanc is back;
- past max age: a dead letter, listed, requeued by `outbox --retry ID`, then delivered;
- send = "both": the study's images travel too; enqueueing again adds nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

_E2E = str(Path(__file__).resolve().parents[1] / "e2e")
if _E2E not in sys.path:
    sys.path.append(_E2E)  # e2e_helpers: node configs, storescu, wait_until

from e2e_helpers import (  # noqa: E402
    NodeConfig,
    clean_env,
    cli_command,
    e2e_free_port,
    node_config,
    storescu,
    wait_until,
    worklist_row,
)

ORTHANC_BIN = shutil.which("Orthanc")
pytestmark = [
    pytest.mark.dcmtk,
    # In CI (scripts/test.sh installs both) a missing peer must fail loudly, not skip.
    pytest.mark.skipif((ORTHANC_BIN is None or shutil.which("storescu") is None) and not os.environ.get("CI"),
                       reason="needs Orthanc (Debian's orthanc) and DCMTK's storescu"),
]
WAIT_S = 60


# --------------------------------------------------------------------------- Orthanc as the PACS
class Orthanc:
    """One Orthanc on 127.0.0.1 with its config and storage under ``root``; start/stop by PID."""

    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.root = root
        self.dicom_port = e2e_free_port()
        self.http_port = e2e_free_port()
        self.config = root / "orthanc.json"
        self.config.write_text(json.dumps({
            "Name": "forward-test", "DicomAet": "ORTHANC", "DicomPort": self.dicom_port,
            "HttpPort": self.http_port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowStore": True, "DicomServerEnabled": True,
            "StorageDirectory": str(root / "storage"), "IndexDirectory": str(root / "index"),
            "Plugins": [], "HttpServerEnabled": True,
        }, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 30) -> None:
        self.starts += 1
        log = (self.root / f"orthanc-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen([ORTHANC_BIN, str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                     cwd=self.root)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"Orthanc exited ({self.proc.returncode}): "
                            f"{(self.root / f'orthanc-{self.starts}.log').read_text(errors='replace')[-2000:]}")
            try:
                system = self._request("GET", "/system")
                if system.get("DicomPort") == self.dicom_port:
                    return
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Orthanc did not answer /system within {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def has_instance(self, sop_uid: str) -> bool:
        found = self._request("POST", "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        return bool(found)

    def instance_tags(self, sop_uid: str) -> dict[str, Any]:
        (orthanc_id,) = self._request("POST", "/tools/find",
                                      {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}})
        return self._request("GET", f"/instances/{orthanc_id}/simplified-tags")


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Any]:
    made: list[Orthanc] = []

    def make(name: str = "orthanc") -> Orthanc:
        made.append(Orthanc(tmp_path / name))
        return made[-1]

    yield make
    for o in made:
        o.stop()


# --------------------------------------------------------------------------- node side
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from node.triage.tiny_model import build_tiny_siglip

    torch.set_num_threads(1)
    return build_tiny_siglip(tmp_path_factory.mktemp("fwd-tiny-siglip"), image_size=64, seed=0)


@pytest.fixture
def start_node(node_factory) -> Callable[[NodeConfig], Any]:  # type: ignore[no-untyped-def]
    """``start_node(cfg)``: the shared in-process node fixture, fed from an e2e NodeConfig."""
    return lambda cfg: node_factory(cfg.settings())


def forwarding_node(root: Path, model: Path, orthanc: Orthanc, *, send: str = "sr",
                    **forwarding: float) -> NodeConfig:
    policy = {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 1.0, "max_age_seconds": 600,
              "timeout_seconds": 10, "poll_seconds": 0.2, **forwarding}
    cfg = node_config(root, model, forwarding=policy)
    with cfg.config_path.open("a", encoding="utf-8") as f:
        f.write(f'\n[[forward]]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\n'
                f'send = "{send}"\n')
    return cfg


def send_chest_study(root: Path, port: int, patient_id: str, images: int = 1) -> tuple[str, list[str]]:
    """storescu an adult PA chest DX study (``images`` instances); returns (study UID, image UIDs)."""
    from node.demo import synthetic_image

    root.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [synthetic_image(root / f"{patient_id}-{n}.dcm", modality="DX",
                             sop_class=DigitalXRayImageStorageForPresentation, view="PA", body_part="CHEST", age=54,
                             study_uid=study_uid, patient_id=patient_id, number=n, series_uid=series_uid,
                             photometric="MONOCHROME2", rows=128, cols=128)
             for n in range(1, images + 1)]
    storescu(port, paths)
    return study_uid, [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def sr_uid(node: Any, study_uid: str) -> str:
    row = wait_until(lambda: worklist_row(node.db, study_uid), WAIT_S, "the study's SR (worklist row)")
    return str(row["sr_sop_instance_uid"])


def outbox_cli(cfg: NodeConfig, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*cli_command(), "outbox", "--config", str(cfg.config_path), *args],
                          capture_output=True, text=True, env=clean_env(), cwd=cfg.root, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def outbox_json(cfg: NodeConfig) -> list[dict[str, Any]]:
    return json.loads(outbox_cli(cfg, "--json").stdout)


def outbox_rows(node: Any, study_uid: str) -> list[Any]:
    from sqlalchemy import select

    from node.db.models import OutboxItem

    with node.db.session() as session:
        return list(session.execute(select(OutboxItem).where(OutboxItem.study_instance_uid == study_uid)
                                    .order_by(OutboxItem.id)).scalars().all())


def export_events(cfg: NodeConfig) -> list[dict[str, Any]]:
    lines = cfg.audit_path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event_id"]["code"] == "110106"]


# --------------------------------------------------------------------------- tests
def test_sr_reaches_orthanc_without_manual_step(tmp_path: Path, tiny_model: Path, orthanc_factory,
                                                start_node) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()
    orthanc.start()
    cfg = forwarding_node(tmp_path / "node", tiny_model, orthanc, send="sr")
    node = start_node(cfg)
    study_uid, image_uids = send_chest_study(tmp_path / "src", cfg.port, "FWD-SR")
    sr = sr_uid(node, study_uid)

    wait_until(lambda: orthanc.has_instance(sr), WAIT_S, "the SR in Orthanc")
    tags = orthanc.instance_tags(sr)
    assert tags["Modality"] == "SR" and tags["StudyInstanceUID"] == study_uid
    assert not orthanc.has_instance(image_uids[0]), "send = sr forwarded the image too"
    rows = wait_until(lambda: [r for r in outbox_rows(node, study_uid) if r.state == "sent"], WAIT_S, "row sent")
    assert [(r.kind, r.sop_instance_uid, r.attempts) for r in outbox_rows(node, study_uid)] == [("sr", sr, 1)]
    assert rows[0].destination == f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"

    events = wait_until(lambda: export_events(cfg), 10, "an export audit event")
    event = events[-1]
    assert event["outcome"] == 0
    assert any(p["user_id"] == "ORTHANC" and p["role"] == "destination" for p in event["participants"])
    (obj,) = [o for o in event["objects"] if o["id"] == study_uid]
    assert obj["type"] == "study" and obj["details"]["instances"] == 1
    assert outbox_json(cfg) == []  # nothing pending, nothing dead


def test_sr_waits_in_outbox_while_orthanc_is_down(tmp_path: Path, tiny_model: Path, orthanc_factory,
                                                  start_node) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()  # configured, not started: its DICOM port refuses connections
    cfg = forwarding_node(tmp_path / "node", tiny_model, orthanc, send="sr",
                          initial_backoff_seconds=0.3, max_backoff_seconds=1.0)
    node = start_node(cfg)
    study_uid, _ = send_chest_study(tmp_path / "src", cfg.port, "FWD-DOWN")
    sr = sr_uid(node, study_uid)

    wait_until(lambda: any(r.attempts >= 1 for r in outbox_rows(node, study_uid)), WAIT_S, "a failed attempt")
    listed = [i for i in outbox_json(cfg) if i["sop_instance_uid"] == sr]
    assert len(listed) == 1, listed
    item = listed[0]
    assert item["state"] == "pending" and item["attempts"] >= 1
    assert item["destination"] == f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    assert item["last_error"] and item["next_attempt_at"]
    assert set(item) >= {"id", "destination", "sop_instance_uid", "state", "attempts", "last_error",
                         "next_attempt_at"}

    orthanc.start()
    wait_until(lambda: orthanc.has_instance(sr), WAIT_S, "the SR in Orthanc after it came back")
    wait_until(lambda: outbox_rows(node, study_uid)[0].state == "sent", WAIT_S, "the row marked sent")
    assert outbox_json(cfg) == []
    failed = [e for e in export_events(cfg) if e["outcome"] != 0]
    assert failed, "failed attempts are audited too"


def test_dead_letter_is_listed_and_retried(tmp_path: Path, tiny_model: Path, orthanc_factory,
                                           start_node) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()
    cfg = forwarding_node(tmp_path / "node", tiny_model, orthanc, send="sr",
                          initial_backoff_seconds=0.1, max_backoff_seconds=0.2, max_age_seconds=1.0)
    node = start_node(cfg)
    study_uid, _ = send_chest_study(tmp_path / "src", cfg.port, "FWD-DEAD")
    sr = sr_uid(node, study_uid)

    wait_until(lambda: outbox_rows(node, study_uid)[0].state == "dead", WAIT_S, "a dead letter")
    (item,) = [i for i in outbox_json(cfg) if i["sop_instance_uid"] == sr]
    assert item["state"] == "dead" and item["attempts"] >= 2 and item["last_error"]
    assert item["next_attempt_at"] is None
    text = outbox_cli(cfg).stdout
    assert "dead" in text and sr in text

    orthanc.start()
    time.sleep(0.5)
    assert not orthanc.has_instance(sr), "a dead letter was sent without being requeued"
    out = outbox_cli(cfg, "--retry", str(item["id"]))
    assert "requeued 1" in out.stdout
    wait_until(lambda: orthanc.has_instance(sr), WAIT_S, "the requeued SR in Orthanc")
    wait_until(lambda: outbox_rows(node, study_uid)[0].state == "sent", WAIT_S, "the row marked sent")
    assert outbox_json(cfg) == []
    from node import metrics

    dead = metrics.REGISTRY.get_sample_value("triage_node_forward_dead_letters_total",
                                             {"destination": item["destination"]})
    assert dead and dead >= 1


def test_send_both_forwards_the_images_too(tmp_path: Path, tiny_model: Path, orthanc_factory,
                                           start_node) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()
    orthanc.start()
    cfg = forwarding_node(tmp_path / "node", tiny_model, orthanc, send="both")
    node = start_node(cfg)
    study_uid, image_uids = send_chest_study(tmp_path / "src", cfg.port, "FWD-BOTH", images=2)
    sr = sr_uid(node, study_uid)

    for uid in [*image_uids, sr]:
        wait_until(lambda uid=uid: orthanc.has_instance(uid), WAIT_S, f"instance {uid} in Orthanc")
    rows = wait_until(lambda: (lambda rs: rs if rs and all(r.state == "sent" for r in rs) else None)(
        outbox_rows(node, study_uid)), WAIT_S, "every row sent")
    assert sorted((r.kind, r.sop_instance_uid) for r in rows) == sorted(
        [("instance", u) for u in image_uids] + [("sr", sr)])

    from node.forward.outbox import enqueue_study

    with node.db.write() as session:
        assert enqueue_study(session, node.settings.forward, study_uid=study_uid, sr_sop_instance_uid=sr) == 0
    event = next(e for e in reversed(export_events(cfg)) if any(o["id"] == study_uid for o in e["objects"]))
    assert event["outcome"] == 0
