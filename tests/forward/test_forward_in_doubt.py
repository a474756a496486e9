"""A row whose forwarder died between the destination's Success and the commit (kill -9) is
"in doubt" when it is claimed again: the destination is asked (C-FIND) before it is sent again,
so an instance Orthanc already acknowledged is not delivered twice (RELIABILITY.md, kill -9
campaign). One that Orthanc does not hold is sent. Orthanc counts every C-STORE it receives
(reliability/orthanc.py, a Lua hook), so a duplicate delivery would show.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import time
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select, update

_RELIABILITY = str(Path(__file__).resolve().parents[2] / "reliability")
if _RELIABILITY not in sys.path:
    sys.path.append(_RELIABILITY)

from orthanc import Orthanc  # noqa: E402

from node.dimse.scu import Destination, send  # noqa: E402

pytestmark = pytest.mark.skipif(
    shutil.which("Orthanc") is None and not os.environ.get("CI"), reason="needs Orthanc (Debian's orthanc)"
)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def test_in_doubt_row_is_not_sent_again_when_the_destination_holds_it(
    tmp_path, make_settings, node_factory, dicom_factory
) -> None:
    from node.db.models import OutboxItem
    from node.forward.outbox import IN_FLIGHT, SENT, enqueue_study

    orthanc = Orthanc(tmp_path / "orthanc", _port(), _port()).start()
    try:
        settings = make_settings(
            tmp_path,
            forward=[{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port, "send": "sr"}],
            forwarding={"poll_seconds": 0.2, "initial_backoff_seconds": 0.2, "timeout_seconds": 10},
        )
        node = node_factory(settings)
        files = dicom_factory.ct_series(2, size=32)
        assert [
            r.status
            for r in send(files, Destination("TRIAGE_NODE", "127.0.0.1", node.listener.port), calling_ae="PYSCU")
        ] == [0, 0]
        delivered, not_delivered = (str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files)
        study = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
        # the dead process's delivery: Orthanc acknowledged the first instance, nothing was recorded
        assert [r.status for r in send(files[:1], Destination("ORTHANC", "127.0.0.1", orthanc.dicom_port))] == [0]

        with node.db.write_lock, node.db.session() as session, session.begin():
            for sop in (delivered, not_delivered):  # rows as a forwarder killed mid-batch leaves them
                assert enqueue_study(session, settings.forward, study_uid=study, sr_sop_instance_uid=sop) == 1
            session.execute(update(OutboxItem).values(last_error=IN_FLIGHT))

        def rows() -> dict[str, OutboxItem]:
            with node.db.session() as session:
                return {r.sop_instance_uid: r for r in session.execute(select(OutboxItem)).scalars()}

        _wait(lambda: all(r.state == SENT for r in rows().values()), 60, "both rows sent")
        time.sleep(1)
        received = orthanc.received()
        assert received[delivered] == 1, "the instance Orthanc already held was sent again"
        assert received[not_delivered] == 1
        assert orthanc.index_count(delivered) == orthanc.index_count(not_delivered) == 1
        assert all(r.last_error == "" for r in rows().values())
    finally:
        orthanc.stop()
