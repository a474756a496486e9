"""Fixtures for the end-to-end triage tests (the nodes, the serve subprocesses and the tiny model
come from tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def e2e_tiny_sha(tiny_model_dir: Path) -> str:
    """The SHA-256 of the tiny checkpoint's weights, as the node records it."""
    from node.triage.model import weights_sha256

    return weights_sha256(tiny_model_dir)
