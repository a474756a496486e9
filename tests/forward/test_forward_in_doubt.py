"""A row whose forwarder died between the destination's Success and the commit (kill -9) is
"in doubt" when it is claimed again: the destination is asked (C-FIND) before it is sent again,
so an instance Orthanc already acknowledged is not delivered twice (RELIABILITY.md, kill -9
campaign). One that Orthanc does not hold is sent. Orthanc counts every C-STORE it receives
(reliability/orthanc.py, a Lua hook), so a duplicate delivery would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from sqlalchemy import select, update

from node.dimse.scu import Destination, send
from reliability.orthanc import Orthanc  # the campaign's Orthanc: it counts every C-STORE it receives
from tests.support.ci import needs_tools
from tests.support.polling import wait_until
from tests.support.ports import free_port

pytestmark = needs_tools("Orthanc")


def test_in_doubt_row_is_not_sent_again_when_the_destination_holds_it(
    tmp_path, make_settings, node_factory, dicom_factory
) -> None:
    from node.db.models import OutboxItem
    from node.forward.outbox import IN_FLIGHT, SENT, enqueue_study

    orthanc = Orthanc(tmp_path / "orthanc", free_port(), free_port()).start()
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

        wait_until(lambda: all(r.state == SENT for r in rows().values()), 60, "both rows sent")
        # Orthanc counts a store after it acknowledged it: wait for the count of the one it did not hold
        # (sent in the same round), not for a guessed second, before reading the other's count
        received = wait_until(
            lambda: (lambda got: got if got[not_delivered] >= 1 else None)(orthanc.received()),
            30,
            "Orthanc to count the instance it did not hold",
        )
        assert received[delivered] == 1, "the instance Orthanc already held was sent again"
        assert received[not_delivered] == 1
        assert orthanc.index_count(delivered) == orthanc.index_count(not_delivered) == 1
        assert all(r.last_error == "" for r in rows().values())
        # the delivery the dead process could not record is in the audit trail now, said to be a confirmation
        exports = [
            e
            for e in map(json.loads, Path(settings.audit.path).read_text().splitlines())
            if e["event_id"]["code"] == "110106" and e["outcome"] == 0
        ]
        assert any("1 already held by the destination, confirmed by C-FIND" in e["outcome_desc"] for e in exports), [
            e["outcome_desc"] for e in exports
        ]
    finally:
        orthanc.stop()
