"""`triage-node serve`: one process running the roles named in ``[node] roles`` (default all:
DICOM listener, HTTP, stability timer, triage worker, forwarder), with a clean shutdown (stop
accepting, finish in-flight stores, exit).

Scaling out: several processes, on one host or several, share one PostgreSQL and one storage
path and split the roles. Everything they coordinate on lives in the database (the stability
clock per study, job and outbox claims with leases, one audit head row per audit file), so a
process holds no state another one needs; imports follow the roles, so a receive-only process
never loads torch and a process without "receive" opens no DICOM port.
"""

from __future__ import annotations

import fcntl
import os
import signal
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING

from apscheduler.schedulers.background import BackgroundScheduler

from node import metrics
from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import APPLICATION_START, APPLICATION_STOP, SOFTWARE_CONFIGURATION
from node.audit.log import AuditLogBusy
from node.audit.refusals import RefusalLedger
from node.config import ConfigError, Settings
from node.db.engine import Database
from node.oplog import get_logger, study_ref
from node.stability.tick import queue_stable_studies
from node.store.files import FileStore
from node.store.index import instance_exists
from node.store.ingest import Ingestor, reindex_file

if TYPE_CHECKING:
    from node.dicomweb.app import HttpServer
    from node.dimse.server import DicomListener

log = get_logger("service")
RUNNING_MARKER = ".running"
LOCK_FILE = ".lock"
REFUSAL_WINDOW_SECONDS = 60.0


