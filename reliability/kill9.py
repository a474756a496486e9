#!/usr/bin/env python3
"""kill -9 at random moments while instances are being stored, then restart and check.

Each cycle: a sender stores small CT instances one by one over one association (recording every
instance the node answered Success for, with the exact bytes sent); after a random delay the node
is killed with SIGKILL (mid C-STORE, mid fsync, between rename and index commit, mid audit line:
wherever it happens to be); the node is restarted (crash recovery runs) and checked:

* every acknowledged instance is on disk, byte-identical to what was sent, and indexed;
* no orphan files (on disk, not indexed) and no orphan rows (indexed, not on disk);
* no temp files left after recovery;
* `triage-node audit verify` is clean (a torn last line is moved aside by the restart and the
  chain continues; that is counted, not a failure).

    .venv/bin/python reliability/kill9.py --cycles 50            # the campaign
    .venv/bin/python reliability/kill9.py --cycles 3 --json      # what CI runs (tests/reliability)

Stages covered: C-STORE receive, durable write, rename, index commit, audit append. Triage, SR
store and forwarding are not driven by this script (see RELIABILITY.md).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Node, association, check_store, ct_instance, dataset_bytes  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402


def _sender(port: int, acked: dict[str, tuple[str, str, bytes]], stop: threading.Event) -> None:
    study, series = generate_uid(), generate_uid()
    number = 0
    while not stop.is_set():
        try:
            assoc = association(port, timeout=5)
        except Exception:  # noqa: BLE001 - the node is being killed
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
        except Exception:  # noqa: BLE001
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
    return {"cycles": cycles, "acknowledged": len(acked), "stored_files": final["files"],
            "index_rows": final["rows"], "torn_audit_lines_moved_aside": torn,
            "audit_verify_final": verify.returncode == 0, "problems": problems, "ok": not problems}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=50)
    parser.add_argument("--max-delay", type=float, default=1.5, help="longest wait before each kill (s)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="triage-kill9-"))
    start = time.monotonic()
    result = run(args.cycles, workdir, args.seed, args.max_delay)
    result["seconds"] = round(time.monotonic() - start, 1)
    if args.json:
        print(json.dumps(result, indent=2))
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
