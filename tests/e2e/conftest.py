"""Fixtures for the end-to-end triage tests: the tiny random SigLIP (built once per session),
in-process nodes and `triage-node serve` subprocesses, each stopped at teardown.
Helpers live in e2e_helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_helpers import NodeConfig, ServeProcess


@pytest.fixture(scope="session")
def e2e_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random SigLIP checkpoint, built once per session (read-only by convention)."""
    import torch

    from node.triage.tiny_model import build_tiny_siglip

    torch.set_num_threads(1)
    return build_tiny_siglip(tmp_path_factory.mktemp("e2e-tiny-siglip"), image_size=64, seed=0)


@pytest.fixture(scope="session")
def e2e_tiny_sha(e2e_tiny_model: Path) -> str:
    from node.triage.model import weights_sha256

    return weights_sha256(e2e_tiny_model)


@pytest.fixture(scope="module")
def inprocess_nodes() -> Iterator[Callable[[NodeConfig], Any]]:
    """``start(cfg)`` runs a Node from ``cfg`` in this process; all are stopped at module teardown."""
    from node import oplog
    from node.service import Node

    oplog.configure("warning")
    nodes: list[Node] = []

    def start(cfg: NodeConfig) -> Node:
        node = Node(cfg.settings())
        nodes.append(node)
        node.start()
        return node

    yield start
    for node in reversed(nodes):
        node.stop()


@pytest.fixture
def serve_process() -> Iterator[Callable[[NodeConfig], ServeProcess]]:
    made: list[ServeProcess] = []

    def make(cfg: NodeConfig) -> ServeProcess:
        made.append(ServeProcess(cfg))
        return made[-1]

    yield make
    for p in made:
        p.stop()
