"""Sending to the node as a peer does: pynetdicom associations (echo, a file's bytes as they are)
and DCMTK's command-line tools (called by name: scripts/test.sh puts DCMTK on PATH)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.support.config import NODE_AE, SCU_AE
from tests.support.files import unchecked_uids


# --------------------------------------------------------------------------- pynetdicom senders
def _ae(calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.connection_timeout = 15  # TCP connect + TLS handshake: a stalled node fails the test, not hangs it
    return ae


def py_echo(
    port: int, *, calling_ae: str = "PYSCU", called_ae: str = NODE_AE, tls_args: tuple[Any, str] | None = None
) -> int | None:
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
def storescu(
    port: int,
    paths: list[Path] | list[str],
    *,
    aet: str = "STORESCU",
    aec: str = NODE_AE,
    extra: tuple[str, ...] = (),
    timeout: float = 180,
) -> subprocess.CompletedProcess[str]:
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


def send_files(port: int, paths: list[Path], *options: str, aet: str = SCU_AE, timeout: float = 120) -> None:
    """storescu that must succeed, as the triaging node's one peer; ``options`` e.g. ``-xr``
    (propose RLE) or ``-xv`` (JPEG 2000)."""
    proc = subprocess.run(
        ["storescu", "-aet", aet, "-aec", NODE_AE, *options, "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, f"storescu failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}"
    assert "error" not in (proc.stdout + proc.stderr).lower(), proc.stdout + proc.stderr


def echoscu(port: int, aet: str = SCU_AE) -> int:
    """DCMTK's echoscu; its exit code."""
    return subprocess.run(
        ["echoscu", "-aet", aet, "-aec", NODE_AE, "127.0.0.1", str(port)], capture_output=True, timeout=30, check=False
    ).returncode
