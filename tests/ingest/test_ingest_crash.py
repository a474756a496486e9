"""kill -9 of `triage-node serve` (a real subprocess) while DCMTK's storescu sends a 200-slice CT.

Acceptance: "Five kill -9 cycles during a 200-slice send lose no acknowledged instance", and "a
study's job appears after the quiet period even if the node was killed during it". After every
restart: each instance storescu saw acknowledged is stored byte-identical, the index rows are
exactly the files on disk, no temp file is left; at the end the audit chain verifies.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

import pytest

from node.db.engine import Database
from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE
from tests.support.dimse import storescu_acknowledged
from tests.support.files import dataset_bytes, file_sop_uid, incoming_files, stored_files
from tests.support.index import index_snapshot
from tests.support.polling import wait_until
from tests.support.serve import run_cli, status_json

pytestmark = [pytest.mark.slow]


class StorescuRun:
    """storescu -v in the background; its log is read line by line as it is written."""

    def __init__(self, port: int, files: list[Path]) -> None:
        cmd = [
            "storescu",
            "-v",
            "-aet",
            "STORESCU",
            "-aec",
            NODE_AE,
            "-to",
            "10",
            "-ta",
            "10",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: list[str] = []
        self.acks = 0
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._lock:
                self.lines.append(line)
                if "Received Store Response (Success)" in line:
                    self.acks += 1

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc, "".join(self.lines)


def check_store_matches(db: Database, storage: Path, acked: dict[str, Path]) -> dict[str, Path]:
    """Every acknowledged instance is stored and identical; index rows == files; no temp files."""
    files = stored_files(storage)
    missing = sorted(set(acked) - set(files))
    assert not missing, f"{len(missing)} acknowledged instances lost, e.g. {missing[:3]}"
    for sop, src in acked.items():
        assert dataset_bytes(files[sop]) == dataset_bytes(src), f"{src.name}: stored copy differs"
    rows = index_snapshot(db)["instances"]
    assert {r["path"] for r in rows.values()} == {p.relative_to(storage).as_posix() for p in files.values()}
    for sop, row in rows.items():
        assert row["size_bytes"] == files[sop].stat().st_size
    assert incoming_files(storage) == []
    return files


@pytest.mark.dcmtk
def test_five_kill9_cycles_during_a_200_slice_send_lose_no_acknowledged_instance(
    tmp_path, settings_dict, serve_factory, dicom_factory
) -> None:
    series = dicom_factory.ct_series(200, size=512)
    sop_of = {str(p): file_sop_uid(p) for p in series}
    data = settings_dict(tmp_path, stability={"quiet_seconds": 600}, node={"log_level": "info"})
    port = data["dicom"].pop("port")
    node = serve_factory(data, env_overrides={"dicom.port": port})
    storage = Path(data["storage"]["path"])
    rng = random.Random(20240314)

    acked: dict[str, Path] = {}
    for cycle in range(5):
        node.start()
        db = Database(data["database"]["url"], migrate=False)
        try:
            check_store_matches(db, storage, acked)  # after the previous kill and restart
        finally:
            db.dispose()
        order = series[:]
        rng.shuffle(order)  # each cycle mixes instances already stored with new ones
        kill_after = rng.randint(50, 100)
        sender = StorescuRun(port, order)
        wait_until(
            lambda: sender.acks >= kill_after or sender.proc.poll() is not None,
            120,
            f"{kill_after} acknowledgements",
            interval=0.002,
        )
        if cycle % 2 == 0:
            # kill while an instance is being written (its temp file exists, nothing acknowledged)
            incoming = storage / ".incoming"
            deadline = time.monotonic() + 0.15  # bounded: late cycles have few new instances left
            while (
                time.monotonic() < deadline
                and sender.proc.poll() is None
                and not any(n.endswith(".part") for n in os.listdir(incoming))
            ):
                pass
        else:
            time.sleep(rng.uniform(0, 0.03))  # anywhere in the next instance: receive, write, commit
        assert sender.proc.poll() is None, "storescu finished before the kill: " + "".join(sender.lines)[-2000:]
        node.kill()  # SIGKILL, mid-send
        rc, log = sender.wait()
        assert rc != 0, "storescu did not notice the node dying"
        this_cycle = storescu_acknowledged(log)
        assert kill_after <= len(this_cycle) < 200
        for path in this_cycle:
            acked[sop_of[path]] = Path(path)
        assert (Path(data["node"]["data_dir"]) / ".running").exists()  # it really died uncleanly

    node.start()
    db = Database(data["database"]["url"], migrate=False)
    try:
        check_store_matches(db, storage, acked)
        final = StorescuRun(port, series)
        rc, log = final.wait()
        assert rc == 0, log[-3000:]
        assert len(storescu_acknowledged(log)) == 200
        assert node.terminate() == 0
        everything = {sop_of[str(p)]: p for p in series}
        files = check_store_matches(db, storage, everything)
        assert len(files) == 200
    finally:
        db.dispose()
    result = run_cli("audit", "verify", "--config", str(node.config), env=node.env)
    assert result.returncode == 0, result.stdout + result.stderr
    status = status_json(node.config, env=node.env)
    assert (status["studies"], status["series"], status["instances"]) == (1, 1, 200)


def test_kill9_during_quiet_period_job_appears_at_restart(
    tmp_path, settings_dict, serve_factory, dicom_factory
) -> None:
    quiet = 3.0
    data = settings_dict(tmp_path, stability={"quiet_seconds": quiet, "tick_seconds": 0.2})
    node = serve_factory(data)
    node.start()
    results = send(
        dicom_factory.ct_series(5, size=64),
        Destination(NODE_AE, "127.0.0.1", data["dicom"]["port"]),
        calling_ae="PYSCU",
    )
    assert [r.status for r in results] == [0] * 5
    node.kill()
    killed_at = time.monotonic()
    status = status_json(node.config, env=node.env)
    assert status["instances"] == 5 and status["jobs"]["queued"] == 0 and status["studies_receiving"] == 1

    wait_until(lambda: time.monotonic() - killed_at > quiet + 0.5, quiet + 5, "the quiet period to end", interval=0.1)
    node.start()  # returns once it listens, i.e. after start-up's own stability tick
    status = status_json(node.config, env=node.env)
    assert status["jobs"]["queued"] == 1, status
    assert status["studies_stable"] == 1
    assert node.terminate() == 0
