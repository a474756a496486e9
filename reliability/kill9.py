#!/usr/bin/env python3
"""kill -9 at random moments across every stage, then restart and check.

Each cycle: two senders store instances (recording every instance the node answered Success for,
with the exact bytes sent); after a random delay the node is killed with SIGKILL, wherever it
happens to be; it is restarted (crash recovery runs) and checked. Two modes:

``--stages all`` (the default): the node triages with the tiny test model and forwards each
study's SR to a real Orthanc (reliability/orthanc.py); each sender sends ``--studies-per-cycle``
small chest studies (two DX images each, one association per study) and the kill comes up to
``--max-delay`` seconds (default 12) after the restarted node has loaded its model, so that it
lands in C-STORE receive, the
durable write, between rename and index commit, the audit append, the stability clock, a triage
job (model pass, SR build, SR store, worklist update) or forwarding (claim, C-STORE to Orthanc,
marking the row sent). Right after each kill the index tells which stages were in flight. After
every restart: every acknowledged instance on disk, byte-identical and indexed; no orphan files or
rows; no temp files; ``audit verify`` clean (a torn last line is moved aside by the restart and
counted). At the end the senders stop, the node drains (every study triaged, the outbox empty)
and the pipeline checks run: exactly one current SR per stable study, every SR in Orthanc's
index, received by Orthanc exactly once (a Lua hook counts every C-STORE), one outbox row per SR
in state sent. Needs Orthanc (Debian package ``orthanc``).

``--stages receive``: CT instances only, triage and forwarding off (the receive path alone).

Settings the campaign changes from the defaults, and why: ``triage.max_attempts = 20`` (a job
killed three times would otherwise be failed on purpose, the poison-study rule, not a loss) and
``forwarding.lease_seconds = 5`` (a row claimed by the killed process is due again 5 s after the
restart instead of minutes later).

    .venv/bin/python reliability/kill9.py --cycles 50                      # the campaign
    .venv/bin/python reliability/kill9.py --cycles 3 --json                # what CI runs
    .venv/bin/python reliability/kill9.py --stages receive --cycles 50     # the receive path alone
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NODE_AE, Node, association, check_store, ct_instance, dataset_bytes
from pydicom.uid import generate_uid


def _sender(port: int, acked: dict[str, tuple[str, str, bytes]], stop: threading.Event) -> None:
    study, series = generate_uid(), generate_uid()
    number = 0
    while not stop.is_set():
        try:
            assoc = association(port, timeout=5)
        except Exception:
            return
        if not assoc.is_established:
            return
        try:
            while not stop.is_set():
                number += 1
                ds = ct_instance(study, series, number)
                status = assoc.send_c_store(ds)
                if status and status.get("Status") == 0:
                    acked[str(ds.SOPInstanceUID)] = (study, series, dataset_bytes(ds))
                elif not assoc.is_established:
                    return
        except Exception:
            return
        finally:
            if assoc.is_established:
                assoc.abort()


def run(cycles: int, workdir: Path, seed: int, max_delay: float) -> dict:  # type: ignore[type-arg]
    rng = random.Random(seed)
    node = Node(workdir / "node")
    acked: dict[str, tuple[str, str, bytes]] = {}
    torn = 0
    problems: list[str] = []
    node.start()
    for cycle in range(1, cycles + 1):
        stop = threading.Event()
        senders = [threading.Thread(target=_sender, args=(node.port, acked, stop)) for _ in range(2)]
        for t in senders:
            t.start()
        time.sleep(rng.uniform(0.05, max_delay))
        node.kill9()
        stop.set()
        for t in senders:
            t.join(30)
        node.start()
        report = check_store(node, acked)
        if "torn last audit line" in node.log_text() or list(node.root.rglob("audit.jsonl.torn-*")):
            torn = len(list(node.root.rglob("audit.jsonl.torn-*")))
        bad = {k: v for k, v in report.items() if isinstance(v, list) and v}
        verify = node.audit_verify()
        if verify.returncode != 0:
            bad["audit_verify"] = verify.stderr.strip()
        if bad:
            problems.append(f"cycle {cycle}: {bad}")
    node.stop()
    final = check_store(node, acked)
    verify = node.audit_verify()
    return {
        "cycles": cycles,
        "acknowledged": len(acked),
        "stored_files": final["files"],
        "index_rows": final["rows"],
        "torn_audit_lines_moved_aside": torn,
        "audit_verify_final": verify.returncode == 0,
        "problems": problems,
        "ok": not problems,
    }


# --------------------------------------------------------------------------- every stage
def _chest_sender(
    port: int, folder: Path, acked: dict[str, tuple[str, str, bytes]], stop: threading.Event, name: str, studies: int
) -> None:
    """``studies`` two-image chest studies, one association each (fewer when stopped or the node
    is gone): the rest of the cycle is left to stability, triage and forwarding."""
    import pydicom
    from pipeline import chest_study
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
    from pynetdicom import AE

    from node.dimse.scu_race import keep_responses_for_caller

    ae = AE(ae_title="RELIABILITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.connection_timeout = 5
    ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
    for number in range(1, studies + 1):
        if stop.is_set():
            return
        study, paths = chest_study(folder, f"{name}-{number:05d}", images=2)
        try:
            assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
        except Exception:
            return
        if not assoc.is_established:
            return
        keep_responses_for_caller(assoc)
        try:
            for path in paths:
                ds = pydicom.dcmread(path)
                status = assoc.send_c_store(ds)
                if status and status.get("Status") == 0:
                    acked[str(ds.SOPInstanceUID)] = (study, str(ds.SeriesInstanceUID), dataset_bytes(ds))
                elif not assoc.is_established:
                    return
        except Exception:
            return
        finally:
            if assoc.is_established:
                assoc.release()


def _in_flight(node: Node) -> dict[str, int]:
    """What the killed node left half done, read from its index and storage before the restart."""
    from pipeline import _rows

    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    indexed = {r[0] for r in _rows(node, "SELECT path FROM instance")}
    on_disk = {str(p.relative_to(node.storage)) for p in node.storage.rglob("*.dcm") if ".incoming" not in p.parts}
    return {
        "c_store_temp_files": len(list((node.storage / ".incoming").glob("*.part"))),
        "renamed_not_indexed": len(on_disk - indexed),
        "triage_jobs_running": _rows(node, "SELECT count(*) FROM triage_job WHERE state = 'running'")[0][0],
        "sr_stored_job_not_done": _rows(
            node,
            "SELECT count(*) FROM triage_job j WHERE j.state = 'running' AND EXISTS (SELECT 1 FROM instance i "
            "JOIN series se ON i.series_pk = se.id JOIN study st ON se.study_pk = st.id "
            "WHERE st.study_instance_uid = j.study_instance_uid AND se.modality = 'SR')",
        )[0][0],
        "outbox_rows_claimed": _rows(
            node, "SELECT count(*) FROM outbox_item WHERE state = 'pending' AND next_attempt_at > ?", now
        )[0][0],
        "outbox_rows_pending": _rows(node, "SELECT count(*) FROM outbox_item WHERE state = 'pending'")[0][0],
    }


def _wait_for_log(node: Node, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in node.log_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{text} not logged within {timeout:.0f} s")
        time.sleep(0.2)


def _work_logged(node: Node) -> dict[str, int]:
    """What the cycle's process finished before it was killed, from its JSON operational log."""
    counts = {"job_done": 0, "forward_batch": 0, "model_loaded": 0, "instances_received": 0}
    for line in node.log_text().splitlines():
        try:
            event = json.loads(line).get("event")
        except ValueError:
            continue
        if event in counts:
            counts[event] += 1
    return counts


