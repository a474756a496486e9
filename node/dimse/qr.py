"""Query/Retrieve SCP (Study Root + Patient Root C-FIND, C-GET, C-MOVE) and the UPS Pull SCP
(C-FIND, N-GET, N-ACTION change state) for the DICOM listener.

Every handler runs in its association's thread. Matches are capped (C-FIND: FIND_LIMIT,
retrievals: RETRIEVE_LIMIT = 65535, pynetdicom's own cap) and streamed; a C-CANCEL ends the
operation with 0xFE00. Queries are audited as 110112 (the identifier as details) and
retrievals as 110104 with action R, once per operation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, build_context, evt
from pynetdicom.dimse_primitives import N_ACTION, N_GET
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    UnifiedProcedureStepPull,
    UnifiedProcedureStepPush,
    UnifiedProcedureStepQuery,
    UnifiedProcedureStepWatch,
)

from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import MINOR_FAILURE
from node.audit.events import SUCCESS as AUDIT_SUCCESS
from node.config import RemoteNode
from node.db.engine import Database
from node.dimse import status as st
from node.dimse.scu_race import keep_responses_for_caller
from node.dimse.tls import client_tls_args
from node.oplog import get_logger
from node.query.match import (
    PATIENT_ROOT,
    STUDY_ROOT,
    InvalidQuery,
    find_identifier,
    identifier_criteria,
    instances_for_retrieve,
)
from node.store.read import StoredFiles
from node.worklist import ups

log = get_logger("qr")
FIND_LIMIT = 10_000
RETRIEVE_LIMIT = 65_535

FIND_MODELS = {
    str(StudyRootQueryRetrieveInformationModelFind): STUDY_ROOT,
    str(PatientRootQueryRetrieveInformationModelFind): PATIENT_ROOT,
}
GET_MODELS = {
    str(StudyRootQueryRetrieveInformationModelGet): STUDY_ROOT,
    str(PatientRootQueryRetrieveInformationModelGet): PATIENT_ROOT,
}
MOVE_MODELS = {
    str(StudyRootQueryRetrieveInformationModelMove): STUDY_ROOT,
    str(PatientRootQueryRetrieveInformationModelMove): PATIENT_ROOT,
}
UPS_FIND = {str(UnifiedProcedureStepPull), str(UnifiedProcedureStepWatch), str(UnifiedProcedureStepQuery)}
UPS_CLASSES = (UnifiedProcedureStepPush, UnifiedProcedureStepPull, UnifiedProcedureStepWatch, UnifiedProcedureStepQuery)


def _criteria_for_audit(identifier: Dataset | None) -> dict[str, Any]:
    if identifier is None:
        return {}
    out: dict[str, Any] = {}
    for elem in identifier:
        if elem.keyword and elem.VR != "SQ":
            out[elem.keyword] = (
                "" if elem.value is None else ([str(v) for v in elem.value] if elem.VM > 1 else str(elem.value))
            )
        elif elem.keyword:
            out[elem.keyword] = "<sequence>"
    return out


def _keep_sub_association_responses(event: evt.Event) -> None:
    """EVT_ESTABLISHED of a C-MOVE sub-association: its C-STORE responses stay for the sending
    thread, so a destination's Success is not lost to pynetdicom's reactor race (a sub-operation
    counted as failed although the destination stored it)."""
    keep_responses_for_caller(event.assoc)


class QueryRetrieveSCP:
    """The Q/R and UPS halves of the listener: contexts to add to the AE, handlers to bind."""

    def __init__(
        self,
        ae_title: str,
        db: Database,
        files: StoredFiles,
        audit: AuditLog,
        move_destinations: tuple[RemoteNode, ...] | list[RemoteNode] = (),
    ) -> None:
        self.ae_title = ae_title
        self.db = db
        self.files = files
        self.audit = audit
        self.destinations: dict[str, RemoteNode] = {}
        for node in move_destinations:
            self.destinations.setdefault(node.ae_title, node)

    # ---------------------------------------------------------------- negotiation
    def add_contexts(self, ae: Any) -> None:
        for model in (*FIND_MODELS, *GET_MODELS, *MOVE_MODELS):
            ae.add_supported_context(model, ALL_TRANSFER_SYNTAXES)
        for cls in UPS_CLASSES:
            ae.add_supported_context(cls, ALL_TRANSFER_SYNTAXES)

    def handlers(self) -> list:
        return [
            (evt.EVT_C_FIND, self.on_find),
            (evt.EVT_C_GET, self.on_get),
            (evt.EVT_C_MOVE, self.on_move),
            (evt.EVT_N_GET, self.on_n_get),
            (evt.EVT_N_ACTION, self.on_n_action),
        ]

    # ---------------------------------------------------------------- audit helpers
    def _peer(self, event: evt.Event, role: str = "source") -> Participant:
        return Participant(
            user_id=event.assoc.requestor.ae_title,
            role=role,
            is_requestor=True,
            network_address=str(event.assoc.requestor.address),
        )

    def _us(self, role: str) -> Participant:
        return Participant(user_id=self.ae_title, role=role)

    def _audit_query(
        self, event: evt.Event, sop_class: str, identifier: Dataset | None, matches: int, status: int
    ) -> None:
        self.audit.record(
            EventCode.QUERY,
            action="E",
            outcome=AUDIT_SUCCESS if status in st.FIND_COMPLETED else MINOR_FAILURE,
            outcome_desc=f"C-FIND status 0x{status:04X}, {matches} matches",
            participants=[self._peer(event), self._us("destination")],
            objects=[
                AuditObject(
                    type="query", id=sop_class, details={"query": _criteria_for_audit(identifier), "matches": matches}
                )
            ],
        )

    def _audit_retrieve(
        self, event: evt.Event, operation: str, destination: str, matches: list[Any], status_desc: str, ok: bool
    ) -> None:
        by_study: dict[str, dict[str, Any]] = defaultdict(lambda: {"instances": 0, "patient_id": ""})
        for m in matches:
            entry = by_study[m.values.get("StudyInstanceUID", "")]
            entry["instances"] += 1
            entry["patient_id"] = m.values.get("PatientID", "")
        objects = []
        for study_uid, entry in by_study.items():
            objects.append(AuditObject(type="patient", id=entry["patient_id"]))
            objects.append(
                AuditObject(
                    type="study", id=study_uid, details={"instances": entry["instances"], "operation": operation}
                )
            )
        dest = Participant(
            user_id=destination,
            role="destination",
            is_requestor=destination == event.assoc.requestor.ae_title,
            network_address=str(event.assoc.requestor.address) if operation == "C-GET" else "",
        )
        participants = [self._us("source"), dest]
        if operation == "C-MOVE":
            participants.append(self._peer(event, role="requestor"))
        self.audit.record(
            EventCode.INSTANCES_TRANSFERRED,
            action="R",
            outcome=AUDIT_SUCCESS if ok else MINOR_FAILURE,
            outcome_desc=f"{operation}: {status_desc}",
            participants=participants,
            objects=objects,
        )

    # ---------------------------------------------------------------- C-FIND
    def on_find(self, event: evt.Event) -> Iterator[tuple[int, Dataset | None]]:
        sop_class = str(event.request.AffectedSOPClassUID)
        if sop_class in UPS_FIND:
            yield from self._ups_find(event, sop_class)
            return
        root = FIND_MODELS.get(sop_class)
        matches, status = 0, st.SUCCESS
        identifier: Dataset | None = None
        try:
            try:
                identifier = event.identifier
            except Exception:  # undecodable identifier
                status = st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
                yield status, None
                return
            if root is None:
                status = st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
                yield status, None
                return
            with self.db.session() as session:
                try:
                    responses = find_identifier(
                        session, identifier, root=root, limit=FIND_LIMIT, retrieve_ae=self.ae_title
                    )
                    for response in responses:
                        if event.is_cancelled:
                            status = st.CANCELED
                            yield status, None
                            return
                        matches += 1
                        yield st.PENDING, response
                    if matches >= FIND_LIMIT:
                        log.warning("c_find_capped", limit=FIND_LIMIT)
                except InvalidQuery as exc:
                    log.warning("c_find_invalid", reason=str(exc)[:200])
                    status = st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
                    yield status, None
                    return
                except Exception as exc:
                    log.error("c_find_failed", error=type(exc).__name__, detail=str(exc)[:200])
                    status = st.FIND_UNABLE_TO_PROCESS
                    yield status, None
                    return
            yield st.SUCCESS, None
        finally:
            self._audit_query(event, sop_class, identifier, matches, status)

    def _ups_find(self, event: evt.Event, sop_class: str) -> Iterator[tuple[int, Dataset | None]]:
        identifier: Dataset | None = None
        matches, status = 0, st.SUCCESS
        try:
            identifier = event.identifier
            criteria = identifier_criteria(identifier)
            for full in ups.find_workitems(self.db, criteria, limit=FIND_LIMIT, retrieve_ae=self.ae_title):
                if event.is_cancelled:
                    status = st.CANCELED
                    yield status, None
                    return
                matches += 1
                yield st.PENDING, ups.project(full, identifier)
            yield st.SUCCESS, None
        except Exception as exc:
            log.error("ups_find_failed", error=type(exc).__name__, detail=str(exc)[:200])
            status = st.FIND_UNABLE_TO_PROCESS
            yield status, None
        finally:
            self._audit_query(event, sop_class, identifier, matches, status)

    # ---------------------------------------------------------------- C-GET / C-MOVE
    def _retrieve_matches(self, event: evt.Event, models: dict[str, str]) -> list[Any]:
        sop_class = str(event.request.AffectedSOPClassUID)
        root = models.get(sop_class)
        if root is None:
            raise InvalidQuery(f"not a retrieve model: {sop_class}")
        identifier = event.identifier
        level = str(identifier.get("QueryRetrieveLevel", "") or "").upper()
        if root == STUDY_ROOT and level == "PATIENT":
            raise InvalidQuery("PATIENT level is not part of the Study Root information model")
        with self.db.session() as session:
            return instances_for_retrieve(session, level, identifier_criteria(identifier), limit=RETRIEVE_LIMIT)

    def _read(self, rel: str | None) -> Dataset:
        assert rel is not None
        return self.files.read(rel)

    def _send(
        self, event: evt.Event, matches: list[Any], operation: str, destination: str
    ) -> Iterator[tuple[int, Dataset | None]]:
        sent, status_desc, ok = 0, "completed", True
        try:
            for m in matches:
                if event.is_cancelled:
                    status_desc, ok = f"canceled after {sent} of {len(matches)}", True
                    yield st.CANCELED, None
                    return
                try:
                    ds = self._read(m.instance_path)
                except Exception as exc:
                    log.error("retrieve_read_failed", error=type(exc).__name__, detail=str(exc)[:200])
                    status_desc, ok = f"file unreadable after {sent} of {len(matches)}", False
                    yield st.OUT_OF_RESOURCES_SUB_OPERATIONS, None
                    return
                sent += 1
                yield st.PENDING, ds
            status_desc = f"{sent} instances offered"
        finally:
            self._audit_retrieve(
                event, operation, destination, matches[:sent] if sent else matches[:0], status_desc, ok
            )

    def on_get(self, event: evt.Event) -> Iterator[Any]:
        try:
            matches = self._retrieve_matches(event, GET_MODELS)
        except InvalidQuery as exc:
            log.warning("c_get_invalid", reason=str(exc)[:200])
            yield st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
            return
        except Exception as exc:
            log.error("c_get_failed", error=type(exc).__name__, detail=str(exc)[:200])
            yield st.GET_UNABLE_TO_PROCESS, None
            return
        yield len(matches)
        yield from self._send(event, matches, "C-GET", event.assoc.requestor.ae_title)

    def on_move(self, event: evt.Event) -> Iterator[Any]:
        dest_ae = (
            (event.move_destination or b"").decode("ascii", "replace").strip()
            if isinstance(event.move_destination, bytes)
            else str(event.move_destination or "").strip()
        )
        node = self.destinations.get(dest_ae)
        if node is None:
            log.warning("c_move_unknown_destination", destination=dest_ae)
            self._audit_retrieve(event, "C-MOVE", dest_ae, [], "refused: unknown move destination", False)
            yield None, None
            return
        try:
            matches = self._retrieve_matches(event, MOVE_MODELS)
        except InvalidQuery as exc:
            log.warning("c_move_invalid", reason=str(exc)[:200])
            yield st.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, None
            return
        except Exception as exc:
            log.error("c_move_failed", error=type(exc).__name__, detail=str(exc)[:200])
            yield st.MOVE_UNABLE_TO_PROCESS, None
            return
        contexts = []
        seen: set[tuple[str, str]] = set()
        for m in matches:
            key = (m.values.get("SOPClassUID", ""), m.transfer_syntax_uid or ExplicitVRLittleEndian)
            if key in seen:
                continue
            seen.add(key)
            syntaxes = list(dict.fromkeys([key[1], ExplicitVRLittleEndian, ImplicitVRLittleEndian]))
            contexts.append(build_context(key[0], syntaxes))
        kwargs: dict[str, Any] = {
            "ae_title": node.ae_title,
            "contexts": contexts[:128],
            # pynetdicom opens the sub-association itself; guard it like our own SCUs (scu_race.py)
            # as soon as it is established (in the requesting thread, before its reactor starts).
            "evt_handlers": [(evt.EVT_ESTABLISHED, _keep_sub_association_responses)],
        }
        tls = client_tls_args(node)
        if tls is not None:
            kwargs["tls_args"] = tls
        yield node.host, node.port, kwargs
        yield len(matches)
        yield from self._send(event, matches, "C-MOVE", node.ae_title)

    # ---------------------------------------------------------------- UPS N-GET / N-ACTION
    def on_n_get(self, event: evt.Event) -> tuple[int, Dataset | None]:
        if not isinstance(event.request, N_GET):  # bound to EVT_N_GET; pynetdicom types any primitive
            return 0x0110, None
        uid = str(event.request.RequestedSOPInstanceUID)
        try:
            full = ups.get_workitem(self.db, uid, retrieve_ae=self.ae_title)
        except Exception as exc:
            log.error("ups_n_get_failed", error=type(exc).__name__, detail=str(exc)[:200])
            return st.PROCESSING_FAILURE, None
        if full is None:
            return ups.NO_SUCH_INSTANCE, None
        tags = list(event.attribute_identifiers or [])
        if not tags:
            return st.SUCCESS, full
        out = Dataset()
        out.SpecificCharacterSet = full.SpecificCharacterSet
        for tag in tags:
            if tag in full:
                out.add(full[tag])
        return st.SUCCESS, out

    def on_n_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        if not isinstance(event.request, N_ACTION):  # bound to EVT_N_ACTION; pynetdicom types any primitive
            return 0x0110, None
        uid = str(event.request.RequestedSOPInstanceUID)
        action = int(event.action_type or 0)
        if action != 1:
            return st.NO_SUCH_ACTION, None  # we support Change State only
        try:
            info = event.action_information
        except Exception:
            return st.INVALID_ARGUMENT_VALUE, None
        calling = str(event.assoc.requestor.ae_title).strip()
        result = ups.change_state(
            self.db,
            uid,
            str(info.get("ProcedureStepState", "") or ""),
            str(info.get("TransactionUID", "") or ""),
            f"AE {calling}",
        )
        log.info(
            "ups_change_state",
            status=f"0x{result.status:04X}",
            state=result.state,
            message=result.message,
            calling_ae=calling,
        )
        if result.ok:  # a state change is a person's act on the worklist: audited, like UPS-RS
            desc, objects = ups.audit_description(
                result, via="UPS N-ACTION", requested=str(result.state), ups_uid=uid, by=f"AE {calling}"
            )
            self.audit.record(
                EventCode.APPLICATION_ACTIVITY,
                outcome=AUDIT_SUCCESS,
                outcome_desc=desc,
                participants=[self._peer(event), self._us("destination")],
                objects=objects,
            )
        if result.status != st.SUCCESS:
            return result.status, None
        reply = Dataset()
        reply.ProcedureStepState = result.state
        return st.SUCCESS, reply
