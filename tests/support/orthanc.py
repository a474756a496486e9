"""Orthanc (Debian's `Orthanc` binary) as the PACS the node forwards to: one process per instance,
on free loopback ports, with its config and storage under its own folder; and the helpers of the
forwarding tests (tests/forward, tests/results): a forwarding node's config, a chest study sent by
storescu, the outbox as the CLI and the index show it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pydicom

from node.demo import chest_study
from reliability.orthanc import Orthanc as CountingOrthanc
from tests.support.config import NodeConfig, node_config
from tests.support.dimse import send_files
from tests.support.index import worklist_row
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.serve import cli_command, node_env

WAIT_S = 60


class Orthanc(CountingOrthanc):
    """The campaign's Orthanc (reliability/orthanc.py: it also counts every C-STORE it receives) on
    free loopback ports, with what the forwarding tests read from it."""

    def __init__(self, root: Path) -> None:
        super().__init__(root, free_port(), free_port())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def has_instance(self, sop_uid: str) -> bool:
        return self.index_count(sop_uid) > 0

    def instance_tags(self, sop_uid: str) -> dict[str, Any]:
        (orthanc_id,) = self._request(
            "POST", "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}
        )
        return dict(self._request("GET", f"/instances/{orthanc_id}/simplified-tags"))


def forwarding_node(
    root: Path, model: Path, orthanc: Orthanc, *, send: str | list[str] = "sr", **forwarding: float
) -> NodeConfig:
    """A triaging node whose one [[forward]] destination is ``orthanc`` (``send``: "sr" or "both")."""
    policy = {
        "initial_backoff_seconds": 0.2,
        "max_backoff_seconds": 1.0,
        "max_age_seconds": 600,
        "timeout_seconds": 10,
        "poll_seconds": 0.2,
        **forwarding,
    }
    return node_config(
        root,
        model,
        forwarding=policy,
        forward=[{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port, "send": send}],
    )


def send_chest_study(root: Path, port: int, patient_id: str, images: int = 1) -> tuple[str, list[str]]:
    """storescu an adult PA chest DX study (``images`` instances: the campaign's own
    ``chest_study``); returns (study UID, image UIDs)."""
    study_uid, paths = chest_study(root, patient_id, images)
    send_files(port, paths)
    return study_uid, [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


def sr_uid(node: Any, study_uid: str) -> str:
    row = wait_until(lambda: worklist_row(node.db, study_uid), WAIT_S, "the study's SR (worklist row)")
    return str(row["sr_sop_instance_uid"])


def outbox_cli(cfg: NodeConfig, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*cli_command("outbox"), "--config", str(cfg.config_path), *args],
        capture_output=True,
        text=True,
        env=node_env(),
        cwd=cfg.root,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def outbox_json(cfg: NodeConfig) -> list[dict[str, Any]]:
    return json.loads(outbox_cli(cfg, "--json").stdout)


def outbox_rows(node: Any, study_uid: str) -> list[Any]:
    from sqlalchemy import select

    from node.db.models import OutboxItem

    with node.db.session() as session:
        return list(
            session.execute(
                select(OutboxItem).where(OutboxItem.study_instance_uid == study_uid).order_by(OutboxItem.id)
            )
            .scalars()
            .all()
        )


def export_events(cfg: NodeConfig) -> list[dict[str, Any]]:
    lines = cfg.audit_path.read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event_id"]["code"] == "110106"]
