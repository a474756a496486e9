"""Fixtures for the ingest tests that run `triage-node` as a subprocess."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ingest_helpers import ServeProcess, node_env, write_toml


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """``serve_factory(settings_dict, env_overrides=None)`` -> a (not yet started) ServeProcess.

    The config is written as TOML under tmp_path; ``env_overrides`` ({"dicom.port": 1234})
    become TRIAGE_NODE__* variables. Every process still running at teardown is killed.
    """
    made: list[ServeProcess] = []

    def make(data: dict[str, Any], env_overrides: dict[str, Any] | None = None,
             name: str = "serve") -> ServeProcess:
        config = write_toml(tmp_path / f"{name}.toml", data)
        proc = ServeProcess(config, node_env(env_overrides), tmp_path, name=name)
        made.append(proc)
        return proc

    yield make
    for proc in made:
        proc.kill()
