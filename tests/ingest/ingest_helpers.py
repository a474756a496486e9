"""Helpers for the ingest tests: CLI subprocesses, DICOM senders, and readers of what the node kept.

Imported by the test modules as ``ingest_helpers`` (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydicom import config as pydicom_config
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pynetdicom import AE, _config as pynetdicom_config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

NODE_AE = "TRIAGE_NODE"
ENV_PREFIX = "TRIAGE_NODE__"
T = TypeVar("T")


# --------------------------------------------------------------------------- polling
def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.05,
             message: str = "condition") -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")
        time.sleep(interval)


# --------------------------------------------------------------------------- files
def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part-10 file: everything after the file meta group."""
    _, offset = split_dataset(Path(path))
    return Path(path).read_bytes()[offset:]


def file_transfer_syntax(path: Path) -> str:
    meta, _ = split_dataset(Path(path))
    return str(meta.TransferSyntaxUID)


def file_sop_uid(path: Path) -> str:
    meta, _ = split_dataset(Path(path))
    return str(meta.MediaStorageSOPInstanceUID)


def stored_files(storage_root: Path) -> dict[str, Path]:
    """SOP Instance UID -> stored file, for every .dcm under storage (temp folder excluded)."""
    root = Path(storage_root)
    if not root.exists():
        return {}
    return {p.stem: p for p in root.rglob("*.dcm") if ".incoming" not in p.relative_to(root).parts}


def incoming_files(storage_root: Path) -> list[Path]:
    folder = Path(storage_root) / ".incoming"
    return sorted(folder.iterdir()) if folder.exists() else []


def all_files(root: Path) -> set[Path]:
    return {p for p in Path(root).rglob("*") if p.is_file()}


def write_raw_part10(path: Path, *, sop_class: str, sop_uid: str, transfer_syntax: str, body: bytes) -> Path:
    """A Part-10 file whose data set part is exactly ``body`` (no check of either), for crafted sends."""
    meta = FileMetaDataset()
    with unchecked_uids():
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = transfer_syntax
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_file_meta_info(buf, meta, enforce_standard=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00" * 128 + b"DICM" + buf.getvalue() + body)
    return path


@contextlib.contextmanager
def unchecked_uids() -> Iterator[None]:
    """Let pydicom and pynetdicom carry non-conformant UIDs (the node must be the one to refuse)."""
    settings = pydicom_config.settings
    saved = (settings.reading_validation_mode, settings.writing_validation_mode,
             pynetdicom_config.ENFORCE_UID_CONFORMANCE)
    settings.reading_validation_mode = pydicom_config.IGNORE
    settings.writing_validation_mode = pydicom_config.IGNORE
    pynetdicom_config.ENFORCE_UID_CONFORMANCE = False
    try:
        yield
    finally:
        (settings.reading_validation_mode, settings.writing_validation_mode,
         pynetdicom_config.ENFORCE_UID_CONFORMANCE) = saved


# --------------------------------------------------------------------------- pynetdicom senders
def _ae(calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.connection_timeout = 15  # TCP connect + TLS handshake: a stalled node fails the test, not hangs it
    return ae


def py_echo(port: int, *, calling_ae: str = "PYSCU", called_ae: str = NODE_AE,
            tls_args: tuple[Any, str] | None = None) -> int | None:
    """C-ECHO with plain pynetdicom: the status, or None when the association is refused."""
    ae = _ae(calling_ae)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae, tls_args=tls_args)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_echo()
        return int(status.Status) if status and "Status" in status else None
    finally:
        assoc.release()


def send_file_as_is(port: int, path: Path, *, calling_ae: str = "PYSCU", called_ae: str = NODE_AE) -> int | None:
    """C-STORE the bytes after the file meta exactly as they are in ``path`` (pynetdicom's chunked
    mode: the Affected SOP Class/Instance UIDs and the transfer syntax come from the file meta)."""
    meta, _ = split_dataset(Path(path))
    with unchecked_uids():
        ae = _ae(calling_ae)
        ae.add_requested_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])
        saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        try:
            assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
            if not assoc.is_established:
                raise ConnectionError("association refused")
            try:
                status = assoc.send_c_store(Path(path))
                return int(status.Status) if status and "Status" in status else None
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET = saved


