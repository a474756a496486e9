"""Shared parts of the fault-campaign scripts: a `triage-node serve` subprocess on a scratch
directory, a sender of small synthetic CT instances, and the checks every script ends with
(every acknowledged instance on disk byte-identical and indexed, no orphans, audit verify).

Nothing here is a mock: the node runs as an operator runs it (the console script, a TOML config),
the senders are pynetdicom SCUs over loopback, and the checks read the files, the SQLite index and
`triage-node audit verify`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]

NODE_AE = "TRIAGE_NODE"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "triage-node"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "node.cli"]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    lines: list[str] = []
    for name, body in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {_toml(v)}" for k, v in body.items()]
        lines.append("")
    path.write_text("\n".join(lines))
    return path


@dataclass
class Node:
    """One node's scratch directory, config and (while running) process."""

    root: Path
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    extra_toml: str = ""  # appended verbatim, e.g. [[forward]] tables
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        data = self.root / "data"
        sections: dict[str, dict[str, Any]] = {
            "node": {"data_dir": data, "log_level": "warning"},
            "dicom": {
                "ae_title": NODE_AE,
                "host": "127.0.0.1",
                "port": self.port,
                "allowed_peers": ["*"],
                "max_associations": 16,
            },
            "storage": {"path": data / "storage", "min_free_bytes": 0},
            "database": {"url": f"sqlite:///{data / 'index.db'}"},
            "stability": {"quiet_seconds": 3600},
            "audit": {"path": data / "audit.jsonl"},
            "triage": {"enabled": False},
            "http": {"enabled": False},
        }
        for name, body in self.overrides.items():
            sections.setdefault(name, {}).update(body)
        self.sections = sections
        self.config = write_config(self.root / "node.toml", sections)
        if self.extra_toml:
            with self.config.open("a", encoding="utf-8") as f:
                f.write("\n" + self.extra_toml)

    @property
    def storage(self) -> Path:
        return Path(self.sections["storage"]["path"])

    @property
    def db_path(self) -> Path:
        return Path(str(self.sections["database"]["url"]).removeprefix("sqlite:///"))

    def start(self, timeout: float = 60) -> Node:
        self.starts += 1
        log = open(self.root / f"serve-{self.starts}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*cli(), "serve", "--config", str(self.config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited {self.proc.returncode}: {self.log_text()[-2000:]}")
            if "listening as" in self.log_text():
                return self
            time.sleep(0.05)
        raise RuntimeError("serve did not start")

    def log_text(self) -> str:
        path = self.root / f"serve-{self.starts}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(60)

    def rss_kib(self) -> int:
        return _status_kib(self.proc.pid, "VmRSS") if self.proc else 0

    def threads(self) -> int:
        return _status_kib(self.proc.pid, "Threads") if self.proc else 0

    def audit_verify(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*cli(), "audit", "verify", "--config", str(self.config)], capture_output=True, text=True, timeout=120
        )


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- instances
def ct_instance(study_uid: str, series_uid: str, number: int, size: int = 64) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName, ds.Modality = "REL0001", "RELIABILITY^TEST", "CT"
    ds.InstanceNumber = number
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.random.default_rng(number).integers(0, 4096, (size, size), dtype="<u2").tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def dataset_bytes(ds: Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def association(port: int, *, timeout: float = 30, calling: str = "RELIABILITY", guarded: bool = True) -> Any:
    """A CT + Verification association; ``guarded``: with node/dimse/scu_race.py's fix, so that
    pynetdicom's own reactor cannot drop a response the node sent (``False`` reproduces that)."""
    from node.dimse.scu_race import keep_responses_for_caller

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.connection_timeout = 10
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    return keep_responses_for_caller(assoc) if guarded else assoc


# --------------------------------------------------------------------------- checks
def stored_dataset_bytes(path: Path) -> bytes:
    """The data set part of a stored Part-10 file (everything after the file meta group)."""
    from pynetdicom.dsutils import split_dataset

    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def check_store(node: Node, acknowledged: dict[str, tuple[str, str, bytes]]) -> dict[str, Any]:
    """Every acknowledged instance on disk, byte-identical, indexed; no orphan files or rows;
    no temp files. ``acknowledged``: sop uid -> (study uid, series uid, data set bytes)."""
    files = {p.stem: p for p in node.storage.rglob("*.dcm") if ".incoming" not in p.parts}
    with sqlite3.connect(node.db_path) as db:
        rows = {r[0] for r in db.execute("SELECT sop_instance_uid FROM instance")}
    missing = [uid for uid in acknowledged if uid not in files or uid not in rows]
    different = [
        uid for uid, (_, _, body) in acknowledged.items() if uid in files and stored_dataset_bytes(files[uid]) != body
    ]
    return {
        "acknowledged": len(acknowledged),
        "files": len(files),
        "rows": len(rows),
        "missing": missing,
        "different": different,
        "orphan_files": sorted(set(files) - rows),
        "orphan_rows": sorted(rows - set(files)),
        "temp_files": [p.name for p in (node.storage / ".incoming").glob("*.part")],
    }
