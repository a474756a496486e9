#!/usr/bin/env python3
"""End-to-end triage latency: from the moment a study is queued (stable) to its SR stored.

Runs a real node in-process (C-STORE in, worker, SR out) with the tiny random SigLIP, so the
number is the node's own cost around the model (job claim, header reads, decode/window/
pad/resize, model call, policy, SR build + durable store + index + worklist). The model's
share at real MedSigLIP-448 size is measured separately by bench/triage.py; add the two.

    .venv/bin/python bench/triage_e2e.py [--studies 10] [--images 1] [--rows 3000 --cols 2500]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--studies", type=int, default=10)
    ap.add_argument("--images", type=int, default=1, help="PA images per study")
    ap.add_argument("--rows", type=int, default=3000)
    ap.add_argument("--cols", type=int, default=2500)
    a = ap.parse_args()

    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
    from sqlalchemy import select

    from node import oplog
    from node.config import load_settings
    from node.db.models import TriageJob
    from node.demo import _free_port, synthetic_image
    from node.dimse.scu import Destination, send
    from node.service import Node
    from node.triage.tiny_model import build_tiny_siglip

    oplog.configure("error")
    root = Path(tempfile.mkdtemp(prefix="tn-bench-"))
    model = build_tiny_siglip(root / "model")
    port = _free_port()
    env = {
        "TRIAGE_NODE__NODE__DATA_DIR": str(root / "data"),
        "TRIAGE_NODE__STORAGE__PATH": str(root / "data/storage"),
        "TRIAGE_NODE__STORAGE__MIN_FREE_BYTES": "0",
        "TRIAGE_NODE__DATABASE__URL": f"sqlite:///{root}/data/index.db",
        "TRIAGE_NODE__AUDIT__PATH": str(root / "data/audit.jsonl"),
        "TRIAGE_NODE__DICOM__HOST": "127.0.0.1",
        "TRIAGE_NODE__DICOM__PORT": str(port),
        "TRIAGE_NODE__DICOM__ALLOWED_PEERS": '["*"]',
        "TRIAGE_NODE__STABILITY__QUIET_SECONDS": "0.5",
        "TRIAGE_NODE__STABILITY__TICK_SECONDS": "0.2",
        "TRIAGE_NODE__TRIAGE__POLL_SECONDS": "0.05",
        "TRIAGE_NODE__MODEL__PATH": f'"{model}"',
        "TRIAGE_NODE__MODEL__DEVICE": "cpu",
        "TRIAGE_NODE__HTTP__ENABLED": "false",
        "TRIAGE_NODE__TRIAGE__PROFILES_DIR": f'"{ROOT / "config/profiles"}"',
    }
    settings = load_settings(None, env)
    node = Node(settings)
    node.start()
    try:
        files = []
        for s in range(a.studies):
            study, series = generate_uid(), generate_uid()
            for i in range(a.images):
                files.append(
                    synthetic_image(
                        root / f"s{s}_{i}.dcm",
                        modality="DX",
                        sop_class=DigitalXRayImageStorageForPresentation,
                        view="PA",
                        body_part="CHEST",
                        age=50,
                        study_uid=study,
                        patient_id=f"B{s}",
                        rows=a.rows,
                        cols=a.cols,
                        number=i + 1,
                        series_uid=series,
                    )
                )
        # one study at a time, so each job is measured alone (no cross-study batching)
        latencies = []
        for s in range(a.studies):
            send(files[s * a.images : (s + 1) * a.images], Destination("TRIAGE_NODE", "127.0.0.1", port))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with node.db.session() as session:
                    done = (
                        session.execute(
                            select(TriageJob).where(TriageJob.state == "done").order_by(TriageJob.id.desc())
                        )
                        .scalars()
                        .all()
                    )
                if len(done) > s:
                    job = done[0]
                    latencies.append((job.finished_at - job.queued_at).total_seconds())
                    break
                time.sleep(0.02)
        print("| studies | images/study | image size | stable->SR stored median s | p90 s | min s |")
        print("|---:|---:|---|---:|---:|---:|")
        q = sorted(latencies)
        print(
            f"| {len(q)} | {a.images} | {a.rows}x{a.cols} uint16 | {statistics.median(q):.3f} | "
            f"{q[int(0.9 * (len(q) - 1))]:.3f} | {q[0]:.3f} |"
        )
        print("(tiny random SigLIP; add bench/triage.py's per-image model time for MedSigLIP-448)")
    finally:
        node.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
