#!/usr/bin/env python3
"""Scale-out curve on one machine: ingest inst/s with 1, 2, 4 receiver processes and triage
images/s with 1 and 2 worker processes, all on one PostgreSQL and one storage folder.

    .venv/bin/python bench/scale_curve.py                      # receivers 1,2,4; workers 1,2; 3 reps
    .venv/bin/python bench/scale_curve.py --receivers 1,2 --workers 1 --reps 1   # quick look

Ingest point (R receivers): a fresh database and storage folder; R `triage-node serve` processes
with roles = ["receive"], each on its own loopback port (no load balancer: the 4 DCMTK storescu
senders are dealt round-robin to the ports); inst/s = instances / wall time of the senders;
checked: the index holds every instance sent.

Triage point (W workers): the study set is ingested first (one receiver, no timer); then W
processes with roles = ["triage"] start and load the tiny random test model (CPU, one torch
thread each: OMP_NUM_THREADS=1); then one process with roles = ["stability"] and quiet 0 queues
every study at once. images/s = images evaluated / (last job finished - first job queued), from
the database's own timestamps; checked: one job done and one SR per study.

PostgreSQL is a private throw-away cluster on 127.0.0.1 (initdb in a temp folder; as root it
runs as the postgres user). The machine's load average is printed with every point: on a
shared machine the absolute numbers are noisy, so each point is the median of --reps runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = REPO / ".venv" / "bin" / "python"
NODE = REPO / ".venv" / "bin" / "triage-node"
AET, CALLING = "TRIAGE_NODE", "MODALITY1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load() -> float:
    return os.getloadavg()[0]


@contextlib.contextmanager
def postgres(work: Path) -> Iterator[str]:
    """A private PostgreSQL on 127.0.0.1; yields the admin URL (database postgres)."""
    bindir = sorted(Path("/usr/lib/postgresql").glob("*/bin"))[-1]
    folder = work / "pg"
    folder.mkdir()
    as_pg: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    subprocess.run(
        [*as_pg, str(bindir / "initdb"), "-D", str(folder / "data"), "-A", "trust", "-U", "postgres"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(
        [
            *as_pg,
            str(bindir / "pg_ctl"),
            "-D",
            str(folder / "data"),
            "-l",
            str(folder / "log"),
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={folder} -c max_connections=300",
            "start",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(
            [*as_pg, str(bindir / "pg_ctl"), "-D", str(folder / "data"), "-m", "fast", "-w", "stop"],
            check=False,
            stdout=subprocess.DEVNULL,
        )


def sql(url: str, query: str) -> list[tuple]:  # type: ignore[type-arg]
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg", "postgresql")) as conn:
        return list(conn.execute(query).fetchall())


def new_database(admin: str, name: str) -> str:
    import psycopg

    with psycopg.connect(admin.replace("postgresql+psycopg", "postgresql") + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{admin}/{name}"


class Serve:
    """One `triage-node serve` child process with its own config and data dir."""

    def __init__(
        self, work: Path, name: str, db_url: str, storage: Path, roles: list[str], model: Path, *, quiet: float = 3600.0
    ) -> None:
        self.dir = work / name
        self.dir.mkdir(parents=True)
        self.port = free_port()
        config = f"""
