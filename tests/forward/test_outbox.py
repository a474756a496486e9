"""The outbox's state machine on both index back-ends (no network): claim with a lease,
sent, exponential backoff capped at max_backoff, dead after max_age, requeue of dead letters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from node.config import ForwardingSection
from node.db.engine import Database
from node.db.models import OutboxItem
from node.forward.outbox import (
    backoff_seconds,
    claim_due,
    list_items,
    mark_failed,
    mark_sent,
    requeue,
)

POLICY = ForwardingSection(initial_backoff_seconds=1, max_backoff_seconds=4, max_age_seconds=100)


def _rows(db: Database, n: int, created: datetime) -> list[int]:
    with db.write() as session:
        items = [
            OutboxItem(
                destination="PACS@127.0.0.1:104",
                kind="sr",
                study_instance_uid="1.2.3",
                sop_instance_uid=f"1.2.3.{i}",
                path=f"x/{i}.dcm",
                created_at=created,
                next_attempt_at=created,
            )
            for i in range(n)
        ]
        session.add_all(items)
        session.flush()
        return [i.id for i in items]


def test_backoff_doubles_and_is_capped() -> None:
    assert [backoff_seconds(POLICY, a, jitter=False) for a in range(5)] == [1, 2, 4, 4, 4]
    assert 1 <= backoff_seconds(POLICY, 0) <= 1.1


def test_claim_send_retry_dead_requeue(db_url: str) -> None:
    db = Database(db_url)
    try:
        t0 = datetime.now(UTC) - timedelta(seconds=1)
        ids = _rows(db, 3, t0)
        first = claim_due(db, limit=2, lease_seconds=60)
        assert [c.id for c in first] == ids[:2]
        assert [c.id for c in claim_due(db, limit=10, lease_seconds=60)] == ids[2:]  # the first two are leased
        assert claim_due(db, limit=10, lease_seconds=60) == []

        mark_sent(db, [ids[0]])
        now = datetime.now(UTC)
        assert mark_failed(db, {ids[1]: "no C-STORE response"}, POLICY, now, jitter=False) == []
        listed = {i["id"]: i for i in list_items(db)}
        assert ids[0] not in listed  # sent rows are not listed
        retry = listed[ids[1]]
        assert (retry["state"], retry["attempts"], retry["last_error"]) == ("pending", 1, "no C-STORE response")
        assert datetime.fromisoformat(retry["next_attempt_at"]) == now + timedelta(seconds=1)

        late = t0 + timedelta(seconds=POLICY.max_age_seconds)
        assert mark_failed(db, {ids[1]: "C-STORE status 0xA700", ids[2]: "refused"}, POLICY, late) == [ids[1], ids[2]]
        listed = {i["id"]: i for i in list_items(db)}
        assert listed[ids[1]]["state"] == "dead" and listed[ids[1]]["next_attempt_at"] is None
        assert mark_failed(db, {ids[1]: "again"}, POLICY, late) == []  # a dead row stays dead

        assert requeue(db, [ids[0]]) == []  # not a dead letter
        assert requeue(db, [ids[1]]) == [ids[1]]
        assert [c.id for c in claim_due(db, limit=10, lease_seconds=60)] == [ids[1]]
        assert requeue(db) == [ids[2]]
        assert {i["id"]: i["state"] for i in list_items(db)} == {ids[1]: "pending", ids[2]: "pending"}
    finally:
        db.dispose()


def test_enqueue_study_follows_send_and_is_idempotent(db_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pydicom
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
    from sqlalchemy import select

    from node.config import ForwardDestination
    from node.demo import synthetic_image
    from node.forward.outbox import destination_key, enqueue_study
    from node.store.files import FileStore
    from node.store.ingest import Ingestor

    db = Database(db_url)
    try:
        ingestor = Ingestor(db, FileStore(tmp_path / "storage", fsync=False), max_dataset_bytes=10**8, min_free_bytes=0)
        study_uid, series_uid = generate_uid(), generate_uid()

        def store(n: int) -> str:
            path = synthetic_image(
                tmp_path / f"{n}.dcm",
                modality="DX",
                sop_class=DigitalXRayImageStorageForPresentation,
                view="PA",
                body_part="CHEST",
                age=50,
                study_uid=study_uid,
                patient_id="Q",
                number=n,
                series_uid=series_uid,
                photometric="MONOCHROME2",
                rows=16,
                cols=16,
            )
            ds = pydicom.dcmread(path)
            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = True, False
            write_dataset(buf, ds)
            assert ingestor.store(ds.file_meta, buf.getvalue(), calling_ae="T").ok
            return str(ds.SOPInstanceUID)

        sr, img1, img2 = store(1), store(2), store(3)  # the first plays the SR
        dests = [
            ForwardDestination(ae_title=f"D{send}", host="127.0.0.1", port=104, send=send)
            for send in ("sr", "study", "both")
        ]

        def enqueue() -> int:
            with db.write() as session:
                return enqueue_study(session, dests, study_uid=study_uid, sr_sop_instance_uid=sr)

        assert enqueue() == 1 + 2 + 3
        assert enqueue() == 0
        img3 = store(4)  # a late instance: only it is new
        assert enqueue() == 2
        with db.session() as session:
            rows = session.execute(select(OutboxItem.destination, OutboxItem.kind, OutboxItem.sop_instance_uid)).all()
        got = sorted(tuple(r) for r in rows)
        sr_d, study_d, both_d = (destination_key(d) for d in dests)
        assert got == sorted(
            [(sr_d, "sr", sr)]
            + [(study_d, "instance", u) for u in (img1, img2, img3)]
            + [(both_d, "sr", sr)]
            + [(both_d, "instance", u) for u in (img1, img2, img3)]
        )
    finally:
        db.dispose()


def test_a_dead_forwarders_rows_are_due_again_after_the_lease(db_url: str) -> None:
    """Rows claimed by a process that then died are claimed by another after the lease; a renewal
    (the forwarder's heartbeat before each send) keeps them with their live owner."""
    from node.forward.outbox import renew_lease

    db = Database(db_url)
    try:
        t0 = datetime.now(UTC) - timedelta(seconds=1)
        ids = _rows(db, 2, t0)
        held = claim_due(db, limit=2, lease_seconds=30, now=t0)  # process A claims both, then dies
        assert [c.id for c in held] == ids
        assert claim_due(db, limit=10, lease_seconds=30, now=t0 + timedelta(seconds=29)) == []
        renew_lease(db, [ids[0]], 30, now=t0 + timedelta(seconds=20))  # A was still alive for row 0
        later = t0 + timedelta(seconds=31)
        assert [c.id for c in claim_due(db, limit=10, lease_seconds=30, now=later)] == [ids[1]]
        assert [c.id for c in claim_due(db, limit=10, lease_seconds=30, now=t0 + timedelta(seconds=51))] == [ids[0]]
    finally:
        db.dispose()