def run_pipeline(cycles: int, workdir: Path, seed: int, max_delay: float, studies_per_cycle: int) -> dict:  # type: ignore[type-arg]
    from pipeline import check_pipeline, orthanc_for, pipeline_node, tiny_model, wait_drained

    rng = random.Random(seed)
    model = tiny_model(workdir)
    orthanc = orthanc_for(workdir).start()
    policy = {
        "initial_backoff_seconds": 0.5,
        "max_backoff_seconds": 5,
        "timeout_seconds": 10,
        "poll_seconds": 0.2,
        "lease_seconds": 5,
    }
    node = pipeline_node(
        workdir / "node", model, orthanc, policy, triage={"max_attempts": 20}, node={"log_level": "info"}
    )
    acked: dict[str, tuple[str, str, bytes]] = {}
    torn = 0
    problems: list[str] = []
    stages: dict[str, int] = {}
    work: dict[str, int] = {}
    delays: list[float] = []
    node.start(timeout=180)
    try:
        for cycle in range(1, cycles + 1):
            # The clock starts when the model is loaded (a loaded 2-core machine needs 10-25 s for
            # that), so that the kill lands in receive, stability, triage, SR store or forwarding.
            _wait_for_log(node, '"model_loaded"', 180)
            stop = threading.Event()
            senders = [
                threading.Thread(
                    target=_chest_sender,
                    args=(node.port, workdir / "studies", acked, stop, f"K{cycle:03d}S{i}", studies_per_cycle),
                )
                for i in range(2)
            ]
            for t in senders:
                t.start()
            delay = rng.uniform(0.05, max_delay)
            delays.append(delay)
            time.sleep(delay)
            node.kill9()
            stop.set()
            for t in senders:
                t.join(30)
            for stage, count in _in_flight(node).items():
                stages[stage] = stages.get(stage, 0) + (1 if count else 0)
            for event, count in _work_logged(node).items():
                work[event] = work.get(event, 0) + count
            node.start(timeout=180)
            report = check_store(node, acked)
            torn = len(list(node.root.rglob("audit.jsonl.torn-*")))
            bad = {k: v for k, v in report.items() if isinstance(v, list) and v}
            verify = node.audit_verify()
            if verify.returncode != 0:
                bad["audit_verify"] = verify.stderr.strip()[-500:]
            if bad:
                problems.append(f"cycle {cycle}: {bad}")
        # the end: nothing more is sent; every stable study must get its SR, delivered once
        from pipeline import _rows

        studies = {
            r[0]
            for r in _rows(
                node,
                "SELECT DISTINCT st.study_instance_uid FROM study st "
                "JOIN series se ON se.study_pk = st.id WHERE se.modality != 'SR'",
            )
        }
        drain_s = wait_drained(node, studies, 600)
        time.sleep(3)  # a duplicate send would arrive now
        final_store = check_store(node, acked)
        end = check_pipeline(node, orthanc, studies)
    finally:
        node.stop()
        orthanc.stop()
    verify = node.audit_verify()
    problems += [f"end: {k}: {v[:5]}" for k, v in end["problems"].items()]
    problems += [f"end: {k}: {v[:5]}" for k, v in final_store.items() if isinstance(v, list) and v]
    if verify.returncode != 0:
        problems.append(f"end: audit verify: {verify.stderr.strip()[-300:]}")
    return {
        "stages": "all",
        "cycles": cycles,
        "kill_delay_s": [round(min(delays), 2), round(max(delays), 2)],
        "kills_with_stage_in_flight": stages,
        "work_done_by_killed_processes": work,
        "acknowledged": len(acked),
        "stored_files": final_store["files"],
        "index_rows": final_store["rows"],
        "stable_studies": len(studies),
        "current_srs": end["current_srs"],
        "srs_in_orthanc_index": end["srs_in_orthanc_index"],
        "orthanc_receptions_of_srs": end["orthanc_receptions"],
        "sr_attempts_max": end["sr_attempts_max"],
        "failed_export_events": end["failed_export_events"],
        "studies_audited_as_delivered_more_than_once": end["studies_audited_as_delivered_more_than_once"],
        "drain_s": round(drain_s, 1),
        "torn_audit_lines_moved_aside": torn,
        "audit_verify_final": verify.returncode == 0,
        "problems": problems,
        "ok": not problems,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--stages", choices=("all", "receive"), default="all")
    parser.add_argument(
        "--max-delay",
        type=float,
        default=None,
        help="longest wait before each kill (s); default 12 (all stages), 1.5 (receive)",
    )
    parser.add_argument("--studies-per-cycle", type=int, default=2, help="per sender (all stages)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="triage-kill9-"))
    start = time.monotonic()
    if args.stages == "all":
        result = run_pipeline(args.cycles, workdir, args.seed, args.max_delay or 12.0, args.studies_per_cycle)
    else:
        result = run(args.cycles, workdir, args.seed, args.max_delay or 1.5)
    result["load_average_1m"] = round(os.getloadavg()[0], 2)
    result["seconds"] = round(time.monotonic() - start, 1)
    if args.json:
        print(json.dumps(result, indent=2))
    elif args.stages == "all":
        for key, value in result.items():
            print(f"{key:<54} {value}")
    else:
        print(f"kill -9 cycles        {result['cycles']}")
        print(f"acknowledged          {result['acknowledged']}")
        print(f"stored files / rows   {result['stored_files']} / {result['index_rows']}")
        print(f"torn audit lines      {result['torn_audit_lines_moved_aside']} (moved aside, chain continued)")
        print(f"audit verify (final)  {'clean' if result['audit_verify_final'] else 'FAILED'}")
        print(f"problems              {len(result['problems'])}")
        for p in result["problems"][:20]:
            print("  " + p)
        print(f"seconds               {result['seconds']}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
