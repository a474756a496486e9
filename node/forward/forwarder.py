"""The forwarder: a background thread that drains the outbox every ``forwarding.poll_seconds``.

Per round: claim due rows, group them by destination, one association per destination, record
each row as sent or failed (backoff / dead letter), count attempts and dead letters for
/metrics, and write one export audit event (110106) per destination with the studies and
instance counts of the batch.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from node import metrics
from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import MINOR_FAILURE, SUCCESS
from node.background import BackgroundLoop
from node.config import FhirDestination, ForwardDestination, Hl7Destination, Settings
from node.db.engine import Database
from node.forward.fhir import FhirError, bundle_for, post_bundle
from node.forward.hl7 import Hl7Error, message_for, send_mllp
from node.forward.outbox import (
    IN_DOUBT,
    Claimed,
    claim_due,
    destination_key,
    fhir_key,
    hl7_key,
    mark_failed,
    mark_sent,
    release,
    renew_lease,
)
from node.forward.sender import ItemResult, SendItem, destination_holds, send_batch
from node.oplog import get_logger
from node.store.read import StoredFiles

log = get_logger("forward")
BATCH_LIMIT = 200


class Forwarder:
    def __init__(self, settings: Settings, db: Database, audit: AuditLog) -> None:
        self.settings = settings
        self.policy = settings.forwarding
        self.db = db
        self.audit = audit
        self.files = StoredFiles(settings.storage.path)
        self.destinations: dict[str, ForwardDestination] = {destination_key(d): d for d in settings.forward}
        self.hl7: dict[str, Hl7Destination] = {hl7_key(d): d for d in settings.hl7}
        self.fhir: dict[str, FhirDestination] = {fhir_key(d): d for d in settings.fhir}
        self._loop = BackgroundLoop(
            "forwarder", self.run_once, interval=self.policy.poll_seconds, log=log, error_event="forward_loop_error"
        )
        # A claimed row is leased (renewed before each destination's part of the batch); after
        # this process dies the row is due again for any forwarder once the lease has run out.
        self.lease_seconds = self.policy.lease_seconds or max(60.0, self.policy.timeout_seconds * 4 + BATCH_LIMIT * 2)

    def start(self) -> None:
        self._loop.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._loop.stop(timeout)

    def run_once(self) -> bool:
        """One round over the due rows. Returns False when nothing was due."""
        claimed = claim_due(self.db, limit=BATCH_LIMIT, lease_seconds=self.lease_seconds)
        if not claimed:
            return False
        by_dest: dict[str, list[Claimed]] = defaultdict(list)
        for item in claimed:
            by_dest[item.destination].append(item)
        for key, items in by_dest.items():
            if self._loop.stopping:
                release(self.db, [i.id for i in items])  # not attempted: due again at the next start
                continue
            # heartbeat (still ours) and the in-flight mark, committed before anything is sent
            renew_lease(self.db, [i.id for i in items], self.lease_seconds, in_flight=True)
            self._forward(key, items)
        return True

    def _forward(self, key: str, items: list[Claimed]) -> None:
        dest = self.destinations.get(key)
        held: set[int] = set()
        if key in self.hl7 or key in self.fhir:
            results = [self._message(key, i) for i in items]
        elif dest is None:
            results = [ItemResult(i.id, False, None, f"destination {key} is no longer configured") for i in items]
        else:
            calling = dest.calling_ae_title or self.settings.dicom.ae_title
            held = self._already_delivered(dest, calling, [i for i in items if i.in_doubt])
            results = [ItemResult(i.id, True, None) for i in items if i.id in held]
            results += send_batch(
                dest,
                [SendItem(i.id, self.files.path(i.path)) for i in items if i.id not in held],
                calling_ae=calling,
                timeout=self.policy.timeout_seconds,
            )
        sent = [r.key for r in results if r.ok]
        failures = {r.key: r.error or "failed" for r in results if not r.ok}
        if dest is not None:  # no definite answer: the destination may hold it; check before resending
            doubtful = {i.id for i in items if i.in_doubt}
            for r in results:
                if not r.ok and r.status is None and (r.key in doubtful or r.error.startswith("no C-STORE response")):
                    failures[r.key] = IN_DOUBT + failures[r.key].removeprefix(IN_DOUBT)
        # The export audit event is appended before the rows are marked sent: a process killed in
        # between leaves the rows in flight, so the next attempt checks the destination (C-FIND)
        # and records the delivery again, marked as confirmed. Marking first could lose the record.
        dead = mark_failed(self.db, failures, self.policy)
        metrics.FORWARD_ATTEMPTS.labels(key, "success").inc(len(sent))
        if failures:
            metrics.FORWARD_ATTEMPTS.labels(key, "failure").inc(len(failures))
        if dead:
            metrics.FORWARD_DEAD_LETTERS.labels(key).inc(len(dead))
        by_id = {i.id: i for i in items}
        self._audit(key, dest, items, sent, failures, dead, confirmed=len(held) if dest is not None else 0)
        mark_sent(self.db, sent)
        log.info(
            "forward_batch",
            destination=key,
            sent=len(sent),
            failed=len(failures),
            dead=len(dead),
            first_error=next(iter(failures.values()), "")[:200],
        )
        for item_id in dead:
            log.warning(
                "forward_dead_letter",
                destination=key,
                outbox_id=item_id,
                kind=by_id[item_id].kind,
                error=failures[item_id][:200],
            )

    def _already_delivered(self, dest: ForwardDestination, calling: str, in_doubt: list[Claimed]) -> set[int]:
        """Ids of in-doubt rows the destination already holds (C-FIND): not sent again."""
        if not in_doubt:
            return set()
        held = destination_holds(
            dest,
            {i.id: self.files.path(i.path) for i in in_doubt},
            calling_ae=calling,
            timeout=self.policy.timeout_seconds,
        )
        log.info("forward_in_doubt", destination=destination_key(dest), rows=len(in_doubt), already_held=len(held))
        return held

    def _message(self, key: str, item: Claimed) -> ItemResult:
        """One HL7 or FHIR message, built from the stored SR and delivered (ACK AA/CA, or HTTP 2xx)."""
        sr_path = str(self.files.path(item.path))
        try:
            if key in self.hl7:
                control_id = f"TN{item.id}"
                send_mllp(
                    self.hl7[key], message_for(item.kind, sr_path, self.hl7[key], control_id), control_id=control_id
                )
            else:
                post_bundle(self.fhir[key], bundle_for(sr_path))
        except (Hl7Error, FhirError, OSError) as exc:
            return ItemResult(item.id, False, None, f"{type(exc).__name__}: {exc}"[:500])
        except Exception as exc:  # a message that cannot be built: retried, then a dead letter with the reason
            return ItemResult(item.id, False, None, f"cannot build the message: {type(exc).__name__}: {exc}"[:500])
        return ItemResult(item.id, True, None)

    def _audit(
        self,
        key: str,
        dest: ForwardDestination | None,
        items: list[Claimed],
        sent: list[int],
        failures: dict[int, str],
        dead: list[int],
        *,
        confirmed: int = 0,
    ) -> None:
        sent_set = set(sent)
        per_study_sent: Counter[str] = Counter(i.study_instance_uid for i in items if i.id in sent_set)
        per_study_all: Counter[str] = Counter(i.study_instance_uid for i in items)
        outcome = SUCCESS if not failures else MINOR_FAILURE
        desc = f"forwarded {len(sent)}/{len(items)} instances to {key}"
        if confirmed:
            desc += (
                f" ({confirmed} already held by the destination, confirmed by C-FIND after an attempt "
                "whose answer was not recorded; an earlier export event may name them too)"
            )
        if failures:
            desc += f"; {len(failures)} failed ({len(dead)} dead letters): {next(iter(failures.values()))[:200]}"
        participants = [
            Participant(
                user_id=(dest.calling_ae_title if dest and dest.calling_ae_title else self.settings.dicom.ae_title),
                role="source",
                is_requestor=True,
            ),
            Participant(
                user_id=dest.ae_title if dest else key.split("@", 1)[0],
                role="destination",
                network_address=f"{dest.host}:{dest.port}" if dest else key.split("@", 1)[-1],
            ),
        ]
        if key in self.hl7 or key in self.fhir:  # a RIS or FHIR server: named by its address
            participants[1] = Participant(user_id=key, role="destination", network_address=key.split(":", 1)[1])
        objects = [
            AuditObject(
                type="study",
                id=uid,
                details={
                    "instances": per_study_sent.get(uid, 0),
                    "attempted": n,
                    "sr": sum(1 for i in items if i.study_instance_uid == uid and i.kind == "sr" and i.id in sent_set),
                },
            )
            for uid, n in per_study_all.items()
        ]
        self.audit.record(
            EventCode.EXPORT, action="R", outcome=outcome, outcome_desc=desc, participants=participants, objects=objects
        )


__all__ = ["Forwarder"]
