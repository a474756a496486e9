"""Run dicom3tools' ``dciodvfy`` on a DICOM file and sort what it says.

Every SR this library writes must pass ``dciodvfy`` without errors; this helper
is what the tests (and any caller that wants the same guarantee) use.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DciodvfyReport:
    """Lines of ``dciodvfy`` output, sorted by kind."""

    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    output: str

    @property
    def ok(self) -> bool:
        return not self.errors


def dciodvfy_available() -> bool:
    """Whether the ``dciodvfy`` binary is on PATH."""
    return shutil.which("dciodvfy") is not None


def run_dciodvfy(path: str | Path, timeout: float = 60.0) -> DciodvfyReport:
    """Validate the file at ``path`` against its IOD.

    Raises ``FileNotFoundError`` when ``dciodvfy`` is not installed, so that a
    missing validator is never mistaken for a clean result.
    """
    binary = shutil.which("dciodvfy")
    if binary is None:
        raise FileNotFoundError("dciodvfy (dicom3tools) is not installed")
    proc = subprocess.run([binary, str(path)], capture_output=True, text=True, timeout=timeout, check=False)
    output = proc.stdout + proc.stderr
    lines = [line.strip() for line in output.splitlines()]
    errors = tuple(line for line in lines if line.startswith(("Error", "Abort")))
    warnings = tuple(line for line in lines if line.startswith("Warning"))
    return DciodvfyReport(errors=errors, warnings=warnings, output=output)
