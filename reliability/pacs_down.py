#!/usr/bin/env python3
"""Destination PACS down during a send: every SR delivered once it is back, none twice.

A node triages with the tiny test model (a real forward pass, 64 px) and forwards each study's
SR (``send = "sr"``) to a real Orthanc. A fifth of the studies are sent and their SRs seen in
Orthanc; then Orthanc is stopped for ``--down-minutes`` while the rest of the studies are sent
(spread over the first 80 % of the outage), then started again (same storage and index). Checked
once the outbox has drained:

* every study has one current SR, indexed, and its triage job done;
* Orthanc's index holds every SR, and Orthanc *received* each exactly once (a Lua hook counts
  every C-STORE, duplicates included);
* each SR has exactly one outbox row, state sent; the export audit events (110106) count each
  study's SR as delivered exactly once;
* nothing else arrived at Orthanc.

Reported: attempts per SR row, failed export events, how long after Orthanc's return the last SR
arrived. Needs Orthanc (Debian package ``orthanc``).

    .venv/bin/python reliability/pacs_down.py                                   # 50 studies, 10 min
    .venv/bin/python reliability/pacs_down.py --studies 5 --down-seconds 20 --json   # CI
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline import (
    check_pipeline,
    chest_study,
    current_srs,
    orthanc_for,
    pipeline_node,
    send_files,
    tiny_model,
    wait_drained,
)


def run(studies: int, down_seconds: float, workdir: Path, max_backoff: float) -> dict:  # type: ignore[type-arg]
    model = tiny_model(workdir)
    orthanc = orthanc_for(workdir).start()
    policy = {
        "initial_backoff_seconds": 1.0,
        "max_backoff_seconds": max_backoff,
        "timeout_seconds": 10,
        "poll_seconds": 0.5,
        "max_age_seconds": 86400,
    }
    node = pipeline_node(workdir / "node", model, orthanc, policy)
    sent: dict[str, int | None] = {}
    study_uids: set[str] = set()
    timeline: dict[str, float] = {}
    start = time.monotonic()
    try:
        node.start(timeout=180)
        first = max(1, studies // 5)

        def send(n: int) -> None:
            uid, paths = chest_study(workdir / "studies", f"PACSDOWN{n:03d}")
            study_uids.add(uid)
            statuses = send_files(node.port, paths)
            sent[uid] = statuses[0]

        for n in range(first):
            send(n)
        wait_drained(node, set(study_uids), 300)  # the normal path works: delivered while up
        timeline["before_stop_delivered"] = round(time.monotonic() - start, 1)
        orthanc.stop()
        stopped = time.monotonic()
        rest = list(range(first, studies))
        gap = (0.8 * down_seconds) / max(1, len(rest))
        for n in rest:
            send(n)
            time.sleep(max(0.0, stopped + (n - first + 1) * gap - time.monotonic()))
        time.sleep(max(0.0, stopped + down_seconds - time.monotonic()))
        timeline["down_seconds"] = round(time.monotonic() - stopped, 1)
        srs_while_down = len(current_srs(node))
        orthanc.start()
        back = time.monotonic()
        timeline["drain_after_return_s"] = round(wait_drained(node, set(study_uids), max(600, 2 * max_backoff)), 1)
        time.sleep(3)  # anything sent twice would arrive now
        report = check_pipeline(node, orthanc, study_uids)
        report["last_sr_after_return_s"] = round(time.monotonic() - back - 3, 1)
    finally:
        node.stop()
        orthanc.stop()
    not_stored = sorted(uid for uid, status in sent.items() if status != 0)
    if not_stored:
        report["problems"]["studies_not_acknowledged"] = not_stored
    report.update(
        {
            "down_seconds": down_seconds,
            "srs_written_while_down": srs_while_down,
            "max_backoff_seconds": max_backoff,
            "timeline": timeline,
            "seconds": round(time.monotonic() - start, 1),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "ok": not report["problems"],
        }
    )
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--down-minutes", type=float, default=10.0)
    parser.add_argument("--down-seconds", type=float, default=None, help="overrides --down-minutes")
    parser.add_argument(
        "--max-backoff", type=float, default=60.0, help="forwarding.max_backoff_seconds (the node's default is 600)"
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    down = args.down_seconds if args.down_seconds is not None else args.down_minutes * 60
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="triage-pacs-down-"))
    result = run(args.studies, down, workdir, args.max_backoff)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:<32} {value}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