[node]
data_dir = "{self.dir / "data"}"
log_level = "warning"
roles = {json.dumps(roles)}
[dicom]
ae_title = "{AET}"
host = "127.0.0.1"
port = {self.port}
allowed_peers = ["{CALLING}"]
[storage]
path = "{storage}"
min_free_bytes = 0
[database]
url = "{db_url}"
[stability]
quiet_seconds = {quiet}
tick_seconds = 0.2
[audit]
path = "{self.dir / "data" / "audit.jsonl"}"
[model]
path = "{model}"
device = "cpu"
offline = true
[triage]
profiles_dir = "{REPO / "config" / "profiles"}"
poll_seconds = 0.1
max_jobs_per_batch = 4
[http]
enabled = false
"""
        (self.dir / "node.toml").write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_NODE__")}
        env["OMP_NUM_THREADS"] = "1"
        self.log = self.dir / "serve.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(NODE), "serve", "--config", str(self.dir / "node.toml")],
                cwd=self.dir,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_text(self, path: Path, text: str, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.dir.name} exited: {self.log.read_text()[-2000:]}")
            if path.exists() and text in path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.dir.name}: no {text!r} in {path.name} after {timeout} s")

    def ready(self) -> Serve:
        self.wait_text(self.log, "Ctrl-C to stop")
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def send_lanes(data: Path, lanes: int, ports: list[int]) -> float:
    """storescu per lane, lane i to ports[i % len(ports)], all at once; returns wall seconds."""
    env = dict(os.environ, TCP_NODELAY="1")
    t0 = time.monotonic()
    procs = [
        subprocess.Popen(
            [
                "storescu",
                "-aet",
                CALLING,
                "-aec",
                AET,
                "+sd",
                "+r",
                "127.0.0.1",
                str(ports[i % len(ports)]),
                str(data / f"lane{i}"),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(lanes)
    ]
    for p in procs:
        _, err = p.communicate(timeout=900)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode(errors='replace')[-500:]}")
    return time.monotonic() - t0


def ingest_point(
    work: Path, admin: str, data: Path, n: int, lanes: int, receivers: int, model: Path, tag: str
) -> float:
    db = new_database(admin, tag)
    storage = work / tag / "storage"
    procs = [Serve(work / tag, f"rx{i}", db, storage, ["receive"], model) for i in range(receivers)]
    try:
        for p in procs:
            p.ready()
        seconds = send_lanes(data, lanes, [p.port for p in procs])
    finally:
        for p in procs:
            p.stop()
    indexed = sql(db, "SELECT count(*) FROM instance")[0][0]
    if indexed != n:
        raise RuntimeError(f"{tag}: {indexed} instances indexed, {n} sent")
    return n / seconds


def triage_point(
    work: Path, admin: str, data: Path, lanes: int, studies: int, workers: int, model: Path, tag: str
) -> float:
    db = new_database(admin, tag)
    storage = work / tag / "storage"
    rx = Serve(work / tag, "rx", db, storage, ["receive"], model).ready()
    try:
        send_lanes(data, lanes, [rx.port])
    finally:
        rx.stop()
    procs = [Serve(work / tag, f"w{i}", db, storage, ["triage"], model) for i in range(workers)]
    timer = None
    try:
        for p in procs:
            p.ready()
            p.wait_text(p.dir / "data" / "audit.jsonl", "model loaded")
        timer = Serve(work / tag, "timer", db, storage, ["stability"], model, quiet=0.0).ready()
        deadline = time.monotonic() + 900
        while sql(db, "SELECT count(*) FROM triage_job WHERE state = 'done'")[0][0] < studies:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{tag}: jobs did not finish")
            time.sleep(0.2)
    finally:
        for p in [*procs, *([timer] if timer else [])]:
            p.stop()
    ((first, last),) = sql(db, "SELECT min(queued_at), max(finished_at) FROM triage_job")
    jobs = sql(db, "SELECT count(*), count(DISTINCT study_instance_uid) FROM triage_job")[0]
    srs = sql(db, "SELECT count(*) FROM series WHERE modality = 'SR'")[0][0]
    if jobs != (studies, studies) or srs != studies:
        raise RuntimeError(f"{tag}: jobs {jobs}, SR series {srs}, studies {studies}")
    images = sum(len(json.loads(r[0])) for r in sql(db, "SELECT images FROM worklist_item"))
    return images / (last - first).total_seconds()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--receivers", default="1,2,4")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--studies", type=int, default=20, help="ingest set: studies x images, 256x256 DX")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--triage-studies", type=int, default=8)
    ap.add_argument("--triage-images", type=int, default=4)
    ap.add_argument("--lanes", type=int, default=4, help="concurrent storescu associations")
    a = ap.parse_args()
    receivers = [int(x) for x in a.receivers.split(",") if x]
    workers = [int(x) for x in a.workers.split(",") if x]

    with tempfile.TemporaryDirectory(prefix="scale-curve-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        subprocess.run(
            [
                str(PY),
                str(REPO / "bench" / "cluster_data.py"),
                str(work / "ingest"),
                "--studies",
                str(a.studies),
                "--images",
                str(a.images),
                "--lanes",
                str(a.lanes),
            ],
            check=True,
        )
        subprocess.run(
            [
                str(PY),
                str(REPO / "bench" / "cluster_data.py"),
                str(work / "triage"),
                "--studies",
                str(a.triage_studies),
                "--images",
                str(a.triage_images),
                "--lanes",
                "1",
            ],
            check=True,
        )
        subprocess.run(
            [
                str(PY),
                "-c",
                "import sys; from pathlib import Path; "
                "from node.triage.tiny_model import build_tiny_siglip; "
                "build_tiny_siglip(Path(sys.argv[1]), image_size=64, seed=0)",
                str(work / "model"),
            ],
            check=True,
        )
        n = a.studies * a.images
        rows: list[str] = []
        with postgres(work) as admin:
            for r in receivers:
                vals, loads = [], []
                for rep in range(a.reps):
                    loads.append(load())
                    vals.append(
                        ingest_point(work, admin, work / "ingest", n, a.lanes, r, work / "model", f"ingest_r{r}_{rep}")
                    )
                    print(f"ingest receivers={r} rep={rep}: {vals[-1]:.1f} inst/s (load {loads[-1]:.1f})", flush=True)
                rows.append(
                    f"| ingest | {r} receiver{'s' if r > 1 else ''} | {statistics.median(vals):.1f} inst/s | "
                    f"{min(vals):.1f}-{max(vals):.1f} | {min(loads):.1f}-{max(loads):.1f} |"
                )
            for w in workers:
                vals, loads = [], []
                for rep in range(a.reps):
                    loads.append(load())
                    vals.append(
                        triage_point(
                            work, admin, work / "triage", 1, a.triage_studies, w, work / "model", f"triage_w{w}_{rep}"
                        )
                    )
                    print(f"triage workers={w} rep={rep}: {vals[-1]:.2f} images/s (load {loads[-1]:.1f})", flush=True)
                rows.append(
                    f"| triage | {w} worker{'s' if w > 1 else ''} | {statistics.median(vals):.2f} images/s | "
                    f"{min(vals):.2f}-{max(vals):.2f} | {min(loads):.1f}-{max(loads):.1f} |"
                )
    print(
        f"\ningest: {n} instances (256x256 DX, {a.lanes} storescu associations); triage: "
        f"{a.triage_studies} studies x {a.triage_images} images, tiny random model on CPU; median of {a.reps}"
    )
    print("| what | processes | median | min-max | load avg (1 min) at start |")
    print("|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