# --------------------------------------------------------------------------- DCMTK
def storescu(port: int, paths: list[Path] | list[str], *, aet: str = "STORESCU", aec: str = NODE_AE,
             extra: tuple[str, ...] = (), timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """DCMTK storescu in verbose mode (one "Received Store Response" line per file)."""
    cmd = ["storescu", "-v", "-aet", aet, "-aec", aec, *extra, "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout)


_SENDING = re.compile(r"Sending file: (?P<path>.+?)\s*$")
_RESPONSE = re.compile(r"Received Store Response \((?P<status>[^)]*)\)")


def storescu_acknowledged(output: str) -> list[str]:
    """Files that storescu saw acknowledged with Success, in order, from its -v log."""
    acked: list[str] = []
    current: str | None = None
    for line in output.splitlines():
        m = _SENDING.search(line)
        if m:
            current = m["path"]
            continue
        m = _RESPONSE.search(line)
        if m and current is not None:
            if m["status"].strip() == "Success":
                acked.append(current)
            current = None
    return acked


# --------------------------------------------------------------------------- CLI / config
def cli_command(*args: str) -> list[str]:
    """The installed console script (as an operator runs it), else ``python -m node.cli``."""
    exe = Path(sys.executable).parent / "triage-node"
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "node.cli", *args]


def toml_literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    raise TypeError(f"no TOML literal for {value!r}")


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """Minimal TOML writer for our config shape (tables of scalars/arrays, one level of sub-tables)."""
    lines: list[str] = []

    def table(name: str, body: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        subs = []
        for key, value in body.items():
            if value is None:
                continue
            if isinstance(value, dict):
                subs.append((f"{name}.{key}", value))
            else:
                lines.append(f"{key} = {toml_literal(value)}")
        lines.append("")
        for sub_name, sub_body in subs:
            table(sub_name, sub_body)

    for name, body in data.items():
        if isinstance(body, dict) and body:
            table(name, body)
    path = Path(path)
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def write_node_config(path: Path, settings: Any) -> Path:
    """The TOML equivalent of a Settings object (for CLI subprocesses pointed at an in-process node)."""
    data = settings.model_dump(mode="json", exclude={"source"})
    return write_toml(path, {k: v for k, v in data.items() if isinstance(v, dict)})


def env_name(dotted: str) -> str:
    return ENV_PREFIX + "__".join(part.upper() for part in dotted.split("."))


def node_env(overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: ours minus stray TRIAGE_NODE__* plus ``overrides``
    (``{"dicom.port": 11113}`` -> ``TRIAGE_NODE__DICOM__PORT=11113``)."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"
    for dotted, value in (overrides or {}).items():
        env[env_name(dotted)] = value if isinstance(value, str) else toml_literal(value)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_command(*args), env=env or node_env(), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def status_json(config: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli("status", "--json", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class ServeProcess:
    """`triage-node serve` in a subprocess, output in a file; started, killed and restarted by tests."""

    def __init__(self, config: Path, env: dict[str, str], workdir: Path, name: str = "serve") -> None:
        self.config = Path(config)
        self.env = env
        self.workdir = Path(workdir)
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self._starts = 0

    def start(self, wait: bool = True, timeout: float = 60) -> "ServeProcess":
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self._starts += 1
        self.log = self.workdir / f"{self.name}-{self._starts}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cli_command("serve", "--config", str(self.config)), env=self.env,
                                         cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        if wait:
            self.wait_ready(timeout)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"triage-node serve exited with {self.proc.returncode}:\n{self.output()}")
            return "listening as" in self.output()

        wait_for(ready, timeout, 0.05, "triage-node serve to listen")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no clean-up of any kind in the node."""
        if self.running:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


# --------------------------------------------------------------------------- index and audit
def index_snapshot(db: Any) -> dict[str, Any]:
    """Rows of the index as plain dicts keyed by UID (``db`` is a node.db.engine.Database)."""
    from sqlalchemy import select

    from node.db.models import Instance, Patient, Series, Study, TriageJob

    def rows(session: Any, model: Any) -> list[dict[str, Any]]:
        return [{c.name: getattr(obj, c.key) for c in model.__table__.columns}
                for obj in session.execute(select(model)).scalars()]

    with db.session() as session:
        return {
            "patients": {(r["patient_id"], r["issuer"]): r for r in rows(session, Patient)},
            "studies": {r["study_instance_uid"]: r for r in rows(session, Study)},
            "series": {r["series_instance_uid"]: r for r in rows(session, Series)},
            "instances": {r["sop_instance_uid"]: r for r in rows(session, Instance)},
            "jobs": rows(session, TriageJob),
        }


def audit_entries(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def audit_codes(entries: list[dict[str, Any]]) -> list[str]:
    return [e["event_id"]["code"] for e in entries]
