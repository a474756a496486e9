"""One real node for the console tests (session scope: built once, shared by the HTTP and the
browser tests): the tiny random SigLIP, HTTP on a loopback port with a token, a [[forward]]
destination that refuses connections (so dead letters appear within seconds), and three
studies sent by C-STORE:

- ``stat``: adult PA chest DX whose order is STAT -> HIGH; the model is given its image;
- ``script``: lateral chest whose PatientName carries ``<script>`` -> MEDIUM, no AI assessment;
- ``low``: lateral chest whose order is LOW -> LOW (the model never raises a study it cannot assess).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from sqlalchemy import func, select

REPO = Path(__file__).resolve().parents[2]
TOKEN = "console-test-token"
SCU = "CONSOLE_SCU"
SCRIPT_NAME = "<script>alert('pwned')</script>^Mallory"
SCREENSHOTS = REPO / "build" / "console-screenshots"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class ConsoleNode:
    node: Any
    base: str  # http://127.0.0.1:PORT
    studies: dict[str, str]  # label -> StudyInstanceUID
    names: dict[str, str]  # label -> PatientName as sent

    @property
    def db(self) -> Any:
        return self.node.db

    def dead_letters(self) -> list[Any]:
        from node.db.models import OutboxItem

        with self.db.session() as session:
            return list(session.execute(select(OutboxItem).where(OutboxItem.state == "dead")
                                        .order_by(OutboxItem.id)).scalars())

    def audit_lines(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(line) for line in Path(self.node.settings.audit.path).read_text().splitlines() if line]


def settings_for(root: Path, model_dir: Path, *, token: str | None = TOKEN) -> Any:
    from node.config import Settings

    data = root / "data"
    return Settings.model_validate({
        "node": {"data_dir": str(data), "log_level": "warning"},
        "dicom": {"ae_title": "TRIAGE_NODE", "host": "127.0.0.1", "port": free_port(), "allowed_peers": [SCU]},
        "storage": {"path": str(data / "storage"), "min_free_bytes": 0, "fsync": False},
        "database": {"url": f"sqlite:///{data / 'index.db'}"},
        "stability": {"quiet_seconds": 0.5, "tick_seconds": 0.2},
        "audit": {"path": str(data / "audit.jsonl"), "fsync": False},
        "model": {"path": str(model_dir), "device": "cpu", "offline": True, "batch_size": 8},
        "triage": {"profiles_dir": str(REPO / "config" / "profiles"), "poll_seconds": 0.2},
        "http": {"enabled": True, "host": "127.0.0.1", "port": 0, "token": token},
        # a PACS that is not there: every SR becomes a dead letter after max_age_seconds
        "forward": [{"ae_title": "PACS", "host": "127.0.0.1", "port": free_port(), "send": "sr"}],
        "forwarding": {"initial_backoff_seconds": 0.2, "max_backoff_seconds": 0.3, "max_age_seconds": 0.5,
                       "timeout_seconds": 2, "poll_seconds": 0.2},
    })


def _study(folder: Path, label: str, *, view: str, name: str, order: str | None) -> tuple[str, Path]:
    from node.demo import synthetic_image

    study_uid = generate_uid()
    path = synthetic_image(folder / f"{label}.dcm", modality="DX", sop_class=DigitalXRayImageStorageForPresentation,
                           view=view, body_part="CHEST", age=54, study_uid=study_uid, patient_id=f"PID-{label}",
                           rows=96, cols=80)
    ds = pydicom.dcmread(path)
    ds.PatientName = name
    if order:
        ds.RequestedProcedurePriority = order
    ds.save_as(path, enforce_file_format=True)
    return study_uid, path


@pytest.fixture(scope="session")
def console_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleNode]:
    import torch

    from node import oplog
    from node.db.models import WorklistItem
    from node.dimse.scu import Destination, send
    from node.service import Node
    from node.triage.tiny_model import build_tiny_siglip

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("console")
    model_dir = build_tiny_siglip(root / "tiny-model", image_size=64, seed=0)
    oplog.configure("warning")
    node = Node(settings_for(root, model_dir))
    node.start()
    try:
        src = root / "src"
        src.mkdir()
        specs = {"stat": ("PA", "ALPHA^Stat", "STAT"), "script": ("LL", SCRIPT_NAME, None),
                 "low": ("LL", "GAMMA^Low", "LOW")}
        studies, names = {}, {}
        for label, (view, name, order) in specs.items():
            uid, path = _study(src, label, view=view, name=name, order=order)
            results = send([path], Destination("TRIAGE_NODE", "127.0.0.1", node.listener.port), calling_ae=SCU)
            assert [r.status for r in results] == [0]
            studies[label], names[label] = uid, name

        def triaged() -> bool:
            with node.db.session() as session:
                return session.execute(select(func.count()).select_from(WorklistItem)).scalar_one() == len(specs)

        wait_until(triaged, 120, "the three studies on the worklist")
        cn = ConsoleNode(node, f"http://127.0.0.1:{node.http_port}", studies, names)
        wait_until(lambda: len(cn.dead_letters()) == len(specs), 60, "three dead letters (the PACS is not there)")
        yield cn
    finally:
        node.stop()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
