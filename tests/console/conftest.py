"""One real node for the console tests (session scope: built once, shared by the HTTP and the
browser tests): the tiny random SigLIP, HTTP on a loopback port with a token, a [[forward]]
destination that refuses connections (so dead letters appear within seconds), and three
studies sent by C-STORE:

- ``stat``: adult PA chest DX whose order is STAT -> HIGH; the model is given its image;
- ``script``: lateral chest whose PatientName carries ``<script>`` -> MEDIUM, no AI assessment;
- ``low``: lateral chest whose order is LOW -> LOW (the model never raises a study it cannot assess).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from sqlalchemy import func, select

from console_helpers import (  # noqa: F401 - fixtures below use them
    REPO,
    TOKEN,
    SCU,
    SCRIPT_NAME,
    SCREENSHOTS,
    free_port,
    wait_until,
    ConsoleNode,
    settings_for,
    _study,
)


@pytest.fixture(scope="session")
def console_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ConsoleNode]:
    import torch

    from node import oplog
    from node.db.models import WorklistItem
    from node.dimse.scu import Destination, send
    from node.service import Node
    from node.triage.tiny_model import build_tiny_siglip

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("console")
    model_dir = build_tiny_siglip(root / "tiny-model", image_size=64, seed=0)
    oplog.configure("warning")
    node = Node(settings_for(root, model_dir))
    node.start()
    try:
        src = root / "src"
        src.mkdir()
        specs = {"stat": ("PA", "ALPHA^Stat", "STAT"), "script": ("LL", SCRIPT_NAME, None),
                 "low": ("LL", "GAMMA^Low", "LOW")}
        studies, names = {}, {}
        for label, (view, name, order) in specs.items():
            uid, path = _study(src, label, view=view, name=name, order=order)
            results = send([path], Destination("TRIAGE_NODE", "127.0.0.1", node.listener.port), calling_ae=SCU)
            assert [r.status for r in results] == [0]
            studies[label], names[label] = uid, name

        def triaged() -> bool:
            with node.db.session() as session:
                return session.execute(select(func.count()).select_from(WorklistItem)).scalar_one() == len(specs)

        wait_until(triaged, 120, "the three studies on the worklist")
        cn = ConsoleNode(node, f"http://127.0.0.1:{node.http_port}", studies, names)
        wait_until(lambda: len(cn.dead_letters()) == len(specs), 60, "three dead letters (the PACS is not there)")
        yield cn
    finally:
        node.stop()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS
