#!/usr/bin/env python3
"""Sustained load with RSS sampled, and a retry storm just above max_associations.

``senders``: N concurrent senders (one association each, re-opened every 50 instances) store
small CT instances for the given duration; the node's RSS and thread count are sampled every
0.5 s. Checks: RSS stays bounded (max minus the value after warm-up), nothing acknowledged is
lost (every acknowledged instance indexed and on disk, byte-identical).

``storm``: C DCMTK storescu clients (C > max_associations) each store K instances, one
association each, and retry at once when rejected ("local limit exceeded"). Reported: instances stored per second with
C clients against the rate with exactly max_associations clients measured in the same run, how
many associations were rejected, and the node's peak thread count.

    .venv/bin/python reliability/load.py senders --senders 8 --seconds 600
    .venv/bin/python reliability/load.py storm --clients 17 24 30 --stores 10
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import NODE_AE, Node, association, check_store, ct_instance, dataset_bytes
from pydicom.uid import generate_uid


class Sampler(threading.Thread):
    def __init__(self, node: Node, every: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.node, self.every = node, every
        self.rss: list[int] = []
        self.threads: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                self.rss.append(self.node.rss_kib())
                self.threads.append(self.node.threads())
            except OSError:
                return


class _DroppedResponses(logging.Handler):
    """Counts pynetdicom's "Received unexpected C-STORE service message": a response the
    association's own reactor thread took off the queue and threw away (node/dimse/scu_race.py)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "Received unexpected" in record.getMessage():
            self.count += 1


