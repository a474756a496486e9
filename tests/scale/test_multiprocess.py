"""Several `triage-node serve` processes on one PostgreSQL and one storage path (issue 11, part 2).

Two receivers (roles receive + stability) and one triage worker (role triage) run as real
subprocesses. One study arrives half at each receiver; the worker is killed with SIGKILL while
it holds the study's running job; a second worker (another process slot, as on another host)
retakes the job only after its lease ran out. At the end: one study, one job done once (two
attempts), exactly one SR stored and current, index rows == files, no temp file left, and
`audit verify` checks the audit file of every process (the dead one's included).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, text

from tests.support.config import NODE_AE, PROFILES_DIR, NodeConfig, triage_sections, write_node_config
from tests.support.polling import wait_until
from tests.support.serve import ServeProcess

SCU_AE = "SCALE_SCU"
LEASE_SECONDS = 3.0

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


class Member(ServeProcess):
    """One `triage-node serve` of the cluster, with its own config, data dir and audit file."""

    def __init__(self, cfg: NodeConfig, name: str) -> None:
        super().__init__(cfg.config_path, cfg.root, name=name)
        self.root, self.port = cfg.root, cfg.port


@pytest.fixture
def cluster(tmp_path: Path, postgres_url: str, tiny_model_dir: Path) -> Iterator[Callable[..., Member]]:
    """``make(name, roles)`` writes a config sharing the database and storage path; all stopped at teardown."""
    made: list[Member] = []
    shared_storage = tmp_path / "shared-storage"

    def make(name: str, roles: list[str]) -> Member:
        sections = triage_sections(tiny_model_dir, batch_size=4)
        sections["triage"].update(
            {
                "profiles_dir": str(PROFILES_DIR),
                "poll_seconds": 0.1,
                "stale_job_seconds": LEASE_SECONDS,
                "heartbeat_seconds": 0.5,
            }
        )
        cfg = write_node_config(
            tmp_path / name,
            **sections,
            node={"roles": roles},
            dicom={"allowed_peers": [SCU_AE]},
            storage={"path": str(shared_storage)},
            database={"url": postgres_url},
            stability={"quiet_seconds": 1.5, "tick_seconds": 0.2},
        )
        made.append(Member(cfg, name))  # one audit file per process (per host): each under its own data dir
        return made[-1]

    yield make
    for p in made:
        p.stop(timeout=10)


def _split_study(folder: Path, factory: Any, n: int) -> tuple[str, list[Path]]:
    """``n`` large chest DX images of ONE study (large so that preprocessing takes a while)."""
    first = pydicom.dcmread(factory.dx_image(rows=1024, cols=1024, out_dir="split"))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        uid = generate_uid()
        first.SOPInstanceUID = first.file_meta.MediaStorageSOPInstanceUID = uid
        first.InstanceNumber = i + 1
        paths.append(folder / f"img{i:02d}.dcm")
        first.save_as(paths[-1], enforce_file_format=True)
    return str(first.StudyInstanceUID), paths


def _listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, from /proc (its socket inodes matched to LISTEN rows)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A = LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


def _send_half(port: int, paths: list[Path], errors: list[str]) -> None:
    from node.dimse.scu import Destination, send

    try:
        results = send(paths, Destination(NODE_AE, "127.0.0.1", port), calling_ae=SCU_AE)
        bad = [r for r in results if r.status != 0]
        if bad:
            errors.append(f"port {port}: {len(bad)} failed")
    except Exception as exc:  # reported by the test thread
        errors.append(f"port {port}: {exc!r}")


def test_two_receivers_one_worker_killed_mid_job(cluster, dicom_factory, tmp_path: Path, postgres_url: str) -> None:
    r1, r2 = cluster("receiver1", ["receive", "stability"]), cluster("receiver2", ["receive", "stability"])
    w1 = cluster("worker1", ["triage"])
    for p in (r1, r2, w1):
        p.start(wait=False)  # the three start while the study is written
    study_uid, paths = _split_study(tmp_path / "study", dicom_factory, 16)
    for p in (r1, r2, w1):
        p.wait_ready(90)

    # a receive-only process never loaded torch; a triage-only process opens no DICOM port
    assert r1.proc is not None and w1.proc is not None
    assert "libtorch" not in Path(f"/proc/{r1.proc.pid}/maps").read_text()
    assert "libtorch" in Path(f"/proc/{w1.proc.pid}/maps").read_text()
    assert r1.port in _listening_ports(r1.proc.pid)
    assert _listening_ports(w1.proc.pid) == set(), "a triage-only process must not listen"
    assert "without a DICOM port" in w1.output()

    # one study, half of its instances at each receiver, at the same time
    errors: list[str] = []
    senders = [threading.Thread(target=_send_half, args=(r.port, paths[i::2], errors)) for i, r in enumerate((r1, r2))]
    for t in senders:
        t.start()
    for t in senders:
        t.join(120)
    assert not errors, errors

    engine = create_engine(postgres_url.replace("postgresql+psycopg", "postgresql+psycopg", 1))

    def rows(sql: str, **params: Any) -> list[Any]:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params).all())

    # catch the worker while it holds the running job, then SIGKILL it
    running = wait_until(
        lambda: rows(
            "SELECT id, worker FROM triage_job WHERE study_instance_uid = :u AND state = 'running'", u=study_uid
        ),
        60,
        "the job to run",
        interval=0.01,
    )
    job_id, dead_worker = running[0]
    w1.kill()
    killed_at = time.monotonic()
    state = rows("SELECT state, worker FROM triage_job WHERE id = :i", i=job_id)[0]
    assert state == ("running", dead_worker), f"the job finished before the kill could catch it: {state}"

    # another worker process (another slot, as on another host) retakes it after the lease
    w2 = cluster("worker2", ["triage"]).start(timeout=90)
    wait_until(
        lambda: rows("SELECT 1 FROM triage_job WHERE id = :i AND state = 'done'", i=job_id),
        60,
        "the retaken job to finish",
    )
    assert time.monotonic() - killed_at >= LEASE_SECONDS - 0.5, "retaken before the lease ran out"

    # invariants: one study, one job done once, exactly one current SR, rows == files, no temp files
    assert rows("SELECT instance_count FROM study WHERE study_instance_uid = :u", u=study_uid) == [(len(paths) + 1,)]
    jobs = rows("SELECT id, state, attempts, worker FROM triage_job")
    assert len(jobs) == 1 and jobs[0][:3] == (job_id, "done", 2) and jobs[0][3] != dead_worker, jobs
    srs = rows(
        "SELECT i.sop_instance_uid, i.path FROM instance i JOIN series s ON i.series_pk = s.id WHERE s.modality = 'SR'"
    )
    assert len(srs) == 1, srs
    expected_sr = generate_uid(entropy_srcs=["triage-node-sr", study_uid, str(job_id)])
    assert srs[0][0] == expected_sr
    assert rows("SELECT sr_sop_instance_uid, job_id FROM worklist_item") == [(expected_sr, job_id)]
    storage = tmp_path / "shared-storage"
    on_disk = {p.relative_to(storage).as_posix() for p in storage.rglob("*.dcm") if ".incoming" not in p.parts}
    assert on_disk == {r[0] for r in rows("SELECT path FROM instance")}
    assert len(on_disk) == len(paths) + 1
    assert list((storage / ".incoming").glob("*.part")) == []
    sr = pydicom.dcmread(storage / srs[0][1])
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study_uid

    # every process's audit file is checked from one place, the killed worker's included
    for p in (r1, r2, w2):
        p.stop()
    exe = Path(sys.executable).with_name("triage-node")
    verify = subprocess.run(
        [str(exe), "audit", "verify", "--config", str(r1.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "4 audit files checked, 0 with a problem" in verify.stdout, verify.stdout
    for p in (r1, r2, w1, w2):
        assert str(p.root / "data" / "audit.jsonl") in verify.stdout

    # a deleted audit file of another process is found from here
    (w1.root / "data" / "audit.jsonl").unlink()
    verify = subprocess.run(
        [str(exe), "audit", "verify", "--config", str(r1.config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 1 and "does not exist" in verify.stderr, verify.stderr
    engine.dispose()
