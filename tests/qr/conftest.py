"""Fixture for the Query/Retrieve and UPS tests: ``qr_node`` (see tests/support/qr.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ci import require_tools
from tests.support.config import node_config
from tests.support.dimse import send_files
from tests.support.index import study_jobs, worklist_row
from tests.support.nodes import NodeRunner
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.qr import MOVE_DEST_AE, QRNode, chest_dx


@pytest.fixture(scope="session")
def qr_node(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[QRNode]:
    require_tools("storescu", "findscu", "getscu", "movescu", "storescp")
    from pydicom.uid import generate_uid

    root = tmp_path_factory.mktemp("qr")
    move_port = free_port()
    cfg = node_config(
        root / "node",
        tiny_model_dir,
        move_destinations=[{"ae_title": MOVE_DEST_AE, "host": "127.0.0.1", "port": move_port}],
    )
    with NodeRunner() as nodes:
        node = nodes.start(cfg)
        src = root / "src"
        chest_study, chest_series = generate_uid(), generate_uid()
        chest = [
            chest_dx(
                src / "chest" / f"{i}.dcm",
                view="PA",
                patient_id="QRPAT1",
                study_uid=chest_study,
                series_uid=chest_series,
                number=i,
            )
            for i in (1, 2)
        ]
        lateral_study = generate_uid()
        lateral = [
            chest_dx(
                src / "lateral" / "1.dcm",
                view="LL",
                patient_id="QRPAT2",
                study_uid=lateral_study,
                series_uid=generate_uid(),
                number=1,
            )
        ]
        send_files(cfg.port, chest + lateral)

        def answered() -> bool:
            for uid in (chest_study, lateral_study):
                failed = [j for j in study_jobs(node.db, uid) if j.state == "failed"]
                if failed:
                    pytest.fail(f"triage job failed: {failed[0].error}")
            return all(worklist_row(node.db, uid) for uid in (chest_study, lateral_study))

        wait_until(answered, 90, "both studies to be triaged")
        yield QRNode(cfg, node, chest_study, chest, lateral_study, lateral, move_port)