def senders(count: int, seconds: float, workdir: Path, guarded: bool = True) -> dict:  # type: ignore[type-arg]
    dropped = _DroppedResponses()
    logging.getLogger("pynetdicom").addHandler(dropped)
    node = Node(workdir / "node").start()
    acked: dict[str, tuple[str, str, bytes]] = {}
    lock = threading.Lock()
    failures = [0]
    no_response = [0]
    # warm-up: one association, a few stores, then the baseline RSS
    a = association(node.port)
    study, series = generate_uid(), generate_uid()
    for i in range(20):
        assert int(a.send_c_store(ct_instance(study, series, i)).Status) == 0
    a.release()
    baseline = node.rss_kib()
    sampler = Sampler(node)
    sampler.start()
    deadline = time.monotonic() + seconds

    def send() -> None:
        study, series = generate_uid(), generate_uid()
        number = 0
        while time.monotonic() < deadline:
            assoc = association(node.port, guarded=guarded)
            if not assoc.is_established:
                failures[0] += 1
                continue
            for _ in range(50):
                if time.monotonic() >= deadline:
                    break
                number += 1
                ds = ct_instance(study, series, number)
                response = assoc.send_c_store(ds)
                if "Status" not in response:  # no answer within the DIMSE timeout: counted, not hidden
                    with lock:
                        no_response[0] += 1
                    break
                if int(response.Status) == 0:
                    with lock:
                        acked[str(ds.SOPInstanceUID)] = (study, series, dataset_bytes(ds))
                else:
                    failures[0] += 1
            if assoc.is_established:
                assoc.release()

    threads = [threading.Thread(target=send) for _ in range(count)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    sampler.stop.set()
    node.stop()
    report = check_store(node, acked)
    lost = len(report["missing"]) + len(report["different"])
    return {
        "senders": count,
        "seconds": round(elapsed, 1),
        "acknowledged": len(acked),
        "instances_per_s": round(len(acked) / elapsed, 1),
        "failures": failures[0],
        "no_response_within_timeout": no_response[0],
        "client_guarded": guarded,
        "responses_dropped_by_client_reactor": dropped.count,
        "lost": lost,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "rss_baseline_mib": round(baseline / 1024, 1),
        "rss_max_mib": round(max(sampler.rss) / 1024, 1),
        "rss_last_mib": round(sampler.rss[-1] / 1024, 1),
        "rss_samples": len(sampler.rss),
        "rss_mib_at_each_tenth": [
            round(sampler.rss[min(len(sampler.rss) - 1, i * len(sampler.rss) // 10)] / 1024, 1) for i in range(1, 11)
        ],
        "threads_max": max(sampler.threads),
        "ok": lost == 0 and failures[0] == 0,
    }


def storm(clients: int, stores: int, node: Node, workdir: Path) -> dict:  # type: ignore[type-arg]
    """Each client is a DCMTK storescu process (a modality), re-run at once when rejected."""
    rejected = [0]
    done = [0]
    failed: list[str] = []
    lock = threading.Lock()
    folders = []
    for c in range(clients):
        folder = workdir / f"storm-{clients}-{c}"
        folder.mkdir(parents=True, exist_ok=True)
        study, series = generate_uid(), generate_uid()
        for i in range(stores):
            ct_instance(study, series, i).save_as(folder / f"{i}.dcm", enforce_file_format=True)
        folders.append(folder)
    sampler = Sampler(node, 0.2)
    sampler.start()

    def client(number: int) -> None:
        while True:
            result = subprocess.run(
                [
                    "storescu",
                    "-v",
                    "+sd",
                    "-to",
                    "60",
                    "-ta",
                    "60",
                    "-td",
                    "60",
                    "-aet",
                    f"MODALITY{number}",
                    "-aec",
                    NODE_AE,
                    "127.0.0.1",
                    str(node.port),
                    str(folders[number]),
                ],
                capture_output=True,
                text=True,
                env={**os.environ, "TCP_NODELAY": "1"},
                timeout=600,
            )
            out = result.stdout + result.stderr
            if "Association Rejected" in out:
                with lock:
                    rejected[0] += 1
                continue
            with lock:
                done[0] += out.count("Received Store Response (Success)")
                if result.returncode != 0:
                    failed.append(out[-300:])
            return

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    sampler.stop.set()
    return {
        "clients": clients,
        "stored": done[0],
        "expected": clients * stores,
        "seconds": round(elapsed, 2),
        "instances_per_s": round(done[0] / elapsed, 1),
        "rejected_attempts": rejected[0],
        "node_threads_max": max(sampler.threads or [0]),
        "client_failures": failed[:3],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("senders")
    p.add_argument("--senders", type=int, default=8)
    p.add_argument("--seconds", type=float, default=600)
    p.add_argument(
        "--unguarded",
        action="store_true",
        help="clients without the fix for pynetdicom's response race (reproduces the lost replies)",
    )
    p = sub.add_parser("storm")
    p.add_argument("--clients", type=int, nargs="+", default=[17, 24, 30])
    p.add_argument("--stores", type=int, default=10)
    p.add_argument("--max-associations", type=int, default=16)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="triage-load-"))
    if args.what == "senders":
        result = senders(args.senders, args.seconds, workdir, guarded=not args.unguarded)
        ok = result["ok"]
        out: object = result
    else:
        node = Node(workdir / "node", overrides={"dicom": {"max_associations": args.max_associations}}).start()
        rows = [storm(args.max_associations, args.stores, node, workdir)]
        rows += [storm(c, args.stores, node, workdir) for c in args.clients]
        node.stop()
        base = rows[0]["instances_per_s"]
        for row in rows:
            row["rate_vs_limit"] = round(row["instances_per_s"] / base, 2) if base else None
        ok = all(r["stored"] == r["expected"] for r in rows)
        out = {"max_associations": args.max_associations, "stores_per_client": args.stores, "rows": rows}
    if args.json:
        print(json.dumps(out, indent=2))
    elif args.what == "senders":
        for k, v in out.items():  # type: ignore[union-attr]
            print(f"{k:<20} {v}")
    else:
        print(f"{'clients':>7} {'stored':>9} {'inst/s':>8} {'vs limit':>8} {'rejected':>9} {'threads':>8}")
        for r in out["rows"]:  # type: ignore[index]
            print(
                f"{r['clients']:>7} {r['stored']:>4}/{r['expected']:<4} {r['instances_per_s']:>8} "
                f"{r['rate_vs_limit']:>8} {r['rejected_attempts']:>9} {r['node_threads_max']:>8}"
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
