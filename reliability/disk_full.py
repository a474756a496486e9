#!/usr/bin/env python3
"""Disk full: storage on a small tmpfs, instances sent until the disk is full, then space freed.

Checks: once the volume is full every C-STORE is answered 0xA700 (out of resources), nothing
half-written is indexed or left in the temp folder, every acknowledged instance is intact, and
when space returns the node stores again by itself (no restart).

Two runs: with ``storage.min_free_bytes = 0`` (the write itself fails with ENOSPC) and with a
floor (the node refuses before writing). Needs root (it mounts a tmpfs) and unmounts it after.

    sudo .venv/bin/python reliability/disk_full.py --size-mb 20
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Node, association, check_store, ct_instance, dataset_bytes
from pydicom.uid import generate_uid


def mount_tmpfs(where: Path, size_mb: int) -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)], check=True)


def run_once(workdir: Path, size_mb: int, floor: int) -> dict:  # type: ignore[type-arg]
    volume = workdir / "volume"
    mount_tmpfs(volume, size_mb)
    try:
        node = Node(workdir / "node", overrides={"storage": {"path": volume / "storage", "min_free_bytes": floor}})
        filler = volume / "filler.bin"  # another tenant's file, removed later to give space back
        filler.write_bytes(b"\0" * (size_mb * 1024 * 1024 // 4))
        node.start()
        acked: dict[str, tuple[str, str, bytes]] = {}
        statuses: dict[str, int] = {}
        study, series = generate_uid(), generate_uid()
        assoc = association(node.port)
        number = 0
        refused_in_a_row = 0
        while refused_in_a_row < 20 and number < 10_000:
            number += 1
            ds = ct_instance(study, series, number, size=256)  # ~130 KB each
            status = int(assoc.send_c_store(ds).Status)
            statuses[f"0x{status:04X}"] = statuses.get(f"0x{status:04X}", 0) + 1
            if status == 0:
                acked[str(ds.SOPInstanceUID)] = (study, series, dataset_bytes(ds))
                refused_in_a_row = 0
            else:
                refused_in_a_row += 1
        full_report = check_store(node, acked)
        # space returns (the other tenant's file is removed): the node stores again, no restart
        freed = filler.stat().st_size
        filler.unlink()
        retry = [int(assoc.send_c_store(ct_instance(study, series, 100_000 + i, size=64)).Status) for i in range(5)]
        assoc.release()
        node.stop()
        return {
            "floor_bytes": floor,
            "sent": number,
            "statuses": statuses,
            "acknowledged_before_full": full_report["acknowledged"],
            "missing_or_different": len(full_report["missing"]) + len(full_report["different"]),
            "orphan_rows": len(full_report["orphan_rows"]),
            "orphan_files": len(full_report["orphan_files"]),
            "temp_files_left": len(full_report["temp_files"]),
            "freed_bytes": freed,
            "after_freeing": retry,
            "ok": (
                statuses.get("0xA700", 0) >= 20
                and not full_report["missing"]
                and not full_report["different"]
                and not full_report["orphan_files"]
                and not full_report["orphan_rows"]
                and not full_report["temp_files"]
                and retry == [0] * 5
            ),
        }
    finally:
        subprocess.run(["umount", "-l", str(volume)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=20)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="triage-diskfull-"))
    start = time.monotonic()
    results = [
        run_once(workdir / "enospc", args.size_mb, 0),
        run_once(workdir / "floor", args.size_mb, 2 * 1024 * 1024),
    ]
    seconds = round(time.monotonic() - start, 1)
    if args.json:
        print(json.dumps({"runs": results, "seconds": seconds}, indent=2))
    else:
        for r in results:
            print(
                f"floor {r['floor_bytes']:>8} B: sent {r['sent']}, statuses {r['statuses']}, "
                f"missing/different {r['missing_or_different']}, orphans {r['orphan_rows']}/{r['orphan_files']}, "
                f"temp files {r['temp_files_left']}, after freeing {r['after_freeing']}: "
                f"{'ok' if r['ok'] else 'FAILED'}"
            )
        print(f"seconds {seconds}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
