"""A real Orthanc (Debian's ``Orthanc`` binary) as the node's forwarding destination, with a
count of every C-STORE it receives.

Why a counter: Orthanc's index keeps one copy of a SOP Instance UID however often it is sent, so
"present in the index" cannot show a duplicate delivery. Orthanc's built-in Lua hook
``ReceivedInstanceFilter`` runs for every received instance, duplicates included (no plugin
needed); it appends the SOP Instance UID to ``received.txt``, which survives Orthanc's restarts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ORTHANC_BIN = shutil.which("Orthanc")

_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  local f = io.open(%s, "a")
  f:write(dicom.SOPInstanceUID .. "\\n")
  f:close()
  return true
end
"""


class Orthanc:
    """One Orthanc on 127.0.0.1 with its config, storage and log under ``root``."""

    def __init__(self, root: Path, dicom_port: int, http_port: int, aet: str = "ORTHANC") -> None:
        if ORTHANC_BIN is None:
            raise RuntimeError("needs Orthanc (Debian package 'orthanc') on PATH")
        root.mkdir(parents=True, exist_ok=True)
        self.root, self.aet = root, aet
        self.dicom_port, self.http_port = dicom_port, http_port
        self.received_path = root / "received.txt"
        (root / "count.lua").write_text(_LUA % json.dumps(str(self.received_path)))
        self.config = root / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "reliability",
                    "DicomAet": aet,
                    "DicomPort": dicom_port,
                    "HttpPort": http_port,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomCheckCalledAet": False,
                    "DicomAlwaysAllowStore": True,
                    "DicomAlwaysAllowFind": True,
                    "DicomServerEnabled": True,
                    "HttpServerEnabled": True,
                    "StorageDirectory": str(root / "storage"),
                    "IndexDirectory": str(root / "index"),
                    "Plugins": [],
                    "LuaScripts": [str(root / "count.lua")],
                    "OverwriteInstances": False,
                },
                indent=2,
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 60) -> Orthanc:
        self.starts += 1
        log = (self.root / f"orthanc-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            [str(ORTHANC_BIN), str(self.config)], stdout=log, stderr=subprocess.STDOUT, cwd=self.root
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited {self.proc.returncode} (log in {self.root})")
            try:
                if self._get("/system").get("DicomPort") == self.dicom_port:
                    return self
            except (OSError, urllib.error.URLError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"Orthanc did not answer within {timeout:.0f} s")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}", data=data, method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def _get(self, path: str) -> Any:
        return self._request("GET", path)

    def index_count(self, sop_uid: str) -> int:
        """How many instances with this SOP Instance UID Orthanc's index holds (0 or 1)."""
        return len(self._request("POST", "/tools/find", {"Level": "Instance", "Query": {"SOPInstanceUID": sop_uid}}))

    def instance_count(self) -> int:
        return int(self._get("/statistics")["CountInstances"])

    def received(self) -> Counter[str]:
        """SOP Instance UID -> how many times Orthanc received it (every C-STORE, duplicates too)."""
        if not self.received_path.exists():
            return Counter()
        return Counter(line.strip() for line in self.received_path.read_text().splitlines() if line.strip())


__all__ = ["ORTHANC_BIN", "Orthanc"]
