"""The worklist as DICOM Unified Procedure Steps (PS3.4 Annex CC, PS3.3 C.30): one UPS per
WorklistItem, shared by the DIMSE UPS Pull SCP and (later) UPS-RS.

- :func:`ups_dataset` builds the workitem (never with its Transaction UID, which PS3.4 CC.2.5
  keeps private to the performer).
- :func:`find_workitems` matches C-FIND / UPS-RS search criteria.
- :func:`change_state` is the state machine of N-ACTION type 1 / ``PUT .../state``:
  SCHEDULED -> IN PROGRESS (stores the Transaction UID), IN PROGRESS -> COMPLETED | CANCELED
  only with that Transaction UID; everything else answers the PS3.4 CC status codes.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from sqlalchemy import select

from dicom_sr import PRIORITY_HIGH, PRIORITY_LOW, PRIORITY_MEDIUM
from node.db.engine import Database
from node.db.models import Patient, Study, WorklistItem
from node.store.read import StoredInstance, instances_of_study
from node.uids import is_valid_uid
from node.worklist.priority import priority_rank
from node.worklist.rows import clear_raise_in_session
from node.worklist.states import COMPLETED, IN_PROGRESS, SCHEDULED, STATES

UPS_PUSH_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.1"  # the SOP Class of every UPS instance
UPS_PULL_SOP_CLASS = "1.2.840.10008.5.1.4.34.6.3"
WORKLIST_LABEL = "AI triage"
CHARSET = "ISO_IR 192"

# PS3.4 CC status codes (N-ACTION Change State).
SUCCESS = 0x0000
INVALID_ARGUMENT = 0x0115  # Invalid Argument Value (unknown state)
MISSING_ATTRIBUTE = 0x0120
NO_SUCH_INSTANCE = 0xC307  # Specified SOP Instance UID does not exist or is not a UPS managed here
NOT_UPDATABLE = 0xC300  # The UPS may no longer be updated
WRONG_TRANSACTION = 0xC301  # The correct Transaction UID was not provided
ALREADY_IN_PROGRESS = 0xC302
ONLY_VIA_CREATE = 0xC303  # may only become SCHEDULED via N-CREATE
NOT_IN_PROGRESS = 0xC310  # not yet IN PROGRESS
ALREADY_CANCELED = 0xB304  # warning: already in the requested state CANCELED
ALREADY_COMPLETED = 0xB306  # warning: already in the requested state COMPLETED

# Scheduled Workitem Code: DCM 110005 "Interpretation" (CID 9231).
WORKITEM_CODE = ("110005", "DCM", "Interpretation")


@dataclass(frozen=True)
class StateChange:
    status: int
    message: str
    state: str | None = None  # the state after the call
    cleared_raise: str = ""  # the SR whose AI raise a COMPLETED / CANCELED cleared (a person's act)
    study_instance_uid: str = ""

    @property
    def ok(self) -> bool:
        return self.status in (SUCCESS, ALREADY_CANCELED, ALREADY_COMPLETED)


def audit_description(change: StateChange, *, via: str, requested: str, ups_uid: str, by: str) -> tuple[str, list[Any]]:
    """The audit text and objects of a state change, the same for N-ACTION and UPS-RS: the
    workitem, and the study whose AI raise a COMPLETED / CANCELED cleared (who, which SR)."""
    from node.audit import AuditObject

    desc = f"{via} change state to {requested}: 0x{change.status:04X} {change.message}"
    objects: list[Any] = [AuditObject(type="job", id=ups_uid)]
    if change.cleared_raise:
        desc += f"; AI priority raise by SR {change.cleared_raise} cleared"
        objects.append(
            AuditObject(
                type="study", id=change.study_instance_uid, details={"cleared_raise": change.cleared_raise, "by": by}
            )
        )
    return desc, objects


def _dt(value: datetime | None) -> str:
    if value is None:
        return ""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c


def ups_dataset(
    item: WorklistItem,
    *,
    study: Study | None = None,
    patient: Patient | None = None,
    series: list[tuple[str, list[StoredInstance]]] | None = None,
    retrieve_ae: str = "",
) -> Dataset:
    """The UPS workitem of ``item`` (Transaction UID never included); ``series`` are the study's
    instances by Series Instance UID."""
    ds = Dataset()
    ds.SpecificCharacterSet = CHARSET
    ds.SOPClassUID = UPS_PUSH_SOP_CLASS
    ds.SOPInstanceUID = item.ups_sop_instance_uid
    # Unified Procedure Step Scheduled Procedure Information Module
    ds.ScheduledProcedureStepPriority = (
        item.priority if item.priority in (PRIORITY_HIGH, PRIORITY_MEDIUM, PRIORITY_LOW) else PRIORITY_MEDIUM
    )
    ds.ScheduledProcedureStepModificationDateTime = _dt(item.state_changed_at or item.triaged_at)
    ds.ProcedureStepLabel = (
        f"AI triage {item.priority}: " + ("assessed" if item.assist else f"no assist ({item.reason or 'unknown'})")
    )[:64]
    ds.WorklistLabel = WORKLIST_LABEL
    ds.ScheduledProcedureStepStartDateTime = _dt(item.triaged_at)
    ds.ScheduledWorkitemCodeSequence = Sequence([_code(*WORKITEM_CODE)])
    ds.InputReadinessState = "READY"
    ds.CommentsOnTheScheduledProcedureStep = (
        f"AI triage result (research use only), profile {item.profile or '-'}; "
        f"report SR {item.sr_sop_instance_uid or '-'}"
    )[:10240]
    inputs = []
    for series_uid, instances in series or []:
        entry = Dataset()
        entry.TypeOfInstances = "DICOM"
        entry.StudyInstanceUID = item.study_instance_uid
        entry.SeriesInstanceUID = series_uid
        refs = []
        for inst in instances:
            r = Dataset()
            r.ReferencedSOPClassUID = inst.sop_class_uid
            r.ReferencedSOPInstanceUID = inst.sop_instance_uid
            refs.append(r)
        entry.ReferencedSOPSequence = Sequence(refs)
        if retrieve_ae:
            retr = Dataset()
            retr.RetrieveAETitle = retrieve_ae
            entry.DICOMRetrievalSequence = Sequence([retr])
        inputs.append(entry)
    ds.InputInformationSequence = Sequence(inputs)
    # Unified Procedure Step Relationship Module: patient + the study
    ds.PatientName = patient.name if patient else ""
    ds.PatientID = patient.patient_id if patient else ""
    ds.IssuerOfPatientID = patient.issuer if patient else ""
    ds.PatientBirthDate = patient.birth_date if patient else ""
    ds.PatientSex = patient.sex if patient else ""
    ds.StudyInstanceUID = item.study_instance_uid
    req = Dataset()
    req.StudyInstanceUID = item.study_instance_uid
    req.AccessionNumber = study.accession_number if study else ""
    req.RequestedProcedureID = ""
    req.RequestedProcedureDescription = (study.description if study else "")[:64]
    req.ReasonForTheRequestedProcedure = "AI triage"
    ds.ReferencedRequestSequence = Sequence([req])
    # The report: our SR, as a Referenced Instance (also one of the input series above).
    if item.sr_sop_instance_uid:
        sr = Dataset()
        sr.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        sr.ReferencedSOPInstanceUID = item.sr_sop_instance_uid
        ds.ReferencedInstanceSequence = Sequence([sr])
    # Unified Procedure Step Progress Information Module
    ds.ProcedureStepState = item.procedure_step_state or SCHEDULED
    return ds


def _load(session: Any, item: WorklistItem, retrieve_ae: str) -> Dataset:
    study = session.execute(
        select(Study).where(Study.study_instance_uid == item.study_instance_uid)
    ).scalar_one_or_none()
    patient = session.get(Patient, study.patient_pk) if study is not None else None
    series: dict[str, list[StoredInstance]] = {}
    if study is not None:
        for inst in instances_of_study(session, item.study_instance_uid):
            series.setdefault(inst.series_instance_uid, []).append(inst)
    return ups_dataset(item, study=study, patient=patient, series=list(series.items()), retrieve_ae=retrieve_ae)


def get_workitem(db: Database, ups_uid: str, *, retrieve_ae: str = "") -> Dataset | None:
    with db.session() as session:
        item = session.execute(
            select(WorklistItem).where(WorklistItem.ups_sop_instance_uid == ups_uid)
        ).scalar_one_or_none()
        return None if item is None else _load(session, item, retrieve_ae)


# ------------------------------------------------------------------ search
def _text_match(pattern: str, value: str) -> bool:
    if "*" in pattern or "?" in pattern:
        return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))
    return value == pattern


def _dt_match(pattern: str, value: str) -> bool:
    if "-" not in pattern[1:]:  # a single value (a timezone offset may hold a '-')
        return value.startswith(pattern)
    low, _, high = pattern.partition("-")
    if not value:
        return False
    return (not low or value[: len(low)] >= low) and (not high or value[: len(high)] <= high)


def _matches(ds: Dataset, criteria: Mapping[str, Any]) -> bool:
    for keyword, value in criteria.items():
        if value is None or value == "" or (isinstance(value, (list, Dataset)) and not value):
            continue
        if keyword not in ds:
            continue  # an attribute we do not keep: universal match
        have = ds[keyword].value
        if isinstance(value, (list, tuple)):
            if str(have) not in [str(v) for v in value]:
                return False
            continue
        text = str(value)
        if ds[keyword].VR == "DT" or ds[keyword].VR == "DA":
            if not _dt_match(text, str(have or "")):
                return False
        elif ds[keyword].VR == "UI" and "\\" in text:
            if str(have) not in text.split("\\"):
                return False
        elif ds[keyword].VR == "SQ":
            continue
        elif not _text_match(text, str(have if have is not None else "")):
            return False
    return True


def find_workitems(
    db: Database, criteria: Mapping[str, Any], *, limit: int = 1000, retrieve_ae: str = ""
) -> list[Dataset]:
    """Workitems matching ``criteria`` (keyword -> value; wildcards, DT ranges, UID lists),
    HIGH before MEDIUM, then oldest first. Unknown keywords match universally."""
    stmt = select(WorklistItem).where(WorklistItem.ups_sop_instance_uid != "")
    state = criteria.get("ProcedureStepState")
    if isinstance(state, str) and state and "*" not in state and "?" not in state:
        stmt = stmt.where(WorklistItem.procedure_step_state == state)
    prio = criteria.get("ScheduledProcedureStepPriority")
    if isinstance(prio, str) and prio and "*" not in prio and "?" not in prio:
        stmt = stmt.where(WorklistItem.priority == prio)
    uid = criteria.get("SOPInstanceUID")
    if isinstance(uid, str) and uid and "*" not in uid:
        stmt = stmt.where(WorklistItem.ups_sop_instance_uid.in_(uid.split("\\")))
    study_uid = criteria.get("StudyInstanceUID")
    if isinstance(study_uid, str) and study_uid and "*" not in study_uid and "?" not in study_uid:
        stmt = stmt.where(WorklistItem.study_instance_uid.in_(study_uid.split("\\")))
    stmt = stmt.order_by(priority_rank(), WorklistItem.queued_at)
    out: list[Dataset] = []
    with db.session() as session:
        for item in session.execute(stmt).scalars():
            ds = _load(session, item, retrieve_ae)
            if _matches(ds, criteria):
                out.append(ds)
                if len(out) >= limit:
                    break
    return out


def project(full: Dataset, identifier: Dataset) -> Dataset:
    """The C-FIND response: the identifier's keys filled from ``full`` (empty when unknown)."""
    from pydicom.dataelem import DataElement

    out = Dataset()
    out.SpecificCharacterSet = CHARSET
    for elem in identifier:
        if elem.keyword == "SpecificCharacterSet":
            continue
        if elem.tag in full:
            out.add(full[elem.tag])
        else:
            out.add(DataElement(elem.tag, elem.VR, [] if elem.VR == "SQ" else None))
    if "SOPInstanceUID" not in out:
        out.SOPInstanceUID = full.SOPInstanceUID
    return out


