"""The whole path for the campaign scripts: a node that triages with the tiny test model and
forwards each study's SR to a real Orthanc, chest studies to send it, and the end-to-end checks
(one current SR per study, each SR delivered to Orthanc exactly once, outbox and audit agree).

Everything is read from what an operator has: the SQLite index, the audit file, Orthanc's REST
index and its reception counter (reliability/orthanc.py).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from common import REPO, Node, free_port
from orthanc import Orthanc

os.environ.setdefault("OMP_NUM_THREADS", "1")  # the node's torch: one thread (shared machines)
SCU_AE = "RELIABILITY"


def tiny_model(workdir: Path) -> Path:
    """The tiny random SigLIP checkpoint the tests use (64 px): triage runs for real, cheaply."""
    from node.triage.tiny_model import build_tiny_siglip

    folder = workdir / "tiny-siglip"
    if (folder / "config.json").exists():
        return folder
    return build_tiny_siglip(folder, image_size=64, seed=0)


def orthanc_for(workdir: Path) -> Orthanc:
    return Orthanc(workdir / "orthanc", free_port(), free_port())


def pipeline_node(
    root: Path, model: Path, orthanc: Orthanc, forwarding: dict[str, Any], **overrides: dict[str, Any]
) -> Node:
    sections: dict[str, dict[str, Any]] = {
        "stability": {"quiet_seconds": 1.0, "tick_seconds": 0.25},
        "model": {"path": str(model), "device": "cpu", "offline": True, "batch_size": 8},
        "triage": {"enabled": True, "profiles_dir": REPO / "config" / "profiles", "poll_seconds": 0.2},
        "forwarding": forwarding,
    }
    for name, body in overrides.items():
        sections.setdefault(name, {}).update(body)
    forward = f'[[forward]]\nae_title = "{orthanc.aet}"\nhost = "127.0.0.1"\nport = {orthanc.dicom_port}\nsend = "sr"\n'
    return Node(root, overrides=sections, extra_toml=forward)


def chest_study(folder: Path, patient: str, images: int = 1) -> tuple[str, list[Path]]:
    """An adult PA chest DX study the cxr profile accepts (node.demo.chest_study); returns (study UID, files)."""
    from node.demo import chest_study as demo_chest_study

    return demo_chest_study(folder, patient, images)


def send_files(port: int, paths: list[Path], timeout: float = 60) -> list[int | None]:
    """C-STORE the files over one association with the node's own SCU; the statuses."""
    from node.dimse.scu import Destination, send

    return [
        r.status for r in send(paths, Destination("TRIAGE_NODE", "127.0.0.1", port), calling_ae=SCU_AE, timeout=timeout)
    ]


