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

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import ACCESS_CONTROL_DECISION, MINOR_FAILURE, SUCCESS as AUDIT_SUCCESS
from node.config import ConfigError, DicomSection, RemoteNode
from node.dimse.qr import QueryRetrieveSCP
from node.dimse.sockets import NODELAY_HANDLER
from node.dimse.tls import NodeAssociationServer, server_context
from node import metrics
from node.oplog import get_logger, study_ref
from node.store.ingest import Ingestor

log = get_logger("dimse")
# pynetdicom reads an empty require_calling_aet list as "anyone". For allowed_peers = [] we put
# one title there that no peer can send: it is longer than the 16 bytes an AE title has on the
# wire. (pynetdicom's setter would refuse it, and strips spaces both from the list and from
# received titles, so a padded valid title such as " NOBODY" would let a peer called NOBODY in.)
_NOBODY = "<allowed_peers is empty: nobody>"


@dataclass
class _StudyTally:
    patient_id: str = ""
    instances: int = 0
    duplicates: int = 0
    failures: int = 0
    sop_classes: set[str] = field(default_factory=set)


class DicomListener:
    def __init__(self, config: DicomSection, ingestor: Ingestor, audit: AuditLog,
                 move_destinations: tuple[RemoteNode, ...] | list[RemoteNode] = ()) -> None:
        self.config = config
        self.ingestor = ingestor
        self.audit = audit
        # Query/Retrieve (C-FIND, C-GET, C-MOVE) and the UPS Pull worklist over the same index.
        self.qr = QueryRetrieveSCP(config.ae_title, ingestor.db, ingestor.files.root, audit, move_destinations)
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
        ae.maximum_associations = cfg.max_associations
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
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES, scu_role=True, scp_role=True)
        ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
        self.qr.add_contexts(ae)
        return ae

    def handlers(self) -> list:  # type: ignore[type-arg]
        hs = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_finished),
            (evt.EVT_ABORTED, self._on_finished),
            (evt.EVT_CONN_CLOSE, self._on_finished),
        ]
        hs.extend(self.qr.handlers())
        if self.config.tcp_nodelay:
            hs.append(NODELAY_HANDLER)
        return hs

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        cfg = self.config
        ssl_ctx = server_context(cfg.tls) if cfg.tls.enabled else None
        NodeAssociationServer.handshake_timeout = cfg.tls.handshake_timeout_seconds
        try:
            server = self.ae.make_server((cfg.host, cfg.port), ae_title=cfg.ae_title, ssl_context=ssl_ctx,
                                         evt_handlers=self.handlers(), server_class=NodeAssociationServer)
        except OSError as exc:  # port in use, address not ours: named for the operator, no traceback
            raise ConfigError(f"dicom.host/dicom.port: cannot listen on {cfg.host}:{cfg.port} "
                              f"({exc.strerror or exc})") from None
        self._server = server  # type: ignore[assignment]
        self._thread = threading.Thread(target=server.serve_forever, name="dicom-accept", daemon=True)
        self._thread.start()
        self.ae._servers.append(server)  # so ae.shutdown() also closes it
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
            self._server.server_close()
        with self._inflight_cv:
            self._inflight_cv.wait_for(lambda: self._inflight == 0, timeout=timeout)
        for assoc in list(self.ae.active_associations):
            assoc.release()
        self.ae.shutdown()

    # ---------------------------------------------------------------- handlers
    def _on_store(self, event: evt.Event) -> int:
        with self._inflight_cv:
            self._inflight += 1
        try:
            request = event.request
            calling = event.assoc.requestor.ae_title
            outcome = self.ingestor.store(
                event.file_meta, request.DataSet.getbuffer(), calling_ae=calling,
                expected_sop_instance_uid=str(request.AffectedSOPInstanceUID),
                expected_sop_class_uid=str(request.AffectedSOPClassUID))
            key = id(event.assoc)
            with self._tally_lock:
                if outcome.header is not None:
                    tally = self._tallies[key].setdefault(outcome.header.study_instance_uid, _StudyTally())
                    tally.patient_id = outcome.header.patient_id
                    tally.sop_classes.add(outcome.header.sop_class_uid)
                    if outcome.ok:
                        tally.instances += 1
                        tally.duplicates += int(outcome.duplicate)
                    else:
                        tally.failures += 1
            if not outcome.ok:
                log.warning("c_store_refused", status=f"0x{outcome.status:04X}", reason=outcome.reason,
                            calling_ae=calling)
            return outcome.status
        finally:
            with self._inflight_cv:
                self._inflight -= 1
                self._inflight_cv.notify_all()

    def _peer(self, event: evt.Event) -> Participant:
        return Participant(user_id=event.assoc.requestor.ae_title, role="source", is_requestor=True,
                           network_address=str(event.assoc.requestor.address))

    def _us(self) -> Participant:
        return Participant(user_id=self.config.ae_title, role="destination")

    def _on_accepted(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS.labels("accepted").inc()
        self.audit.record(EventCode.SECURITY_ALERT, event_type=ACCESS_CONTROL_DECISION, outcome=AUDIT_SUCCESS,
                          outcome_desc="association accepted",
                          participants=[self._peer(event), self._us()])
        log.info("association_accepted", calling_ae=event.assoc.requestor.ae_title,
                 peer=str(event.assoc.requestor.address))

    def _on_rejected(self, event: evt.Event) -> None:
        metrics.ASSOCIATIONS.labels("rejected").inc()
        self.audit.record(EventCode.SECURITY_ALERT, event_type=ACCESS_CONTROL_DECISION, outcome=MINOR_FAILURE,
                          outcome_desc="association rejected: calling or called AE title not allowed, "
                          "or association limit reached",
                          participants=[self._peer(event), self._us()],
                          objects=[AuditObject(type="node", id=str(event.assoc.requestor.address))])
        log.warning("association_rejected", calling_ae=event.assoc.requestor.ae_title,
                    peer=str(event.assoc.requestor.address))

    def _on_finished(self, event: evt.Event) -> None:
        with self._tally_lock:
            tallies = self._tallies.pop(id(event.assoc), {})
        for study_uid, tally in tallies.items():
            self.audit.record(
                EventCode.INSTANCES_TRANSFERRED, action="C",
                outcome=AUDIT_SUCCESS if tally.failures == 0 else MINOR_FAILURE,
                outcome_desc=(f"{tally.instances} stored ({tally.duplicates} duplicates kept as first copy), "
                              f"{tally.failures} refused"),
                participants=[self._peer(event), self._us()],
                objects=[AuditObject(type="patient", id=tally.patient_id),
                         AuditObject(type="study", id=study_uid, details={
                             "instances": tally.instances, "duplicates": tally.duplicates,
                             "failures": tally.failures, "sop_classes": sorted(tally.sop_classes)})])
            log.info("instances_received", study_ref=study_ref(study_uid), instances=tally.instances,
                     duplicates=tally.duplicates, failures=tally.failures)