def lock_data_dir(data_dir: Path) -> IO[str]:
    """Take the data dir for this process (flock, released by the kernel when the process dies).

    Why first: a second `serve` on the same data dir used to append to the live node's audit
    file and run crash recovery, deleting the live node's in-flight temp files, before failing
    to bind. Now it stops here, having written nothing but (maybe) an empty lock file.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise ConfigError(
            f"node.data_dir: {data_dir} is in use by another triage-node"
            + (f" (pid {holder})" if holder else "")
            + "; nothing was written"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


class Node:
    """All long-lived parts of one node process, wired from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.data_dir = Path(settings.node.data_dir)
        self._lock = lock_data_dir(self.data_dir)
        try:
            self.db = Database(
                settings.database.url, settings.database.echo, sqlite_synchronous=settings.database.sqlite_synchronous
            )
            self.audit = AuditLog(
                settings.audit.path, self.db, source_id=settings.audit.source_id, fsync=settings.audit.fsync
            )
        except AuditLogBusy as exc:
            self._lock.close()
            raise ConfigError(str(exc)) from None
        except BaseException:
            self._lock.close()
            raise
        self.refusals = RefusalLedger(
            self.audit, node_ae=settings.dicom.ae_title, window_seconds=REFUSAL_WINDOW_SECONDS
        )
        self.roles = settings.node.roles
        self.process_id = settings.node.process_id()
        self.files = FileStore(settings.storage.path, fsync=settings.storage.fsync, owner=self.process_id)
        self.ingestor = Ingestor(
            self.db,
            self.files,
            max_dataset_bytes=settings.storage.max_dataset_bytes,
            min_free_bytes=settings.storage.min_free_bytes,
        )
        self.listener: DicomListener | None = None
        if "receive" in self.roles:
            from node.dimse.server import DicomListener  # pynetdicom only where DICOM is served

            self.listener = DicomListener(
                settings.dicom,
                self.ingestor,
                self.audit,
                move_destinations=(*settings.move_destinations, *settings.forward),
                refusals=self.refusals,
            )
        self.worker = None
        if settings.triage.enabled and "triage" in self.roles:
            from node.triage.worker import TriageWorker  # torch is imported only when triage is on

            self.worker = TriageWorker(settings, self.db, self.ingestor, self.audit)
        self.forwarder = None
        if (settings.forward or settings.hl7 or settings.fhir) and "forward" in self.roles:
            from node.forward.forwarder import Forwarder

            self.forwarder = Forwarder(settings, self.db, self.audit)
        self.http: HttpServer | None = None  # while serving
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
        self.audit.record(
            EventCode.APPLICATION_ACTIVITY,
            event_type=SOFTWARE_CONFIGURATION,
            outcome_desc=f"configuration loaded from {self.settings.source}",
            participants=[self._me],
        )
        self.warn_below_floor()
        self.recover()
        if self.listener is not None:
            try:
                self.listener.start()
            except BaseException:
                self.release()  # a node that could not start leaves the data dir to the next try
                raise
        if self.settings.http.enabled and "http" in self.roles:
            from node.dicomweb.app import HttpServer  # fastapi/uvicorn only when HTTP is on

            self.http = HttpServer(self)
            self.http.start()
        if "receive" in self.roles:
            self.scheduler.add_job(
                self.refusals.flush,
                "interval",
                seconds=REFUSAL_WINDOW_SECONDS,
                id="refusal-summaries",
                max_instances=1,
                coalesce=True,
            )
        if "http" in self.roles:  # the search index serves GET /search
            self.scheduler.add_job(
                self.refresh_search,
                "interval",
                seconds=self.settings.search.refresh_seconds,
                id="search",
                max_instances=1,
                coalesce=True,
            )
        if "stability" in self.roles:
            self.scheduler.add_job(
                self.tick,
                "interval",
                seconds=self.settings.stability.tick_seconds,
                id="stability",
                max_instances=1,
                coalesce=True,
            )
            if self.settings.drift.enabled:  # one drift watcher per deployment: the stability role's
                self.scheduler.add_job(
                    self.drift.run,
                    "interval",
                    seconds=self.settings.drift.interval_seconds,
                    id="drift",
                    max_instances=1,
                    coalesce=True,
                )
            self.tick()  # studies whose quiet period ended while we were down
        self.scheduler.start()
        if self.worker is not None:
            self._warn_uncalibrated()
            self.worker.start()
        if self.forwarder is not None:
            self.forwarder.start()
        self._write_running_marker()
        self.audit.record(
            EventCode.APPLICATION_ACTIVITY,
            event_type=APPLICATION_START,
            outcome_desc="triage-node started",
            participants=[self._me],
        )

    def _write_running_marker(self) -> None:
        """Durably (fsync file and folder): after a power loss its presence is what makes the next
        start re-index files whose index row was not synced (database.sqlite_synchronous)."""
        marker = self.data_dir / RUNNING_MARKER
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, str(os.getpid()).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(self.data_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

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

    def warn_below_floor(self) -> None:
        """Say at start-up, not at the first refused C-STORE, that free space is below the floor."""
        free, floor = self.files.free_bytes(), self.settings.storage.min_free_bytes
        metrics.STORAGE_FREE_BYTES.set(free)
        metrics.STORAGE_FLOOR_BYTES.set(floor)
        if free < floor:
            log.warning(
                "storage_below_floor",
                free_bytes=free,
                min_free_bytes=floor,
                detail="every C-STORE will be refused with 0xA700 until space is freed",
            )

    def release(self) -> None:
        """Close the audit log, the database and the data-dir lock (idempotent)."""
        self.audit.close()
        self.db.dispose()
        self._lock.close()

    def recover(self) -> None:
        """After an unclean stop: drop this process's temp files, index renamed-but-unindexed files.

        Only our own temp files: other processes sharing the storage may be writing theirs now."""
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
        except Exception as exc:
            log.error("search_refresh_failed", error=type(exc).__name__, detail=str(exc)[:200])

    def tick(self) -> None:
        try:
            for job in queue_stable_studies(self.db, self.settings.stability.quiet_seconds):
                metrics.STUDIES_STABLE.inc()
                self.audit.record(
                    EventCode.APPLICATION_ACTIVITY,
                    outcome_desc="triage job queued",
                    participants=[self._me],
                    objects=[
                        AuditObject(
                            type="study",
                            id=job.study_instance_uid,
                            details={"job_id": job.job_id, "instances": job.instance_count},
                        )
                    ],
                )
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
        if self.listener is not None:
            self.listener.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        if self.worker is not None:
            self.worker.stop()
        if self.forwarder is not None:
            self.forwarder.stop()
        self.refusals.flush()
        self.audit.record(
            EventCode.APPLICATION_ACTIVITY,
            event_type=APPLICATION_STOP,
            outcome_desc="triage-node stopped",
            participants=[self._me],
        )
        (self.data_dir / RUNNING_MARKER).unlink(missing_ok=True)
        self.release()

    def serve_forever(self) -> None:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        self.start()
        head = (
            f"triage-node listening as {self.settings.dicom.ae_title} on "
            f"{self.settings.dicom.host}:{self.listener.port}"
            if self.listener is not None
            else "triage-node running without a DICOM port"
        )
        print(
            head
            + (f", HTTP on {self.settings.http.host}:{self.http_port}" if self.http else "")
            + f"; process {self.process_id}, roles: {', '.join(self.roles)}; Ctrl-C to stop",
            flush=True,
        )
        if self.http is not None:
            from node.console import console_url

            print(f"operator console: {console_url(self.settings.http.host, self.http.port)}", flush=True)
        for text in self.calibration_warnings:
            print(f"WARNING {text} (see README, 'Tune it on your data')", file=sys.stderr, flush=True)
        while not stop.wait(0.5):
            pass
        self.stop()
