"""The console tests' node (built by ``console_node`` in tests/console/conftest.py), shared by the
HTTP and the browser tests: the tiny random SigLIP, HTTP on a loopback port with a token, a
[[forward]] destination that refuses connections (so dead letters appear within seconds), and three
studies sent by C-STORE:

- ``stat``: adult PA chest DX whose order is STAT -> HIGH; the model is given its image;
- ``script``: lateral chest whose PatientName carries ``<script>`` -> MEDIUM, no AI assessment;
- ``low``: lateral chest whose order is LOW -> LOW (the model never raises a study it cannot assess).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from sqlalchemy import select

from tests.support.config import REPO, make_settings, triage_sections
from tests.support.ports import free_port

TOKEN = "console-test-token"
SCU = "CONSOLE_SCU"
SCRIPT_NAME = "<script>alert('pwned')</script>^Mallory"
SCREENSHOTS = REPO / "build" / "console-screenshots"


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
            return list(
                session.execute(select(OutboxItem).where(OutboxItem.state == "dead").order_by(OutboxItem.id)).scalars()
            )

    def audit_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in Path(self.node.settings.audit.path).read_text().splitlines() if line]


def settings_for(root: Path, model_dir: Path, *, token: str | None = TOKEN) -> Any:
    """The console node: triage on, HTTP with ``token``, a PACS that is not there (every SR becomes
    a dead letter after max_age_seconds), no fsync (speed)."""
    return make_settings(
        root,
        **triage_sections(model_dir),
        dicom={"allowed_peers": [SCU]},
        storage={"fsync": False},
        stability={"quiet_seconds": 0.5},
        audit={"fsync": False},
        http={"enabled": True, "token": token},
        forward=[{"ae_title": "PACS", "host": "127.0.0.1", "port": free_port(), "send": "sr"}],
        forwarding={
            "initial_backoff_seconds": 0.2,
            "max_backoff_seconds": 0.3,
            "max_age_seconds": 0.5,
            "timeout_seconds": 2,
            "poll_seconds": 0.2,
        },
    )


def console_study(folder: Path, label: str, *, view: str, name: str, order: str | None) -> tuple[str, Path]:
    """One chest DX study for the console: (StudyInstanceUID, file)."""
    from node.demo import synthetic_image

    study_uid = generate_uid()
    path = synthetic_image(
        folder / f"{label}.dcm",
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view=view,
        body_part="CHEST",
        age=54,
        study_uid=study_uid,
        patient_id=f"PID-{label}",
        rows=96,
        cols=80,
    )
    ds = pydicom.dcmread(path)
    ds.PatientName = name
    if order:
        ds.RequestedProcedurePriority = order
    ds.save_as(path, enforce_file_format=True)
    return study_uid, path
