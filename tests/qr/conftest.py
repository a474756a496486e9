"""Fixture for the Query/Retrieve and UPS tests: ``qr_node`` (see qr_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from qr_helpers import (
    MOVE_DEST_AE,
    QRNode,
    chest_dx,
    e2e_free_port,
    node_config,
    storescu,
    study_jobs,
    wait_until,
    worklist_row,
)


@pytest.fixture(scope="session")
def qr_node(tmp_path_factory: pytest.TempPathFactory, require_tools) -> Iterator[QRNode]:  # type: ignore[no-untyped-def]
    require_tools("storescu", "findscu", "getscu", "movescu", "storescp")
    import torch
    from pydicom.uid import generate_uid

    from node import oplog
    from node.service import Node
    from node.triage.tiny_model import build_tiny_siglip

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("qr")
    model = build_tiny_siglip(root / "tiny-siglip", image_size=64, seed=0)
    cfg = node_config(root / "node", model)
    move_port = e2e_free_port()
    with cfg.config_path.open("a", encoding="utf-8") as f:
        f.write(f'\n[[move_destinations]]\nae_title = "{MOVE_DEST_AE}"\nhost = "127.0.0.1"\nport = {move_port}\n')
    oplog.configure("warning")
    node = Node(cfg.settings())
    node.start()
    try:
        src = root / "src"
        chest_study, chest_series = generate_uid(), generate_uid()
        chest = [chest_dx(src / "chest" / f"{i}.dcm", view="PA", patient_id="QRPAT1", study_uid=chest_study,
                        series_uid=chest_series, number=i) for i in (1, 2)]
        lateral_study = generate_uid()
        lateral = [chest_dx(src / "lateral" / "1.dcm", view="LL", patient_id="QRPAT2", study_uid=lateral_study,
                          series_uid=generate_uid(), number=1)]
        storescu(cfg.port, chest + lateral)

        def answered() -> bool:
            for uid in (chest_study, lateral_study):
                failed = [j for j in study_jobs(node.db, uid) if j.state == "failed"]
                if failed:
                    pytest.fail(f"triage job failed: {failed[0].error}")
            return all(worklist_row(node.db, uid) for uid in (chest_study, lateral_study))

        wait_until(answered, 90, "both studies to be triaged")
        yield QRNode(cfg, node, chest_study, chest, lateral_study, lateral, move_port)
    finally:
        node.stop()

