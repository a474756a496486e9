"""Index rows for one stored instance, written in one transaction (patient, study, series, instance).

The same transaction moves the study's quiet-period clock (last_arrival_at) and re-opens a
study that was already stable (rule 4), so clock and index can never disagree.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from node.db.engine import Database
from node.db.models import Instance, Patient, Series, Study
from node.store.header import InstanceHeader


def _upsert_ignore(db: Database, table, values: dict):  # type: ignore[no-untyped-def]
    ins = (sqlite_insert if db.is_sqlite else pg_insert)(table).values(**values)
    return ins.on_conflict_do_nothing()


def instance_exists(session: Session, sop_instance_uid: str) -> bool:
    return session.execute(
        select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)
    ).first() is not None


def add_instance(db: Database, session: Session, h: InstanceHeader, *, rel_path: str, size: int,
                 transfer_syntax_uid: str, calling_ae: str, now: datetime | None = None,
                 touch_stability: bool = True) -> bool:
    """Insert the rows; returns False when the SOP Instance UID is already indexed (duplicate).

    ``touch_stability=False`` is for objects the node makes itself (its SRs): they must not
    re-open the study, or every SR would trigger another triage.
    """
    now = now or datetime.now(timezone.utc)
    if instance_exists(session, h.sop_instance_uid):
        return False
    session.execute(_upsert_ignore(db, Patient.__table__, dict(
        patient_id=h.patient_id, issuer=h.issuer_of_patient_id, name=h.patient_name,
        birth_date=h.patient_birth_date, sex=h.patient_sex)))
    patient_pk = session.execute(select(Patient.id).where(
        Patient.patient_id == h.patient_id, Patient.issuer == h.issuer_of_patient_id)).scalar_one()

    study = session.execute(select(Study.id, Study.modalities).where(
        Study.study_instance_uid == h.study_instance_uid)).first()
    if study is None:
        session.execute(_upsert_ignore(db, Study.__table__, dict(
            study_instance_uid=h.study_instance_uid, patient_pk=patient_pk, study_date=h.study_date,
            study_time=h.study_time, accession_number=h.accession_number[:16], study_id=h.study_id[:16],
            description=h.study_description, referring_physician=h.referring_physician,
            modalities="", last_arrival_at=now, stability_state="receiving", instance_count=0)))
        study = session.execute(select(Study.id, Study.modalities).where(
            Study.study_instance_uid == h.study_instance_uid)).one()
    study_pk, modalities = study
    mods = set(filter(None, (modalities or "").split("\\")))
    if h.modality:
        mods.add(h.modality)
    values: dict = dict(instance_count=Study.instance_count + 1, modalities="\\".join(sorted(mods)))
    if touch_stability:
        values.update(last_arrival_at=now, stability_state="receiving")
    session.execute(update(Study).where(Study.id == study_pk).values(**values))

    series_pk = session.execute(select(Series.id).where(
        Series.series_instance_uid == h.series_instance_uid)).scalar_one_or_none()
    if series_pk is None:
        session.execute(_upsert_ignore(db, Series.__table__, dict(
            series_instance_uid=h.series_instance_uid, study_pk=study_pk, modality=h.modality,
            series_number=h.series_number, description=h.series_description, body_part=h.body_part)))
        series_pk = session.execute(select(Series.id).where(
            Series.series_instance_uid == h.series_instance_uid)).scalar_one()

    session.execute(insert(Instance).values(
        sop_instance_uid=h.sop_instance_uid, series_pk=series_pk, sop_class_uid=h.sop_class_uid,
        instance_number=h.instance_number, transfer_syntax_uid=transfer_syntax_uid, size_bytes=size,
        path=rel_path, received_at=now, calling_ae=calling_ae))
    return True