# --------------------------------------------------------------------------- reading the node
def _rows(node: Node, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(node.db_path, timeout=30) as db:
        return list(db.execute(sql, args))


def current_srs(node: Node) -> dict[str, str]:
    """study UID -> the SR the worklist names as current."""
    return dict(_rows(node, "SELECT study_instance_uid, sr_sop_instance_uid FROM worklist_item"))


def sr_instances(node: Node) -> dict[str, list[str]]:
    """study UID -> every SR instance indexed for it."""
    out: dict[str, list[str]] = {}
    for study, sop in _rows(
        node,
        "SELECT st.study_instance_uid, i.sop_instance_uid FROM instance i "
        "JOIN series se ON i.series_pk = se.id JOIN study st ON se.study_pk = st.id "
        "WHERE se.modality = 'SR'",
    ):
        out.setdefault(study, []).append(sop)
    return out


def jobs(node: Node) -> dict[str, list[str]]:
    """study UID -> the states of its triage jobs."""
    out: dict[str, list[str]] = {}
    for study, state in _rows(node, "SELECT study_instance_uid, state FROM triage_job ORDER BY id"):
        out.setdefault(study, []).append(state)
    return out


def outbox(node: Node) -> list[dict[str, Any]]:
    cols = ("id", "kind", "study_instance_uid", "sop_instance_uid", "state", "attempts")
    return [
        dict(zip(cols, r, strict=True)) for r in _rows(node, f"SELECT {', '.join(cols)} FROM outbox_item ORDER BY id")
    ]


def audit_sr_exports(node: Node) -> tuple[Counter[str], int]:
    """(study UID -> SRs the export audit events (110106) say were delivered, failed export events)."""
    delivered: Counter[str] = Counter()
    failed = 0
    path = Path(node.sections["audit"]["path"])
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue  # a torn last line: counted by the audit checks, not here
        if event.get("event_id", {}).get("code") != "110106":
            continue
        failed += event.get("outcome") != 0
        for obj in event.get("objects", []):
            if obj.get("type") == "study":
                delivered[obj["id"]] += int(obj.get("details", {}).get("sr", 0))
    return delivered, failed


def drained(node: Node, studies: set[str]) -> bool:
    """Every study has a current SR, no job is queued or running, no outbox row is pending."""
    current = current_srs(node)
    if not studies <= set(current):
        return False
    if any(s in ("queued", "running") for states in jobs(node).values() for s in states):
        return False
    return all(r["state"] != "pending" for r in outbox(node))


def wait_drained(node: Node, studies: set[str], timeout: float) -> float:
    start = time.monotonic()
    while not drained(node, studies):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not drained within {timeout:.0f} s")
        time.sleep(1.0)
    return time.monotonic() - start


def check_pipeline(node: Node, orthanc: Orthanc, studies: set[str]) -> dict[str, Any]:
    """The end-to-end checks; every list in the result must be empty."""
    current = current_srs(node)
    srs = sr_instances(node)
    job_states = jobs(node)
    rows = outbox(node)
    received = orthanc.received()
    audited, failed_exports = audit_sr_exports(node)
    sr_rows: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "sr":
            sr_rows.setdefault(r["sop_instance_uid"], []).append(r)
    ours = {uid for uids in srs.values() for uid in uids}
    problems: dict[str, list[str]] = {
        "studies_without_current_sr": sorted(studies - set(current)),
        "current_sr_not_indexed": sorted(s for s in studies if s in current and current[s] not in srs.get(s, [])),
        "studies_with_more_than_one_sr": sorted(s for s in studies if len(srs.get(s, [])) > 1),
        "studies_with_failed_or_open_jobs": sorted(
            s for s in studies if any(j != "done" for j in job_states.get(s, []))
        ),
        "current_sr_not_in_orthanc": sorted(
            current[s] for s in studies if s in current and orthanc.index_count(current[s]) != 1
        ),
        "sr_received_by_orthanc_more_than_once": sorted(
            f"{uid} x{n}" for uid, n in received.items() if uid in ours and n > 1
        ),
        "sr_without_exactly_one_sent_outbox_row": sorted(
            current[s]
            for s in studies
            if s in current and [r["state"] for r in sr_rows.get(current[s], [])] != ["sent"]
        ),
        # at least once: a process killed between the event and marking the row sent records the
        # delivery again when the destination confirms it (C-FIND), saying so in the event
        "studies_never_audited_as_delivered": sorted(s for s in studies if audited.get(s, 0) < 1),
        "orthanc_holds_what_the_node_did_not_send": sorted(set(received) - ours),
    }
    attempts = [r["attempts"] for r in rows if r["kind"] == "sr"]
    return {
        "studies": len(studies),
        "current_srs": sum(1 for s in studies if s in current),
        "srs_in_orthanc_index": orthanc.instance_count(),
        "orthanc_receptions": sum(received[u] for u in ours),
        "failed_export_events": failed_exports,
        "studies_audited_as_delivered_more_than_once": sum(1 for s in studies if audited.get(s, 0) > 1),
        "sr_attempts_max": max(attempts, default=0),
        "sr_attempts_mean": round(sum(attempts) / len(attempts), 2) if attempts else 0,
        "problems": {k: v for k, v in problems.items() if v},
    }


__all__ = [
    "audit_sr_exports",
    "check_pipeline",
    "chest_study",
    "current_srs",
    "drained",
    "jobs",
    "orthanc_for",
    "outbox",
    "pipeline_node",
    "send_files",
    "sr_instances",
    "tiny_model",
    "wait_drained",
]
