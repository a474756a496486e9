"""`triage-node serve`: one process running the DICOM listener, the stability timer and the
triage worker, with a clean shutdown (stop accepting, finish in-flight stores, exit).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from apscheduler.schedulers.background import BackgroundScheduler

from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import APPLICATION_START, APPLICATION_STOP, SOFTWARE_CONFIGURATION
from node.config import Settings
from node.db.engine import Database
from node.dimse.server import DicomListener
from node import metrics
from node.oplog import get_logger, study_ref
from node.stability.tick import queue_stable_studies
from node.store.files import FileStore
from node.store.ingest import Ingestor, reindex_file
from node.store.index import instance_exists

log = get_logger("service")
RUNNING_MARKER = ".running"


class Node:
    """All long-lived parts of one node process, wired from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.node.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.db = Database(settings.database.url, settings.database.echo)
        self.audit = AuditLog(settings.audit.path, self.db, source_id=settings.audit.source_id,
                              fsync=settings.audit.fsync)
        self.files = FileStore(settings.storage.path, fsync=settings.storage.fsync)
        self.ingestor = Ingestor(self.db, self.files, max_dataset_bytes=settings.storage.max_dataset_bytes,
                                 min_free_bytes=settings.storage.min_free_bytes)
        self.listener = DicomListener(settings.dicom, self.ingestor, self.audit,
                                      move_destinations=(*settings.move_destinations, *settings.forward))
        self.worker = None
        if settings.triage.enabled:
            from node.triage.worker import TriageWorker  # torch is imported only when triage is on

            self.worker = TriageWorker(settings, self.db, self.ingestor, self.audit)
        self.forwarder = None
        if settings.forward:
            from node.forward.forwarder import Forwarder

            self.forwarder = Forwarder(settings, self.db, self.audit)
        self.http = None  # node.dicomweb.app.HttpServer while serving
        from node.drift.watch import DriftWatch
        from node.search.service import SearchIndexes

        self.search = SearchIndexes(self.db, self.data_dir, settings.search)  # GET /search, refreshed below
        self.drift = DriftWatch(settings, self.db, self.audit, self.embedding_space)
        self.scheduler = BackgroundScheduler(timezone="UTC")
        self._stopped = threading.Event()
        self.calibration_warnings: list[str] = []
        self._me = Participant(user_id=settings.dicom.ae_title, role="application")

    # ------------------------------------------------------------------ start / stop
    def start(self) -> None:
        self.audit.record(EventCode.APPLICATION_ACTIVITY, event_type=SOFTWARE_CONFIGURATION,
                          outcome_desc=f"configuration loaded from {self.settings.source}",
                          participants=[self._me])
        self.recover()
        self.listener.start()
        if self.settings.http.enabled:
            from node.dicomweb.app import HttpServer  # fastapi/uvicorn only when HTTP is on

            self.http = HttpServer(self)
            self.http.start()
        self.scheduler.add_job(self.tick, "interval", seconds=self.settings.stability.tick_seconds,
                               id="stability", max_instances=1, coalesce=True)
        self.scheduler.add_job(self.refresh_search, "interval", seconds=self.settings.search.refresh_seconds,
                               id="search", max_instances=1, coalesce=True)
        if self.settings.drift.enabled:
            self.scheduler.add_job(self.drift.run, "interval", seconds=self.settings.drift.interval_seconds,
                                   id="drift", max_instances=1, coalesce=True)
        self.tick()  # studies whose quiet period ended while we were down
        self.scheduler.start()
        if self.worker is not None:
            self._warn_uncalibrated()
            self.worker.start()
        if self.forwarder is not None:
            self.forwarder.start()
        (self.data_dir / RUNNING_MARKER).write_text(str(os.getpid()))
        self.audit.record(EventCode.APPLICATION_ACTIVITY, event_type=APPLICATION_START,
                          outcome_desc="triage-node started", participants=[self._me])

    def _warn_uncalibrated(self) -> None:
        """Placeholder thresholds are worth a warning at every start (issue 13)."""
        from node.triage.calibration import startup_warnings

        self.calibration_warnings = startup_warnings(self.settings, self.worker.profiles)  # type: ignore[union-attr]
        for text in self.calibration_warnings:
            log.warning("profile_not_calibrated", detail=text)

    @property
    def http_port(self) -> int | None:
        """The bound HTTP port (useful with [http] port = 0), None when HTTP is off."""
        return self.http.port if self.http is not None else None

    def recover(self) -> None:
        """After an unclean stop: drop temp files, index renamed-but-unindexed files."""
        removed = self.files.clear_incoming()
        unclean = (self.data_dir / RUNNING_MARKER).exists()
        reindexed = 0
        if unclean:
            with self.db.session() as session:
                for rel in self.files.iter_files():
                    sop_uid = rel.stem
                    if not instance_exists(session, sop_uid) and reindex_file(self.db, self.files, rel):
                        reindexed += 1
        log.info("recovery", unclean_stop=unclean, temp_files_removed=removed, files_reindexed=reindexed)

    def embedding_space(self) -> tuple[str | None, list[str]]:
        """The current weights (the loaded model's, else the configured checkpoint's) and the profiles'
        preprocessing versions: what search and drift compare within."""
        from node.embeddings.current import current_weights_sha256, profile_preprocessing_versions

        model = getattr(self.worker, "model", None)
        weights = model.identity.weights_sha256 if model is not None else current_weights_sha256(self.settings, self.db)
        return weights, profile_preprocessing_versions(self.settings)

    def refresh_search(self) -> None:
        """Add newly kept embeddings to the search index (built, or loaded from disk, at the first run)."""
        try:
            weights, versions = self.embedding_space()
            if weights:
                self.search.refresh([(weights, v) for v in versions])
        except Exception as exc:  # noqa: BLE001 - the schedule must survive a database hiccup
            log.error("search_refresh_failed", error=type(exc).__name__, detail=str(exc)[:200])

    def tick(self) -> None:
        try:
            for job in queue_stable_studies(self.db, self.settings.stability.quiet_seconds):
                metrics.STUDIES_STABLE.inc()
                self.audit.record(EventCode.APPLICATION_ACTIVITY, outcome_desc="triage job queued",
                                  participants=[self._me],
                                  objects=[AuditObject(type="study", id=job.study_instance_uid,
                                                       details={"job_id": job.job_id,
                                                                "instances": job.instance_count})])
                log.info("job_queued", job_id=job.job_id, study_ref=study_ref(job.study_instance_uid))
        except Exception as exc:  # the timer must survive a database hiccup
            log.error("stability_tick_failed", error=type(exc).__name__, detail=str(exc)[:200])

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        log.info("stopping")
        if self.http is not None:
            self.http.stop()
        self.listener.stop()
        self.scheduler.shutdown(wait=True)
        if self.worker is not None:
            self.worker.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        self.audit.record(EventCode.APPLICATION_ACTIVITY, event_type=APPLICATION_STOP,
                          outcome_desc="triage-node stopped", participants=[self._me])
        (self.data_dir / RUNNING_MARKER).unlink(missing_ok=True)
        self.audit.close()
        self.db.dispose()

    def serve_forever(self) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        print(f"triage-node listening as {self.settings.dicom.ae_title} on "
              f"{self.settings.dicom.host}:{self.listener.port}"
              + (f", HTTP on {self.settings.http.host}:{self.http_port}" if self.http else "")
              + "; Ctrl-C to stop", flush=True)
        if self.http is not None:
            from node.console import console_url

            print(f"operator console: {console_url(self.settings.http.host, self.http_port)}", flush=True)
        for text in self.calibration_warnings:
            print(f"WARNING {text} (see README, 'Tune it on your data')", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        self.stop()
