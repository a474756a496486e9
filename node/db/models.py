"""SQLAlchemy 2 models of the index: what C-FIND, the stability timer and the worker need.

The index mirrors the files under storage/ (one row per stored instance). Timers (the
quiet-period clock, jobs) live here too, so they survive a restart (rule 3).

Each table has one owner module that writes it; everyone else reads (or calls the owner):

==================================  ==========================================================
patient, study, series, instance    node/store/index.py (rows of a stored instance); reads in
                                    node/store/read.py. ``study.stability_state`` flips to
                                    stable only in node/stability/tick.py.
triage_job                          node/triage/jobs.py (queue, claim, heartbeat, finish, retake)
worklist_item                       node/worklist/rows.py (a result's row, a person's clear) and
                                    node/worklist/ups.py (the UPS state machine)
outbox_item                         node/forward/outbox.py
audit_head                          node/audit/log.py
image_embedding                     node/embeddings/store.py
drift_stream                        node/drift/streams.py (a frozen reference, the alert state)
==================================  ==========================================================

Every write goes through ``Database.write()`` (node/db/engine.py). States kept as text are
named in node/db/states.py.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from node.db.states import JobState, StabilityState


class Base(DeclarativeBase):
    pass


UID = String(64)


class Patient(Base):
    __tablename__ = "patient"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # (patient_id, issuer) identify a patient; an empty PatientID is its own bucket.
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    issuer: Mapped[str] = mapped_column(String(64), default="")
    name: Mapped[str] = mapped_column(String(324), default="")
    birth_date: Mapped[str] = mapped_column(String(8), default="")
    sex: Mapped[str] = mapped_column(String(16), default="")
    __table_args__ = (UniqueConstraint("patient_id", "issuer", name="uq_patient_id_issuer"),)


class Study(Base):
    __tablename__ = "study"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patient.id"))
    study_date: Mapped[str] = mapped_column(String(8), default="")
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="")
    study_id: Mapped[str] = mapped_column(String(16), default="")
    description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician: Mapped[str] = mapped_column(String(324), default="")
    modalities: Mapped[str] = mapped_column(String(128), default="")  # backslash-joined, sorted
    # Stability clock (rule 3): 'receiving' until quiet for quiet_seconds, then 'stable'.
    last_arrival_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    stability_state: Mapped[str] = mapped_column(String(16), default=StabilityState.RECEIVING.value)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    patient: Mapped[Patient] = relationship()
    __table_args__ = (Index("ix_study_stability", "stability_state", "last_arrival_at"),)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("study.id"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    description: Mapped[str] = mapped_column(String(64), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")


class Instance(Base):
    __tablename__ = "instance"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    path: Mapped[str] = mapped_column(String(400))  # relative to storage.path
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    calling_ae: Mapped[str] = mapped_column(String(16), default="")


class TriageJob(Base):
    """One triage of one study. queued -> running -> done | failed."""

    __tablename__ = "triage_job"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(128), default="")
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (Index("ix_job_state", "state", "queued_at"),)


class AuditHead(Base):
    """Where the audit chain ends, so that a truncated log file is detected (one row per log path)."""

    __tablename__ = "audit_head"
    log_path: Mapped[str] = mapped_column(String(400), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))
    # "ts" of the last line: tells a deletion (log still ends with this event) from a truncation
    last_ts: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # hash of the line being written, committed before its fsync: a line after the head with
    # this hash is the node's own (killed between the line's fsync and the head's commit)
    pending_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)


class WorklistItem(Base):
    """The triage answer per study: what a reading worklist sorts by.

    ``priority`` is the effective worklist priority (rule 5, over time): the maximum of the
    order's own priority (``order_priority``; MEDIUM when the order names none) and HIGH while
    an SR of this node has raised the study (``raised_by_sr_uid``). A later SR that cannot
    assess, or assesses lower, leaves the raise in place (``priority_kept``); only a person
    clears it (``cleared_*``: a UPS completed/canceled, or ``worklist clear``). The model never
    sets LOW; a LOW order stays LOW unless the model raises it.
    """

    __tablename__ = "worklist_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    priority: Mapped[str] = mapped_column(String(8))  # HIGH | MEDIUM | LOW (LOW only from the order)
    assist: Mapped[bool] = mapped_column(default=False)
    reason: Mapped[str] = mapped_column(String(64), default="")
    profile: Mapped[str] = mapped_column(String(64), default="")
    sr_sop_instance_uid: Mapped[str] = mapped_column(UID, default="")
    sr_series_instance_uid: Mapped[str] = mapped_column(UID, default="")
    job_id: Mapped[int] = mapped_column(Integer)
    findings: Mapped[str] = mapped_column(Text, default="")  # JSON summary for dashboards
    images: Mapped[str] = mapped_column(Text, default="")  # JSON: per image domain score, evaluated, preprocessing
    order_priority: Mapped[str] = mapped_column(String(8), default="")  # HIGH | MEDIUM | LOW | "" (none given)
    raised_by_sr_uid: Mapped[str] = mapped_column(UID, default="")  # the SR whose urgent finding raised it
    raised_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    priority_kept: Mapped[bool] = mapped_column(default=False)  # the latest SR did not raise; the raise held
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    cleared_by: Mapped[str] = mapped_column(String(64), default="")
    cleared_reason: Mapped[str] = mapped_column(Text, default="")
    queued_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    triaged_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The same item as a DICOM Unified Procedure Step (UPS Pull / UPS-RS).
    ups_sop_instance_uid: Mapped[str] = mapped_column(UID, default="")
    procedure_step_state: Mapped[str] = mapped_column(String(16), default="SCHEDULED")
    transaction_uid: Mapped[str] = mapped_column(UID, default="")  # set while a reader holds it IN PROGRESS
    state_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Whether the operating points in force were calibrated on local data (issue 13), in words.
    calibration: Mapped[str] = mapped_column(String(200), default="")
    # The console's page order and filters read only this index (migration 0020).
    __table_args__ = (Index("ix_worklist_order", "priority", "queued_at", "assist", "profile"),)


class OutboxItem(Base):
    """One instance to C-STORE to one destination; durable so that retries survive restarts (rule 3)."""

    __tablename__ = "outbox_item"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    destination: Mapped[str] = mapped_column(String(128))  # "AET@host:port"
    kind: Mapped[str] = mapped_column(String(16))  # "sr" | "instance"
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(400))  # relative to storage.path
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (
        UniqueConstraint("destination", "sop_instance_uid", name="uq_outbox_destination_sop"),
        Index("ix_outbox_due", "state", "next_attempt_at"),
    )


class ImageEmbedding(Base):
    """One image's embedding, kept so that prompts and thresholds can be judged again without a
    new image pass (rule 8). Keyed by the image, the model weights and the preprocessing version:
    the same image embedded by other weights or another preprocessing is another row.

    The header facts are the image's own, copied at embedding time, so that subgroup analysis
    (sex, age band, manufacturer, site) needs no file read. The vector is little-endian float32
    bytes (``dim`` values).
    """

    __tablename__ = "image_embedding"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, default="")
    weights_sha256: Mapped[str] = mapped_column(String(64))
    preprocessing_version: Mapped[str] = mapped_column(String(32))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    patient_sex: Mapped[str] = mapped_column(String(16), default="")
    patient_age_years: Mapped[float | None] = mapped_column(Float, nullable=True)
    manufacturer: Mapped[str] = mapped_column(String(64), default="")
    manufacturer_model: Mapped[str] = mapped_column(String(64), default="")
    station_name: Mapped[str] = mapped_column(String(64), default="")
    institution_name: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    view_position: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(16), default="")
    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "weights_sha256", "preprocessing_version", name="uq_embedding_key"),
        Index("ix_embedding_model", "weights_sha256", "preprocessing_version"),
    )


class DriftStream(Base):
    """One drift stream (modality | manufacturer | model | station) of one embedding space (issue 9).

    Holds the stream's frozen reference window (``triage-node drift freeze``: embedding row ids
    ``reference_first_id..reference_last_id``; null = the stream's first N images) and its alert
    state, so an alert is audited once when it is raised and once when it clears, whichever
    process computes it.
    """

    __tablename__ = "drift_stream"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stream_key: Mapped[str] = mapped_column(String(300))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    preprocessing_version: Mapped[str] = mapped_column(String(32))
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reference_first_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reference_last_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    frozen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    alert: Mapped[bool] = mapped_column(Boolean, default=False)
    alert_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reasons: Mapped[str] = mapped_column(Text, default="")
    __table_args__ = (
        UniqueConstraint("stream_key", "weights_sha256", "preprocessing_version", name="uq_drift_stream"),
    )
