"""Read-only queries the console needs beyond node/worklist/rows.py and node/forward/outbox.py.

The worklist page is paginated in SQL (``ORDER BY`` priority rank, waiting time; ``LIMIT``), so
its cost does not grow with the number of studies shown elsewhere; rows are turned into the same
JSON shape as ``triage-node worklist --json`` (``node.worklist.rows.row_json``) plus the study and
patient columns the page shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from pydicom.uid import Comprehensive3DSRStorage
from sqlalchemy import func, select

from dicom_sr.codes import TEST_MODEL_SERIES_TAG
from node.db.engine import Database
from node.db.models import Instance, OutboxItem, Patient, Series, Study, TriageJob, WorklistItem
from node.db.states import OPEN_JOB_STATES, JobState
from node.worklist.priority import PRIORITY_ORDER, priority_rank
from node.worklist.rows import row_json

PAGE_SIZE = 50


@dataclass(frozen=True)
class WorklistFilter:
    """What the worklist page was asked for; empty strings mean "any"."""

    priority: str = ""  # HIGH | MEDIUM | LOW
    assist: str = ""  # "yes" | "no"
    profile: str = ""
    day: date | None = None  # the UTC day the study was queued for triage

    @classmethod
    def parse(cls, priority: str | None, assist: str | None, profile: str | None, day: str | None) -> WorklistFilter:
        """Lenient: an unknown value is ignored rather than answered with an error page."""
        p = (priority or "").upper()
        a = (assist or "").lower()
        try:
            d = date.fromisoformat(day) if day else None
        except ValueError:
            d = None
        return cls(
            priority=p if p in PRIORITY_ORDER else "",
            assist=a if a in ("yes", "no") else "",
            profile=(profile or "")[:64],
            day=d,
        )

    def as_query(self) -> dict[str, str]:
        out = {
            "priority": self.priority,
            "assist": self.assist,
            "profile": self.profile,
            "day": self.day.isoformat() if self.day else "",
        }
        return {k: v for k, v in out.items() if v}


@dataclass
class WorklistPage:
    rows: list[dict[str, Any]]
    total: int
    page: int
    pages: int
    profiles: list[str] = field(default_factory=list)

    @property
    def test_model_rows(self) -> bool:
        """Whether any row on the page was answered by a random test model (its scores are noise)."""
        return any(row["test_model"] for row in self.rows)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def age_text(birth_date: str, study_date: str) -> str:
    """Age at the study from DICOM dates (YYYYMMDD), e.g. "54 y" or "7 mo"; "" when unknown."""
    try:
        born = datetime.strptime(birth_date[:8], "%Y%m%d").date()
        seen = datetime.strptime(study_date[:8], "%Y%m%d").date() if study_date else date.today()
    except ValueError:
        return ""
    months = (seen.year - born.year) * 12 + seen.month - born.month - (seen.day < born.day)
    if months < 0:
        return ""
    return f"{months // 12} y" if months >= 24 else f"{months} mo"


def _filters(f: WorklistFilter) -> list[Any]:
    where: list[Any] = []
    if f.priority:
        where.append(WorklistItem.priority == f.priority)
    if f.assist:
        where.append(WorklistItem.assist.is_(f.assist == "yes"))
    if f.profile:
        where.append(WorklistItem.profile == f.profile)
    if f.day:
        start = datetime.combine(f.day, time(0), tzinfo=UTC)
        where.extend([WorklistItem.queued_at >= start, WorklistItem.queued_at < start + timedelta(days=1)])
    return where


def worklist_page(db: Database, f: WorklistFilter, page: int = 1, per_page: int = PAGE_SIZE) -> WorklistPage:
    """One page of the worklist, most urgent first (HIGH, MEDIUM, LOW; longest waiting first)."""
    where = _filters(f)
    with db.session() as session:
        total = session.execute(select(func.count()).select_from(WorklistItem).where(*where)).scalar_one()
        pages = max(1, -(-total // per_page))
        page = min(max(1, page), pages)
        # Two steps: sort narrow rows (id only) to find the page, then read those rows whole. Sorting
        # the full rows (findings JSON, joined study and patient) made deep pages ~10x slower.
        ids = list(
            session.execute(
                select(WorklistItem.id)
                .where(*where)
                .order_by(priority_rank(), WorklistItem.queued_at, WorklistItem.id)
                .limit(per_page)
                .offset((page - 1) * per_page)
            ).scalars()
        )
        position = {item_id: n for n, item_id in enumerate(ids)}
        query = (
            select(
                WorklistItem,
                Study.modalities,
                Study.study_date,
                Study.description,
                Study.accession_number,
                Patient.name,
                Patient.patient_id,
                Patient.birth_date,
                Patient.sex,
                Series.description,
            )
            .outerjoin(Study, Study.study_instance_uid == WorklistItem.study_instance_uid)
            .outerjoin(Patient, Patient.id == Study.patient_pk)
            # the SR's series says whether a random test model answered (dicom_sr names it so), which
            # the page must say whatever model this process holds now (or none: an http-only process)
            .outerjoin(Series, Series.series_instance_uid == WorklistItem.sr_series_instance_uid)
            .where(WorklistItem.id.in_(ids))
        )
        found = sorted(session.execute(query).all(), key=lambda r: position[r[0].id]) if ids else []
        rows = []
        for item, modalities, study_date, description, accession, name, patient_id, birth, sex, sr_series in found:
            row = row_json(item)
            row.update(
                modalities=(modalities or "").replace("\\", ", "),
                study_date=study_date or "",
                description=description or "",
                accession_number=accession or "",
                patient_name=name or "",
                patient_id=patient_id or "",
                sex=sex or "",
                age=age_text(birth or "", study_date or ""),
                queued=_utc(item.queued_at),
                test_model=(sr_series or "").startswith(TEST_MODEL_SERIES_TAG),
            )
            rows.append(row)
    return WorklistPage(rows=rows, total=total, page=page, pages=pages)


@dataclass
class StudyFacts:
    """What the index knows of one study (no file is read)."""

    study_instance_uid: str
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    age: str
    study_date: str
    study_time: str
    accession_number: str
    description: str
    modalities: str
    instance_count: int
    stability_state: str
    last_arrival_at: datetime | None
    series: list[dict[str, Any]]
    worklist: dict[str, Any] | None
    jobs: list[dict[str, Any]]
    reports: list[dict[str, Any]]  # every SR of the study, newest first: sop, path, received_at


def study_facts(db: Database, study_uid: str) -> StudyFacts | None:
    with db.session() as session:
        found = session.execute(
            select(Study, Patient)
            .join(Patient, Patient.id == Study.patient_pk)
            .where(Study.study_instance_uid == study_uid)
        ).first()
        if found is None:
            return None
        study, patient = found
        series = [
            dict(
                series_instance_uid=s.series_instance_uid,
                modality=s.modality,
                number=s.series_number,
                description=s.description,
                body_part=s.body_part,
                instances=n,
            )
            for s, n in session.execute(
                select(Series, func.count(Instance.id))
                .outerjoin(Instance, Instance.series_pk == Series.id)
                .where(Series.study_pk == study.id)
                .group_by(Series.id)
                .order_by(Series.series_number, Series.id)
            )
        ]
        item = session.execute(
            select(WorklistItem).where(WorklistItem.study_instance_uid == study_uid)
        ).scalar_one_or_none()
        jobs = [
            dict(
                id=j.id,
                state=j.state,
                queued_at=_utc(j.queued_at),
                finished_at=_utc(j.finished_at),
                attempts=j.attempts,
                error=j.error,
            )
            for j in session.execute(
                select(TriageJob)
                .where(TriageJob.study_instance_uid == study_uid)
                .order_by(TriageJob.id.desc())
                .limit(20)
            ).scalars()
        ]
        reports = [
            dict(sop_instance_uid=sop, path=path, received_at=_utc(received))
            for sop, path, received in session.execute(
                select(Instance.sop_instance_uid, Instance.path, Instance.received_at)
                .join(Series, Instance.series_pk == Series.id)
                .where(Series.study_pk == study.id, Instance.sop_class_uid == str(Comprehensive3DSRStorage))
                .order_by(Instance.received_at.desc(), Instance.id.desc())
            )
        ]
        return StudyFacts(
            study_instance_uid=study.study_instance_uid,
            patient_name=patient.name,
            patient_id=patient.patient_id,
            birth_date=patient.birth_date,
            sex=patient.sex,
            age=age_text(patient.birth_date, study.study_date),
            study_date=study.study_date,
            study_time=study.study_time,
            accession_number=study.accession_number,
            description=study.description,
            modalities=study.modalities.replace("\\", ", "),
            instance_count=study.instance_count,
            stability_state=study.stability_state,
            last_arrival_at=_utc(study.last_arrival_at),
            series=series,
            worklist=row_json(item) if item is not None else None,
            jobs=jobs,
            reports=reports,
        )


def study_forwarding(db: Database, study_uid: str) -> list[dict[str, Any]]:
    """Per destination: how many of the study's instances and SRs are sent, pending, retrying or dead."""
    out: dict[str, dict[str, Any]] = {}
    with db.session() as session:
        for item in session.execute(
            select(OutboxItem).where(OutboxItem.study_instance_uid == study_uid).order_by(OutboxItem.id)
        ).scalars():
            d = out.setdefault(
                item.destination,
                {
                    "destination": item.destination,
                    "sent": 0,
                    "pending": 0,
                    "retrying": 0,
                    "dead": 0,
                    "sr": [],
                    "last_error": "",
                },
            )
            state = "retrying" if item.state == "pending" and item.attempts else item.state
            d[state] = d.get(state, 0) + 1
            if item.kind == "sr":
                d["sr"].append(
                    {"sop_instance_uid": item.sop_instance_uid, "state": state, "sent_at": _utc(item.sent_at)}
                )
            if item.last_error and item.state != "sent":
                d["last_error"] = item.last_error
    return list(out.values())


def queue_depths(db: Database) -> dict[str, int]:
    """Triage jobs queued/running and outbox items pending/retrying/dead, for the health page."""
    with db.session() as session:
        jobs = dict(
            session.execute(
                select(TriageJob.state, func.count())
                .where(TriageJob.state.in_(OPEN_JOB_STATES))
                .group_by(TriageJob.state)
            ).all()
        )
        outbox = session.execute(
            select(OutboxItem.state, OutboxItem.attempts > 0, func.count())
            .where(OutboxItem.state.in_(("pending", "dead")))
            .group_by(OutboxItem.state, OutboxItem.attempts > 0)
        ).all()
    depths = {
        "triage_queued": jobs.get(JobState.QUEUED, 0),
        "triage_running": jobs.get(JobState.RUNNING, 0),
        "outbox_pending": 0,
        "outbox_retrying": 0,
        "outbox_dead": 0,
    }
    for state, tried, n in outbox:
        key = "outbox_dead" if state == "dead" else ("outbox_retrying" if tried else "outbox_pending")
        depths[key] += n
    return depths
