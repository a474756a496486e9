"""Helpers for the end-to-end triage tests (imported by tests/e2e/conftest.py and the tests):
node config files, storescu/echoscu, `triage-node serve` as a child process, index queries.

Every node here reads a TOML config file written under its own folder, so the same file serves
the in-process Node, `triage-node serve` and `triage-node worklist --config`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO / "config" / "profiles"
NODE_AE = "TRIAGE_NODE"
SCU_AE = "E2E_SCU"
SR_MODALITY = "SR"


# --------------------------------------------------------------------------- small helpers
def e2e_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def cli_command() -> list[str]:
    """How to run `triage-node` from this venv (the console script, else the module)."""
    script = Path(sys.executable).with_name("triage-node")
    return [str(script)] if script.exists() else [sys.executable, "-m", "node.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without TRIAGE_NODE__* overrides (the config file rules)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("TRIAGE_NODE__")}
    env.setdefault("OMP_NUM_THREADS", "1")  # two shared cores: one torch thread per process
    env.update(extra)
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(value)  # str, int, float, bool: JSON spelling is valid TOML here


def write_toml(path: Path, data: dict[str, dict[str, Any]]) -> Path:
    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


@dataclass
class NodeConfig:
    root: Path
    port: int
    config_path: Path

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'index.db'}"

    @property
    def audit_path(self) -> Path:
        return self.data_dir / "audit.jsonl"

    def settings(self):  # type: ignore[no-untyped-def]
        from node.config import load_settings

        return load_settings(self.config_path, {})


def node_config(root: Path, model_path: Path | str, **sections: dict[str, Any]) -> NodeConfig:
    """Write ``root/node.toml`` for a node on a free loopback port with ``model_path`` as [model] path."""
    root.mkdir(parents=True, exist_ok=True)
    port = e2e_free_port()
    data = root / "data"
    config: dict[str, dict[str, Any]] = {
        "node": {"data_dir": data, "log_level": "warning"},
        "dicom": {"ae_title": NODE_AE, "host": "127.0.0.1", "port": port, "allowed_peers": [SCU_AE],
                  "acse_timeout_seconds": 10, "dimse_timeout_seconds": 60, "network_timeout_seconds": 60},
        "storage": {"path": data / "storage", "min_free_bytes": 0},
        "database": {"url": f"sqlite:///{data / 'index.db'}"},
        "stability": {"quiet_seconds": 1.0, "tick_seconds": 0.25},
        "audit": {"path": data / "audit.jsonl"},
        "model": {"path": str(model_path), "device": "cpu", "offline": True, "batch_size": 8},
        "triage": {"profiles_dir": PROFILES_DIR, "poll_seconds": 0.2},
        "http": {"enabled": False, "host": "127.0.0.1", "port": 0},
    }
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return NodeConfig(root, port, write_toml(root / "node.toml", config))


# --------------------------------------------------------------------------- DICOM side
needs_dcmtk = pytest.mark.skipif(  # skip locally only: under CI a missing peer must fail, not hide
    not all(shutil.which(tool) for tool in ("storescu", "echoscu", "dcmcrle", "dciodvfy"))
    and not os.environ.get("CI"),
    reason="needs DCMTK (storescu, echoscu, dcmcrle) and dicom3tools (dciodvfy)")


def storescu(port: int, paths: list[Path], *options: str, timeout: float = 120) -> None:
    """Send files with DCMTK's storescu; ``options`` e.g. ``-xr`` (propose RLE) or ``-xv`` (JPEG 2000)."""
    cmd = ["storescu", "-aet", SCU_AE, "-aec", NODE_AE, *options, "127.0.0.1", str(port), *map(str, paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"storescu failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}"
    assert "error" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr


def echoscu(port: int) -> int:
    return subprocess.run(["echoscu", "-aet", SCU_AE, "-aec", NODE_AE, "127.0.0.1", str(port)],
                          capture_output=True, timeout=30, check=False).returncode


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# --------------------------------------------------------------------------- index queries
def open_db(url: str):  # type: ignore[no-untyped-def]
    from node.db.engine import Database

    return Database(url, migrate=False)


def worklist_row(db, study_uid: str) -> dict[str, Any] | None:  # type: ignore[no-untyped-def]
    from node.worklist.rows import worklist

    return next((row for row in worklist(db) if row["study_instance_uid"] == study_uid), None)


def study_instances(db, study_uid: str) -> list[tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    """(modality, sop_instance_uid, transfer_syntax_uid, path) of every indexed instance of a study."""
    from node.db.models import Instance, Series, Study

    with db.session() as session:
        rows = session.execute(
            select(Series.modality, Instance.sop_instance_uid, Instance.transfer_syntax_uid, Instance.path)
            .join(Series, Instance.series_pk == Series.id).join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_uid).order_by(Instance.id)).all()
    return [tuple(r) for r in rows]  # type: ignore[misc]


def sr_instances(db, study_uid: str) -> list[tuple[str, str, str, str]]:  # type: ignore[no-untyped-def]
    return [row for row in study_instances(db, study_uid) if row[0] == SR_MODALITY]


def study_jobs(db, study_uid: str) -> list[Any]:  # type: ignore[no-untyped-def]
    from node.db.models import TriageJob

    with db.session() as session:
        return list(session.execute(select(TriageJob).where(TriageJob.study_instance_uid == study_uid)
                                    .order_by(TriageJob.id)).scalars().all())


# --------------------------------------------------------------------------- a serve subprocess
class ServeProcess:
    """`triage-node serve --config ...` as a child process, its output in ``root/serve-N.log``."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0

    def start(self, timeout: float = 90) -> None:
        self.runs += 1
        self.log_path = self.cfg.root / f"serve-{self.runs}.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([*cli_command(), "serve", "--config", str(self.cfg.config_path)],
                                         stdout=log, stderr=subprocess.STDOUT, env=clean_env(), cwd=self.cfg.root)
        wait_until(lambda: port_open(self.cfg.port) or self.proc.poll() is not None, timeout,  # type: ignore[union-attr]
                   "triage-node serve to listen")
        assert self.proc.poll() is None, f"triage-node serve exited early:\n{self.log()}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.runs else ""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no clean shutdown, no chance to finish the job
        self.proc.wait(30)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)
            return None
