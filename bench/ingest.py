#!/usr/bin/env python3
"""C-STORE ingest benchmark: triage-node against DCMTK storescp and Orthanc, in the same run.

It does not re-implement anything: it calls ``../shared/peerbench/bench.py run`` (the shared
loopback harness, see its RESULTS.md), adding our node as one more receiver with
``--receiver-cmd``, and then prints a side-by-side table (inst/s, MB/s, receiver CPU, and the
ratio ours/orthanc) per scenario.

    .venv/bin/python bench/ingest.py --reps 1                 # quick look (~3 min on 2 cores)
    .venv/bin/python bench/ingest.py --reps 3                 # the numbers in bench/RESULTS.md
    .venv/bin/python bench/ingest.py --table bench/results/ingest-*.json   # re-print a table

Our receiver runs exactly as shipped (config/node.toml: fsync on, SQLite index in WAL mode
with synchronous=FULL, audit log with fsync, 1 MiB max PDU, TCP_NODELAY on); only what a
benchmark must change is overridden by environment variables: every path goes into the
harness's fresh per-run work dir ({root}, storage = {out}), any calling AE is allowed, the
port/AE title are the harness's, and the quiet period is an hour so no triage job is queued
mid-run, and the triage worker is off (it is not on the C-STORE path; at start it would import
torch and try to load the model). Each run is verified: the instance count in our index (the same query as
``triage-node status``) must equal the number of .dcm files under storage and the number sent.

Everything runs with TCP_NODELAY=1 (bench.py --tcp-nodelay), which the DCMTK tools and
Orthanc need to avoid 40 ms delayed-ACK stalls; our node sets the option itself.
Data, work dirs and raw results go to $PEERBENCH_DIR (default /tmp/peerbench); the raw JSON
is also copied to bench/results/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERBENCH = Path(os.environ.get("PEERBENCH_SRC", REPO.parent / "shared" / "peerbench"))
BENCH_PY = PEERBENCH / "bench.py"
OUT = Path(os.environ.get("PEERBENCH_DIR", "/tmp/peerbench"))
PY = os.environ.get("PEERBENCH_PYTHON", str(REPO / ".venv" / "bin" / "python"))
NODE_BIN = REPO / ".venv" / "bin" / "triage-node"
NODE_CONFIG = REPO / "config" / "node.toml"
NAME = "triage-node"
PORT = 11114
STORESCP_PORT = 11109
AET = "TRIAGE_NODE"
SCENARIOS = ("ct", "dx", "small", "dx-par4")


def node_env(extra: list[str]) -> list[str]:
    """TRIAGE_NODE__* overrides; {root}/{out}/{port}/{aet} are filled in by bench.py per run."""
    env = [
        "TRIAGE_NODE__NODE__DATA_DIR={root}/data",
        "TRIAGE_NODE__STORAGE__PATH={out}",
        "TRIAGE_NODE__DATABASE__URL=sqlite:///{root}/data/index.db",
        "TRIAGE_NODE__AUDIT__PATH={root}/data/audit.jsonl",
        "TRIAGE_NODE__DICOM__HOST=127.0.0.1",
        "TRIAGE_NODE__DICOM__PORT={port}",
        "TRIAGE_NODE__DICOM__AE_TITLE={aet}",
        'TRIAGE_NODE__DICOM__ALLOWED_PEERS=["*"]',
        "TRIAGE_NODE__STABILITY__QUIET_SECONDS=3600",
        # The triage worker is not part of the C-STORE path; with quiet_seconds=3600 it would have
        # no job anyway, but at start it imports torch and tries to load the model (network), which
        # would steal CPU from the ingest being measured.
        "TRIAGE_NODE__TRIAGE__ENABLED=false",
        # The HTTP side (DICOMweb, /metrics) stays on as shipped, but on a free port: 8080 may be taken.
        "TRIAGE_NODE__HTTP__PORT=0",
    ]
    return env + list(extra)


def receiver_cmd(extra_env: list[str], wrapper: str = "") -> str:
    # `env` execs the node, so bench.py's SIGTERM reaches the node itself (clean shutdown).
    parts = ["env", *node_env(extra_env)]
    if wrapper:
        parts += shlex.split(wrapper)
    parts += [str(NODE_BIN), "serve", "--config", str(NODE_CONFIG)]
    return " ".join(shlex.quote(p) for p in parts)


def verify_cmd(extra_env: list[str]) -> str:
    # Runs after the send, before the receiver is stopped; prints one integer for bench.py.
    parts = ["env", *node_env(extra_env), PY, str(Path(__file__).resolve()), "--count", "{root}"]
    return " ".join(shlex.quote(p) for p in parts)


def count_stored(root: str) -> int:
    """min(index instance rows, .dcm files under storage): both must hold every instance."""
    sys.path.insert(0, str(REPO))
    from node.config import load_settings
    from node.db.engine import Database
    from node.status import node_status

    settings = load_settings(NODE_CONFIG)
    db = Database(settings.database.url, migrate=False)
    indexed = node_status(db)["instances"]
    db.dispose()
    files = sum(1 for _ in Path(settings.storage.path).rglob("*.dcm"))
    if files != indexed:
        print(f"MISMATCH index={indexed} files={files}", file=sys.stderr)
    return min(files, indexed)


# ----------------------------------------------------------------------------- table
def _med(vals: list[float]) -> float:
    return statistics.median(vals) if vals else float("nan")


def _cell(vals: list[float], nd: int) -> str:
    if not vals:
        return "–"
    if len(vals) == 1:
        return f"{vals[0]:.{nd}f}"
    return f"{_med(vals):.{nd}f} ({min(vals):.{nd}f}–{max(vals):.{nd}f})"


def table(paths: list[str], ours: str = NAME, ref: str = "orthanc") -> str:
    res = []
    for p in paths:
        with open(p) as f:
            res += json.load(f)["results"]
    receivers: list[str] = []
    scenarios: list[str] = []
    for r in res:
        if r["receiver"] not in receivers:
            receivers.append(r["receiver"])
        if r["scenario"] not in scenarios:
            scenarios.append(r["scenario"])
    lines = [
        "| scenario | receiver | inst/s | MB/s | rxCPU s | wall s | ok | ours/orthanc (inst/s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sc in scenarios:
        ref_runs = [r for r in res if r["receiver"] == ref and r["scenario"] == sc and "error" not in r]
        ref_med = _med([r["inst_per_s"] for r in ref_runs])
        for rc in receivers:
            rs = [r for r in res if r["receiver"] == rc and r["scenario"] == sc]
            if not rs:
                continue
            good = [r for r in rs if "error" not in r]
            nok = sum(1 for r in rs if r.get("ok"))
            ratio = ""
            if good and ref_runs and rc != ref:
                ratio = f"{_med([r['inst_per_s'] for r in good]) / ref_med:.2f}×"
                if rc == ours:
                    ratio = f"**{ratio}**"
            lines.append(
                f"| {sc} | {rc} | {_cell([r['inst_per_s'] for r in good], 0)} | "
                f"{_cell([r['mb_per_s'] for r in good], 1)} | {_cell([r['receiver_cpu_s'] for r in good], 2)} | "
                f"{_cell([r['wall_s'] for r in good], 2)} | {nok}/{len(rs)} | {ratio} |"
            )
    fails = [r for r in res if not r.get("ok")]
    for r in fails:
        lines.append(
            f"\nFAIL {r['receiver']}/{r['scenario']} rep{r.get('rep')}: "
            f"{r.get('error') or 'stored {}/{} rc {}'.format(r.get('stored_instances'), r.get('instances'), r.get('sender_rc'))}"
        )
    loads = [(r["receiver"], r["scenario"], r.get("rep"), r.get("loadavg_before")) for r in res]
    hi = [x for x in loads if x[3] and float(x[3][0]) > 1.5]
    if hi:
        lines.append("\nload average > 1.5 before: " + ", ".join(f"{a}/{b}/r{c} ({d[0]})" for a, b, c, d in hi))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def _run_bench(cmd: list[str], env: dict[str, str]) -> int:
    """Run one bench.py call; on SIGTERM/SIGINT pass SIGINT on, so that bench.py's own cleanup
    stops the receiver it started (bench.py stops receivers in a finally block)."""
    # SIGINT back to default in the child: a job started with `&` inherits SIGINT ignored, and a
    # Python started that way keeps ignoring it (no KeyboardInterrupt, so no cleanup).
    proc = subprocess.Popen(cmd, env=env, cwd=OUT, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    stopping = []

    def forward(signum, _frame):  # type: ignore[no-untyped-def]
        stopping.append(signum)
        proc.send_signal(signal.SIGINT)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if stopping:
        raise SystemExit(128 + stopping[0])
    return rc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument(
        "--receivers",
        default=f"storescp,orthanc,{NAME}",
        help=f"bench.py receivers; {NAME} (and --variant names) are ours",
    )
    ap.add_argument(
        "--node-env",
        action="append",
        default=[],
        metavar="KEY=VAL",
        help=f"extra TRIAGE_NODE__* override for {NAME} (diagnostics only; the recorded numbers use none)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:KEY=VAL[,KEY=VAL]",
        help="an extra receiver of ours with more overrides, e.g. "
        "'tn-nofsync:TRIAGE_NODE__STORAGE__FSYNC=false' (add NAME to --receivers)",
    )
    ap.add_argument("--pause", type=float, default=1.0)
    ap.add_argument("--json", default=None, help="raw results (default bench/results/ingest-<time>.json)")
    ap.add_argument("--table", nargs="+", metavar="JSON", help="only print the table of earlier runs")
    ap.add_argument("--count", metavar="ROOT", help=argparse.SUPPRESS)  # used as bench.py's verifier
    a = ap.parse_args()

    if a.count:
        print(count_stored(a.count))
        return 0
    if a.table:
        print(table(a.table))
        return 0

    OUT.mkdir(parents=True, exist_ok=True)
    data = OUT / "data"
    if not (data / "ct").is_dir():
        subprocess.run([PY, str(PEERBENCH / "gen_data.py"), "--out", str(data)], check=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    raw = OUT / "results" / f"ingest-{stamp}.json"
    keep = Path(a.json) if a.json else REPO / "bench" / "results" / raw.name

    ours = {NAME: list(a.node_env)}
    for v in a.variant:
        name, _, kvs = v.partition(":")
        ours[name] = list(a.node_env) + [kv for kv in kvs.split(",") if kv]
    base = [
        PY,
        str(BENCH_PY),
        "run",
        "--tcp-nodelay",
        "--reps",
        "1",
        "--receivers",
        a.receivers,
        "--pause",
        str(a.pause),
    ]
    # storescp's default port 11112 is also triage-node's default (and may be in use): keep off it.
    base += ["--receiver-port", f"storescp={STORESCP_PORT}"]
    for i, (name, env) in enumerate(ours.items()):
        base += [
            "--receiver-cmd",
            f"{name}={receiver_cmd(env)}",
            "--receiver-port",
            f"{name}={PORT + i}",
            "--receiver-aet",
            f"{name}={AET}",
            "--receiver-verify",
            f"{name}=cmd:{verify_cmd(env)}",
        ]
    env = dict(os.environ, PEERBENCH_DIR=str(OUT), PEERBENCH_PYTHON=PY)
    parts_dir = OUT / "results" / f"ingest-{stamp}"
    parts_dir.mkdir(parents=True, exist_ok=True)
    print("+ " + " ".join(shlex.quote(c) for c in base) + " --scenarios SCENARIO --json PART.json", flush=True)
    print(f"load average before: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    # Interleaved: for each repetition and scenario, every receiver back to back (one bench.py
    # call each), so that a burst of load from the neighbours hits all receivers alike.
    merged: dict = {}
    rc = 0
    for rep in range(a.reps):
        for sc in a.scenarios.split(","):
            part = parts_dir / f"r{rep}-{sc}.json"
            rc |= _run_bench([*base, "--scenarios", sc, "--json", str(part)], env)
            if not part.exists():
                continue
            with open(part) as f:
                run = json.load(f)
            for r in run["results"]:
                r["rep"] = rep
            if not merged:
                merged = run
                merged["args"]["reps"] = a.reps
                merged["args"]["scenarios"] = a.scenarios
                merged["args"]["interleaved_by"] = "ingest.py: one bench.py call per (rep, scenario)"
            else:
                merged["results"] += run["results"]
            with open(raw, "w") as f:
                json.dump(merged, f, indent=1)
    print(f"load average after: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    if raw.exists():
        keep.parent.mkdir(parents=True, exist_ok=True)
        # the kept copy is committed: it names no path of this machine
        text = raw.read_text()
        for path, name in ((str(REPO), "<repo>"), (str(REPO.parent / "shared"), "<shared>"), ("/tmp/", "<tmp>/")):
            text = text.replace(path, name)
        keep.write_text(text)
        print(f"\nraw results: {keep}\n")
        print(table([str(keep)]))
    return rc


if __name__ == "__main__":
    sys.exit(main())
