"""The node's DICOM listener: Verification + Storage SCP for every storage SOP class and
transfer syntax pydicom knows, with peer checks, limits and audit; plus Query/Retrieve
(C-FIND, C-GET, C-MOVE) and the UPS Pull worklist, whose handlers live in node/dimse/qr.py.

Handlers run in the association's thread; each C-STORE returns only after store.ingest has
made the instance durable and indexed. Instances received are audited once per association
and study (110104) when the association ends, not once per instance.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass, field

from pydicom._uid_dict import UID_dictionary
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import Verification, register_uid, uid_to_service_class  # type: ignore[attr-defined]

from node import metrics
from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import ACCESS_CONTROL_DECISION, MINOR_FAILURE
from node.audit.events import SUCCESS as AUDIT_SUCCESS
from node.audit.refusals import RefusalLedger
from node.config import ConfigError, DicomSection, RemoteNode
from node.dimse import status as dimse_status
from node.dimse.gate import GateLimits, NodeAssociationServer
from node.dimse.pdu_guard import PDU_HEADER, GuardLimits
from node.dimse.qr import QueryRetrieveSCP
from node.dimse.tls import server_context
from node.oplog import get_logger, study_ref
from node.store.ingest import CANNOT_UNDERSTAND, DATASET_TOO_LARGE, Ingestor, IngestOutcome

log = get_logger("dimse")
# pynetdicom reads an empty require_calling_aet list as "anyone". For allowed_peers = [] we put
# one title there that no peer can send: it is longer than the 16 bytes an AE title has on the
# wire. (pynetdicom's setter would refuse it, and strips spaces both from the list and from
# received titles, so a padded valid title such as " NOBODY" would let a peer called NOBODY in.)
_NOBODY = "<allowed_peers is empty: nobody>"
UNPARSED = ""  # tally key of refusals whose data set gave no Study Instance UID


def storage_sop_classes() -> list[str]:
    """Every storage SOP class pydicom knows, retired ones included (old modalities still send
    e.g. the retired Ultrasound Image Storage 1.2.840.10008.5.1.4.1.1.6), plus pynetdicom's list.

    The ones pynetdicom does not list are registered with its Storage service class (else it
    aborts the association on the first C-STORE: "No supported service class available").
    """
    known = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    uids = set(known)
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if kind != "SOP Class" or "Storage" not in name or "Commitment" in name:
            continue
        uids.add(uid)
        if uid not in known and uid_to_service_class(uid) is not StorageServiceClass:
            register_uid(uid, f"TriageNode{keyword or 'Storage' + uid.replace('.', '_')}", StorageServiceClass)
    return sorted(uids)


@dataclass
class _StudyTally:
    patient_id: str = ""
    instances: int = 0
    duplicates: int = 0
    failures: int = 0
    sop_classes: set[str] = field(default_factory=set)
    statuses: dict[str, int] = field(default_factory=dict)  # failure status -> count


class DicomListener:
    def __init__(
        self,
        config: DicomSection,
        ingestor: Ingestor,
        audit: AuditLog,
        move_destinations: tuple[RemoteNode, ...] | list[RemoteNode] = (),
        refusals: RefusalLedger | None = None,
    ) -> None:
        self.config = config
        self.ingestor = ingestor
        self.audit = audit
        self.refusals = refusals or RefusalLedger(audit, node_ae=config.ae_title)
        # Query/Retrieve (C-FIND, C-GET, C-MOVE) and the UPS Pull worklist over the same index.
        self.qr = QueryRetrieveSCP(config.ae_title, ingestor.db, ingestor.files, audit, move_destinations)
        self.ae = self._build_ae()
        self._server: NodeAssociationServer | None = None
        self._tallies: dict[int, dict[str, _StudyTally]] = defaultdict(dict)
        self._tally_lock = threading.Lock()
        self._inflight = 0
        self._inflight_cv = threading.Condition()
        self.stopping = False

    def _build_ae(self) -> AE:
        cfg = self.config
        ae = AE(ae_title=cfg.ae_title)
        # The accept gate (node/dimse/gate.py) enforces max_associations on established peers;
        # pynetdicom's own count (every Association thread, ours as SCU included) is a backstop.
        ae.maximum_associations = cfg.max_associations * 2 + 16
        ae.maximum_pdu_size = cfg.max_pdu_bytes
        ae.acse_timeout = cfg.acse_timeout_seconds
        ae.dimse_timeout = cfg.dimse_timeout_seconds
        ae.network_timeout = cfg.network_timeout_seconds
        ae.require_called_aet = cfg.check_called_ae
        if "*" not in cfg.allowed_peers:
            if cfg.allowed_peers:
                ae.require_calling_aet = list(cfg.allowed_peers)
            else:
                ae._require_calling_aet = [_NOBODY]  # bypasses the setter's 16-character check
        # Storage: we are the SCP for C-STORE, and the SCU of C-GET sub-operations on the same
        # association; accepting both roles (SCP/SCU Role Selection) keeps plain senders on the
        # default roles and lets getscu-style peers act as Storage SCP.
        for uid in storage_sop_classes():
            ae.add_supported_context(uid, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        self.qr.add_contexts(ae)
        return ae

    def handlers(self) -> list:
        hs = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: dimse_status.SUCCESS),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_finished),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_finished),
        ]
        hs.extend(self.qr.handlers())
        return hs

    def limits(self) -> GateLimits:
        cfg = self.config
        handshake = cfg.handshake_timeout_seconds
        if cfg.tls.enabled:
            handshake = min(handshake, cfg.tls.handshake_timeout_seconds)
        max_dataset = self.ingestor.max_dataset_bytes
        # 0 = "unlimited" PDUs: still no PDU larger than one data set plus its headers.
        max_pdu = cfg.max_pdu_bytes if cfg.max_pdu_bytes else max_dataset + 64 * 1024
        return GateLimits(
            max_associations=cfg.max_associations,
            max_pending=cfg.max_pending_connections,
            handshake_seconds=handshake,
            tcp_nodelay=cfg.tcp_nodelay,
            guard=GuardLimits(
                max_pdu_length=max_pdu + PDU_HEADER,
                pdu_deadline_seconds=cfg.network_timeout_seconds,
                max_dataset_bytes=max_dataset,
            ),
        )

    def active_associations(self) -> int:
        return self._server.active_count() if self._server is not None else 0

    def pending_connections(self) -> int:
        return self._server.pending_count() if self._server is not None else 0

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        cfg = self.config
        ssl_ctx = server_context(cfg.tls) if cfg.tls.enabled else None
        try:
            server = self.ae.make_server(
                (cfg.host, cfg.port),
                ae_title=cfg.ae_title,
                ssl_context=ssl_ctx,
                evt_handlers=self.handlers(),
                server_class=NodeAssociationServer,
                limits=self.limits(),
                on_refusal=self._on_gate_refusal,
            )
        except OSError as exc:  # port in use, address not ours: named for the operator, no traceback
            raise ConfigError(
                f"dicom.host/dicom.port: cannot listen on {cfg.host}:{cfg.port} ({exc.strerror or exc})"
            ) from None
        self._server = server  # type: ignore[assignment]
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
        self._thread.start()
        self.ae._servers.append(server)  # so ae.shutdown() also closes it
        metrics.ASSOCIATIONS_ACTIVE.set_function(self.active_associations)
        metrics.CONNECTIONS_PENDING.set_function(self.pending_connections)
        log.info("dicom_listening", host=cfg.host, port=self.port, ae_title=cfg.ae_title, tls=cfg.tls.enabled)

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.server_address[1])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting, let in-flight C-STOREs finish (they end with a durable file), then close."""
        self.stopping = True
        if self._server is not None:
            self._server.shutdown()
        with self._inflight_cv:
            self._inflight_cv.wait_for(lambda: self._inflight == 0, timeout=timeout)
        for assoc in list(self.ae.active_associations):
            assoc.release()
        self.ae.shutdown()
        self.refusals.flush()

    # ---------------------------------------------------------------- handlers
    def _on_store(self, event: evt.Event) -> int:
        with self._inflight_cv:
            self._inflight += 1
        try:
            request = event.request
            calling = event.assoc.requestor.ae_title
            cut = getattr(event.assoc.dul.socket, "take_oversized", lambda: None)()
            if cut is not None:  # the PDU guard stopped buffering this data set at the limit
                outcome = IngestOutcome(DATASET_TOO_LARGE, f"data set of more than {cut} bytes exceeds the limit")
                self.ingestor.count(outcome)
            elif not isinstance(request, C_STORE) or request.DataSet is None:  # pynetdicom types any primitive
                outcome = IngestOutcome(CANNOT_UNDERSTAND, "C-STORE request without a data set")
                self.ingestor.count(outcome)
            else:
                outcome = self.ingestor.store(
                    event.file_meta,
                    request.DataSet,
                    calling_ae=calling,
                    expected_sop_instance_uid=str(request.AffectedSOPInstanceUID),
                    expected_sop_class_uid=str(request.AffectedSOPClassUID),
                )
            key = id(event.assoc)
            with self._tally_lock:
                study = outcome.header.study_instance_uid if outcome.header is not None else UNPARSED
                tally = self._tallies[key].setdefault(study, _StudyTally())
                if outcome.header is not None:
                    tally.patient_id = outcome.header.patient_id
                    tally.sop_classes.add(outcome.header.sop_class_uid)
                if outcome.ok:
                    tally.instances += 1
                    tally.duplicates += int(outcome.duplicate)
                else:
                    tally.failures += 1
                    code = f"0x{outcome.status:04X}"
                    tally.statuses[code] = tally.statuses.get(code, 0) + 1
            if not outcome.ok:
                log.warning(
                    "c_store_refused", status=f"0x{outcome.status:04X}", reason=outcome.reason, calling_ae=calling
                )
            return outcome.status
        finally:
            with self._inflight_cv:
                self._inflight -= 1
                self._inflight_cv.notify_all()

    def _peer(self, event: evt.Event) -> Participant:
        return Participant(
            user_id=event.assoc.requestor.ae_title,
            role="source",
            is_requestor=True,
            network_address=str(event.assoc.requestor.address),
        )

    def _us(self) -> Participant:
        return Participant(user_id=self.config.ae_title, role="destination")

    def _on_accepted(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS.labels("accepted").inc()
        self.audit.record(
            EventCode.SECURITY_ALERT,
            event_type=ACCESS_CONTROL_DECISION,
            outcome=AUDIT_SUCCESS,
            outcome_desc="association accepted",
            participants=[self._peer(event), self._us()],
        )
        log.info(
            "association_accepted", calling_ae=event.assoc.requestor.ae_title, peer=str(event.assoc.requestor.address)
        )

    def _on_rejected(self, event: evt.Event) -> None:
        """AE title refused (or pynetdicom's own limit): audited through the ledger, so a peer
        that retries with a wrong title thousands of times writes two lines a minute, not thousands."""
        metrics.ASSOCIATIONS.labels("rejected").inc()
        calling = event.assoc.requestor.ae_title
        host = str(event.assoc.requestor.address)
        primitive = event.assoc.requestor.primitive
        called = str(primitive.called_ae_title) if primitive is not None else ""
        reason = self._rejection_reason(calling, called)
        if self.refusals.note("association_rejected", host, reason, user=calling):
            log.warning("association_rejected", calling_ae=calling, called_ae=called, peer=host, reason=reason)

    def _rejection_reason(self, calling: str, called: str) -> str:
        """Which rule refused the association, in the words of the setting to change.

        pynetdicom rejects for the calling AE title (``require_calling_aet``), the called AE title
        (``require_called_aet``) and its own association limit, in that order; the same checks
        here name which one applied (the operator fixes a config key, not a guess)."""
        cfg = self.config
        reasons = []
        if "*" not in cfg.allowed_peers and calling.strip() not in cfg.allowed_peers:
            reasons.append(
                f"calling AE title {calling.strip()!r} is not in dicom.allowed_peers"
                if cfg.allowed_peers
                else "dicom.allowed_peers is empty: no calling AE title is allowed"
            )
        if cfg.check_called_ae and called.strip() != cfg.ae_title:
            reasons.append(
                f"called AE title {called.strip()!r} is not this node's ({cfg.ae_title!r}; dicom.check_called_ae)"
            )
        return "; ".join(reasons) or "association limit reached (local limit exceeded)"

    def _on_gate_refusal(self, kind: str, host: str, detail: str) -> None:
        metrics.ASSOCIATIONS.labels(kind.removeprefix("association_")).inc()
        if self.refusals.note(kind, host, detail):  # the operational log gets the first of a window
            log.warning(kind, detail=detail)

    def _on_aborted(self, event: evt.Event) -> None:
        reason = getattr(event.assoc.dul.socket, "refusal", None)
        if reason is None:  # a guard refusal was already noted by the gate's callback
            self.refusals.note(
                "association_aborted",
                str(event.assoc.requestor.address),
                "association aborted",
                user=event.assoc.requestor.ae_title,
            )
        self._on_finished(event)

    def _on_finished(self, event: evt.Event) -> None:
        with self._tally_lock:
            tallies = self._tallies.pop(id(event.assoc), {})
        for study_uid, tally in tallies.items():
            details = {
                "instances": tally.instances,
                "duplicates": tally.duplicates,
                "failures": tally.failures,
                "sop_classes": sorted(tally.sop_classes),
            }
            if tally.statuses:
                details["failure_statuses"] = dict(sorted(tally.statuses.items()))
            objects = [AuditObject(type="study", id=study_uid or "unreadable data set", details=details)]
            if study_uid:
                objects.insert(0, AuditObject(type="patient", id=tally.patient_id))
            self.audit.record(
                EventCode.INSTANCES_TRANSFERRED,
                action="C",
                outcome=AUDIT_SUCCESS if tally.failures == 0 else MINOR_FAILURE,
                outcome_desc=(
                    f"{tally.instances} stored ({tally.duplicates} duplicates kept as first copy), "
                    f"{tally.failures} refused"
                    + (
                        f" ({', '.join(f'{k} x{v}' for k, v in sorted(tally.statuses.items()))})"
                        if tally.statuses
                        else ""
                    )
                ),
                participants=[self._peer(event), self._us()],
                objects=objects,
            )
            if not study_uid:
                continue
            log.info(
                "instances_received",
                study_ref=study_ref(study_uid),
                instances=tally.instances,
                duplicates=tally.duplicates,
                failures=tally.failures,
            )