# ------------------------------------------------------------------ state machine
def change_state(db: Database, ups_uid: str, new_state: str, transaction_uid: str | None, by: str = "") -> StateChange:
    """N-ACTION Change UPS State (action type 1) / UPS-RS ``PUT /workitems/{uid}/state``.

    COMPLETED or CANCELED is a person's decision on the study: it clears an AI raise
    (rule 5), naming ``by`` (the calling AE title or HTTP client) as who cleared it. The
    caller audits the change, including ``cleared_raise``.
    """
    new_state = (new_state or "").strip().upper()
    transaction_uid = (transaction_uid or "").strip()
    if new_state not in STATES:
        return StateChange(INVALID_ARGUMENT, f"unknown Procedure Step State {new_state!r}")
    if not transaction_uid:
        return StateChange(MISSING_ATTRIBUTE, "Transaction UID (0008,1195) is required")
    if not is_valid_uid(transaction_uid):
        return StateChange(INVALID_ARGUMENT, "Transaction UID is not a valid UID")
    with db.write() as session:
        item = session.execute(
            select(WorklistItem).where(WorklistItem.ups_sop_instance_uid == ups_uid)
        ).scalar_one_or_none()
        if item is None:
            return StateChange(NO_SUCH_INSTANCE, "no such workitem")
        current = item.procedure_step_state or SCHEDULED
        if new_state == SCHEDULED:
            return StateChange(ONLY_VIA_CREATE, "a UPS becomes SCHEDULED only by N-CREATE", current)
        if current == SCHEDULED:
            if new_state == IN_PROGRESS:
                item.procedure_step_state = IN_PROGRESS
                item.transaction_uid = transaction_uid
                item.state_changed_at = datetime.now(UTC)
                return StateChange(SUCCESS, "claimed", IN_PROGRESS)
            return StateChange(NOT_IN_PROGRESS, "the workitem is not IN PROGRESS", current)
        if current == IN_PROGRESS:
            if new_state == IN_PROGRESS:
                return StateChange(ALREADY_IN_PROGRESS, "the workitem is already IN PROGRESS", current)
            if transaction_uid != item.transaction_uid:
                return StateChange(WRONG_TRANSACTION, "the Transaction UID does not match", current)
            item.procedure_step_state = new_state
            item.state_changed_at = datetime.now(UTC)
            cleared = clear_raise_in_session(
                item, by=by or "UPS performer", reason=f"UPS {new_state}", now=item.state_changed_at
            )
            return StateChange(
                SUCCESS,
                new_state.lower(),
                new_state,
                cleared_raise=cleared.raised_by_sr_uid,
                study_instance_uid=item.study_instance_uid,
            )
        if current == new_state:  # COMPLETED -> COMPLETED, CANCELED -> CANCELED
            return StateChange(
                ALREADY_COMPLETED if current == COMPLETED else ALREADY_CANCELED,
                f"the workitem is already {current}",
                current,
            )
        return StateChange(NOT_UPDATABLE, f"the workitem is {current} and may no longer be updated", current)


__all__ = [
    "UPS_PULL_SOP_CLASS",
    "UPS_PUSH_SOP_CLASS",
    "WORKLIST_LABEL",
    "StateChange",
    "audit_description",
    "change_state",
    "find_workitems",
    "get_workitem",
    "project",
    "ups_dataset",
]
