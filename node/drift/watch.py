"""The node's background drift job (APScheduler, ``[drift] interval_seconds``; never on the
C-STORE path): compute every stream's report, publish Prometheus gauges, and record alert
transitions -- one audit event and one log line per stream when its alert is raised, and again
when it clears; a stream seen for the first time is announced the same way, once.

The alert state lives in the ``drift_stream`` table, so a restart does not re-announce an alert
that is still standing.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

from node import metrics
from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import MINOR_FAILURE, SUCCESS
from node.config import Settings
from node.db.engine import Database
from node.drift.report import StreamReport, drift_report
from node.drift.streams import record_alert
from node.oplog import get_logger

__all__ = ["DRIFT_ALERT", "DRIFT_EMBEDDING_SHIFT", "DRIFT_P_VALUE", "DRIFT_SCORE_SHIFT", "DriftWatch"]

log = get_logger("drift")

DRIFT_ALERT = Gauge(
    "triage_node_drift_alert", "1 while a drift stream's alert is raised", ["stream"], registry=metrics.REGISTRY
)
DRIFT_EMBEDDING_SHIFT = Gauge(
    "triage_node_drift_embedding_shift",
    "MMD^2 of recent vs reference embeddings",
    ["stream"],
    registry=metrics.REGISTRY,
)
DRIFT_P_VALUE = Gauge(
    "triage_node_drift_p_value", "Permutation p-value of the embedding shift", ["stream"], registry=metrics.REGISTRY
)
DRIFT_SCORE_SHIFT = Gauge(
    "triage_node_drift_score_shift",
    "KS statistic of recent vs reference study scores",
    ["stream", "finding"],
    registry=metrics.REGISTRY,
)
DRIFT_NO_ASSIST = Gauge(
    "triage_node_drift_no_assist_rate", "No-assist rate per window", ["stream", "window"], registry=metrics.REGISTRY
)
DRIFT_RUNS = Counter("triage_node_drift_runs", "Background drift computations completed", registry=metrics.REGISTRY)
DRIFT_IMAGES = Gauge(
    "triage_node_drift_images", "Images per drift window", ["stream", "window"], registry=metrics.REGISTRY
)


class DriftWatch:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        audit: AuditLog | None,
        space: Callable[[], tuple[str | None, list[str]]],
    ) -> None:
        self.settings = settings
        self.db = db
        self.audit = audit
        self.space = space  # -> (current weights sha256, preprocessing versions)
        self._me = Participant(user_id=settings.dicom.ae_title, role="application")

    def run(self) -> list[StreamReport]:
        """One pass; never raises (the schedule must survive a database hiccup)."""
        try:
            weights, versions = self.space()
            reports = drift_report(self.settings, self.db, weights, versions)
            for report in reports:
                self._publish(report)
                self._transition(report, weights)  # type: ignore[arg-type]
            DRIFT_RUNS.inc()
            return reports
        except Exception as exc:
            log.error("drift_run_failed", error=type(exc).__name__, detail=str(exc)[:300])
            return []

    def _publish(self, r: StreamReport) -> None:
        DRIFT_ALERT.labels(r.key).set(1 if r.alert else 0)
        DRIFT_IMAGES.labels(r.key, "reference").set(r.n_reference)
        DRIFT_IMAGES.labels(r.key, "recent").set(r.n_recent)
        if r.embedding_shift is not None:
            DRIFT_EMBEDDING_SHIFT.labels(r.key).set(r.embedding_shift)
            DRIFT_P_VALUE.labels(r.key).set(r.p_value if r.p_value is not None else 1.0)
        for finding, stat in r.score_shift.items():
            DRIFT_SCORE_SHIFT.labels(r.key, finding).set(stat)
        for window, rate in r.no_assist_rate.items():
            if rate is not None:
                DRIFT_NO_ASSIST.labels(r.key, window).set(rate)

    def _transition(self, r: StreamReport, weights: str) -> None:
        now = datetime.now(UTC)
        announce: list[tuple[str, int]] = []
        with self.db.write() as session:
            change = record_alert(
                session, r.key, weights, r.preprocessing_version, alert=r.alert, reasons="; ".join(r.reasons), now=now
            )
        if change.created:
            announce.append(("new drift stream", SUCCESS))
        if change.changed:
            announce.append(
                ("drift alert raised" if r.alert else "drift alert cleared", MINOR_FAILURE if r.alert else SUCCESS)
            )
        for what, outcome in announce:
            fields = {
                "stream": r.key,
                "n_reference": r.n_reference,
                "n_recent": r.n_recent,
                "p_value": r.p_value,
                "reasons": r.reasons[:10],
            }
            if outcome == MINOR_FAILURE:
                log.warning(what.replace(" ", "_"), **fields)
            else:
                log.info(what.replace(" ", "_"), **fields)
            if self.audit is not None:
                self.audit.record(
                    EventCode.APPLICATION_ACTIVITY,
                    outcome=outcome,
                    outcome_desc=f"{what}: {r.key}",
                    participants=[self._me],
                    objects=[
                        AuditObject(
                            type="drift-stream",
                            id=r.key,
                            details={
                                "preprocessing_version": r.preprocessing_version,
                                "weights_sha256": weights,
                                **fields,
                            },
                        )
                    ],
                )
