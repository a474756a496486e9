"""`triage-node` as an operator runs it: the console script in a subprocess, with an environment
that carries no stray ``TRIAGE_NODE__*`` overrides; and ``ServeProcess``, the one long-running
`triage-node serve` child that tests start, kill -9, restart and stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.support.polling import wait_until

ENV_PREFIX = "TRIAGE_NODE__"
READY_LINE = "Ctrl-C to stop"  # the end of serve's start-up line, whatever roles the process has


def cli_command(*args: str) -> list[str]:
    """The installed console script (as an operator runs it), else ``python -m node.cli``."""
    exe = Path(sys.executable).parent / "triage-node"
    if exe.exists():
        return [str(exe), *args]
    return [sys.executable, "-m", "node.cli", *args]


def toml_literal(value: Any) -> str:
    """A scalar or list in TOML spelling (what a ``TRIAGE_NODE__*`` variable carries)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))
    raise TypeError(f"no TOML literal for {value!r}")


def env_name(dotted: str) -> str:
    """``dicom.port`` -> ``TRIAGE_NODE__DICOM__PORT``."""
    return ENV_PREFIX + "__".join(part.upper() for part in dotted.split("."))


def node_env(overrides: dict[str, Any] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: ours minus stray TRIAGE_NODE__* variables, unbuffered
    output, one torch thread (the test machines are small and shared), plus ``overrides``
    (``{"dicom.port": 11113}`` -> ``TRIAGE_NODE__DICOM__PORT=11113``) and ``extra`` variables."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    for dotted, value in (overrides or {}).items():
        env[env_name(dotted)] = value if isinstance(value, str) else toml_literal(value)
    env.update(extra)
    return env


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """One `triage-node ...` command to completion, output captured."""
    return subprocess.run(
        cli_command(*args), env=env or node_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def status_json(config: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = run_cli("status", "--json", "--config", str(config), env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


class ServeProcess:
    """`triage-node serve --config CONFIG` as a child process in its own session, its output in
    ``workdir/NAME-N.log`` (one file per start)."""

    def __init__(self, config: Path, workdir: Path, *, env: dict[str, str] | None = None, name: str = "serve") -> None:
        self.config = Path(config)
        self.workdir = Path(workdir)
        self.env = env if env is not None else node_env()
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None
        self.starts = 0

    def start(self, wait: bool = True, timeout: float = 90) -> ServeProcess:
        """Start it; with ``wait``, return once its start-up line is out (listening, if it receives)."""
        assert not self.running, "already running"
        self.starts += 1
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / f"{self.name}-{self.starts}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                cli_command("serve", "--config", str(self.config)),
                env=self.env,
                cwd=self.workdir,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if wait:
            self.wait_ready(timeout)
        return self

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log and self.log.exists() else ""

    def ready(self) -> bool:
        """Whether the start-up line is out; raises when the process has exited instead."""
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
        return READY_LINE in self.output()

    def wait_ready(self, timeout: float = 90) -> None:
        wait_until(self.ready, timeout, f"{self.name} to start")

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
        """SIGTERM and the exit code (a clean shutdown is expected: no fallback to SIGKILL)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, SIGKILL if it does not exit in time (teardown); the exit code, None if killed."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
