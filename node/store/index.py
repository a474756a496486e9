"""Index rows for one stored instance, written in one transaction (patient, study, series, instance).

The same transaction moves the study's quiet-period clock (last_arrival_at) and re-opens a
study that was already stable (rule 4), so clock and index can never disagree.

Several receivers (processes or hosts) may index instances of one study at once on PostgreSQL
(READ COMMITTED): parent rows are created with INSERT ... ON CONFLICT DO NOTHING and then read
back, and the study row is read FOR UPDATE, so the second receiver waits for the first one's
commit and then sees its count, modalities and clock (no lost update; the stability tick skips
the locked row). SQLite has one writer at a time, so there the lock clause is simply omitted.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from node.db.engine import Database
from node.db.models import Base, Instance, Patient, Series, Study
from node.db.states import StabilityState
from node.store.header import InstanceHeader

# The statements are built once and run on the session's Core connection with bound
# parameters: building them per instance and running them through the ORM layer cost about
# 3 ms of CPU per instance (measured: bench/RESULTS.md, "Ingest (C-STORE)"), more than the
# SQL itself. Same SQL, same single transaction as before.
_patient, _study, _series, _instance = (
    Base.metadata.tables[m.__tablename__] for m in (Patient, Study, Series, Instance)
)
_INSTANCE_BY_UID = select(_instance.c.id).where(_instance.c.sop_instance_uid == bindparam("b_uid"))
_PATIENT_PK = select(_patient.c.id).where(
    _patient.c.patient_id == bindparam("b_pid"), _patient.c.issuer == bindparam("b_issuer")
)
_STUDY_BY_UID = (
    select(_study.c.id, _study.c.modalities).where(_study.c.study_instance_uid == bindparam("b_uid")).with_for_update()
)
_SERIES_PK = select(_series.c.id).where(_series.c.series_instance_uid == bindparam("b_uid"))
_STUDY_ADD = {  # touch_stability -> statement
    True: update(_study)
    .where(_study.c.id == bindparam("b_pk"))
    .values(
        instance_count=_study.c.instance_count + 1,
        modalities=bindparam("b_mods"),
        last_arrival_at=bindparam("b_now"),
        stability_state=StabilityState.RECEIVING,
    ),
    False: update(_study)
    .where(_study.c.id == bindparam("b_pk"))
    .values(instance_count=_study.c.instance_count + 1, modalities=bindparam("b_mods")),
}
_INSERT_INSTANCE = insert(_instance)
_INSERT_IGNORE = {  # is_sqlite -> table name -> INSERT ... ON CONFLICT DO NOTHING
    is_sqlite: {t.name: ins(t).on_conflict_do_nothing() for t in (_patient, _study, _series)}
    for is_sqlite, ins in ((True, sqlite_insert), (False, pg_insert))
}


def _conn(session: Session | Connection) -> Connection:
    return session.connection() if isinstance(session, Session) else session


def instance_exists(session: Session | Connection, sop_instance_uid: str) -> bool:
    return _conn(session).execute(_INSTANCE_BY_UID, {"b_uid": sop_instance_uid}).first() is not None


def add_instance(
    db: Database,
    session: Session,
    h: InstanceHeader,
    *,
    rel_path: str,
    size: int,
    transfer_syntax_uid: str,
    calling_ae: str,
    now: datetime | None = None,
    touch_stability: bool = True,
) -> bool:
    """Insert the rows; returns False when the SOP Instance UID is already indexed (duplicate).

    ``touch_stability=False`` is for objects the node makes itself (its SRs): they must not
    re-open the study, or every SR would trigger another triage.
    """
    now = now or datetime.now(UTC)
    conn = _conn(session)
    ignore = _INSERT_IGNORE[db.is_sqlite]
    if instance_exists(conn, h.sop_instance_uid):
        return False
    conn.execute(
        ignore["patient"],
        dict(
            patient_id=h.patient_id,
            issuer=h.issuer_of_patient_id,
            name=h.patient_name,
            birth_date=h.patient_birth_date,
            sex=h.patient_sex,
        ),
    )
    patient_pk = conn.execute(_PATIENT_PK, {"b_pid": h.patient_id, "b_issuer": h.issuer_of_patient_id}).scalar_one()

    study = conn.execute(_STUDY_BY_UID, {"b_uid": h.study_instance_uid}).first()
    if study is None:
        conn.execute(
            ignore["study"],
            dict(
                study_instance_uid=h.study_instance_uid,
                patient_pk=patient_pk,
                study_date=h.study_date,
                study_time=h.study_time,
                accession_number=h.accession_number[:16],
                study_id=h.study_id[:16],
                description=h.study_description,
                referring_physician=h.referring_physician,
                modalities="",
                last_arrival_at=now,
                stability_state=StabilityState.RECEIVING,
                instance_count=0,
            ),
        )
        study = conn.execute(_STUDY_BY_UID, {"b_uid": h.study_instance_uid}).one()
    study_pk, modalities = study
    mods = set(filter(None, (modalities or "").split("\\")))
    if h.modality:
        mods.add(h.modality)
    conn.execute(_STUDY_ADD[touch_stability], {"b_pk": study_pk, "b_mods": "\\".join(sorted(mods)), "b_now": now})

    series_pk = conn.execute(_SERIES_PK, {"b_uid": h.series_instance_uid}).scalar_one_or_none()
    if series_pk is None:
        conn.execute(
            ignore["series"],
            dict(
                series_instance_uid=h.series_instance_uid,
                study_pk=study_pk,
                modality=h.modality,
                series_number=h.series_number,
                description=h.series_description,
                body_part=h.body_part,
            ),
        )
        series_pk = conn.execute(_SERIES_PK, {"b_uid": h.series_instance_uid}).scalar_one()

    conn.execute(
        _INSERT_INSTANCE,
        dict(
            sop_instance_uid=h.sop_instance_uid,
            series_pk=series_pk,
            sop_class_uid=h.sop_class_uid,
            instance_number=h.instance_number,
            transfer_syntax_uid=transfer_syntax_uid,
            size_bytes=size,
            path=rel_path,
            received_at=now,
            calling_ae=calling_ae,
        ),
    )
    return True
