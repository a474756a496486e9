"""The Query/Retrieve and UPS tests' node (built by ``qr_node`` in tests/qr/conftest.py): one
in-process node (tiny random SigLIP, triage on) holding two triaged studies, shared by test_qr.py
and test_ups.py.

- a chest PA study (2 DX images, patient QRPAT1) -> an assisted triage + SR;
- a lateral chest study (1 DX image, patient QRPAT2) -> a no-assist SR.

The node knows one C-MOVE destination, MOVE_DEST on a free port, which test_qr starts as a
DCMTK storescp when it needs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.config import NodeConfig

MOVE_DEST_AE = "MOVE_DEST"


@dataclass
class QRNode:
    cfg: NodeConfig
    node: Any
    chest_study: str
    chest_files: list[Path]
    lateral_study: str
    lateral_files: list[Path]
    move_port: int

    @property
    def port(self) -> int:
        return self.cfg.port

    @property
    def db(self) -> Any:
        return self.node.db


def chest_dx(path: Path, *, view: str, patient_id: str, study_uid: str, series_uid: str, number: int) -> Path:
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    from node.demo import synthetic_image

    path.parent.mkdir(parents=True, exist_ok=True)
    return synthetic_image(
        path,
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view=view,
        body_part="CHEST",
        age=54,
        study_uid=study_uid,
        patient_id=patient_id,
        number=number,
        series_uid=series_uid,
        rows=128,
        cols=128,
    )
