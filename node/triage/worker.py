"""The triage worker: claims queued jobs and answers each study with an SR, in three typed stages:

1. prepare (node/triage/batch.py): read each study's headers, select, preprocess;
2. infer (node/triage/infer.py): one model call per profile over the images of all studies in
   the batch, behind the small ``Model`` Protocol (node/triage/model_api.py) and a deadline that
   a hung call cannot stretch to the next batch;
3. answer (node/triage/answer.py): a ``StudyDecision`` per job becomes the SR, the worklist row,
   the job's final state, metrics and audit.

This module keeps what ties them together: the job lease while a batch is worked on, the model
slot, orphan retakes, and the background loop. It survives every failure of the model:
unavailable, error or timeout become a no-assist SR (rule 6). Only a failure to write the answer
(disk, database) sends a job back to the queue.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from node.audit import AuditLog, Participant
from node.background import BackgroundLoop
from node.config import Settings
from node.db.engine import Database
from node.embeddings import keep_batch_embeddings
from node.oplog import get_logger
from node.store.ingest import Ingestor
from node.store.read import StoredFiles
from node.triage.answer import Answerer
from node.triage.batch import StudyWork, prepare_study, read_study_headers
from node.triage.infer import DeadlineRunner, infer_batch
from node.triage.jobs import claim_jobs, heartbeat, requeue_orphans
from node.triage.model import load_model
from node.triage.model_api import Model
from node.triage.model_slot import ModelLoader, ModelSlot
from node.triage.profiles import ProfileError, TriageProfile, load_profiles

log = get_logger("triage")

__all__ = ["TriageWorker"]


class TriageWorker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        ingestor: Ingestor,
        audit: AuditLog,
        *,
        model_loader: ModelLoader = load_model,
    ) -> None:
        self.settings = settings
        self.db = db
        self.files = StoredFiles(settings.storage.path)
        self.profiles = self._load_profiles()
        # This process slot (host + data_dir): a restart of the same slot retakes its jobs at once.
        self.host_prefix = f"{settings.node.process_id()}:"
        self.worker_id = f"{self.host_prefix}{os.getpid()}:{id(self):x}"
        me = Participant(user_id=settings.dicom.ae_title, role="application")
        self.slot = ModelSlot(
            settings.model, Path(settings.node.data_dir) / "cache", self.profiles, audit, me, model_loader
        )
        self.answerer = Answerer(settings, db, ingestor, audit, self.worker_id)
        self.runner = DeadlineRunner()
        self._last_retake = 0.0
        # The first load is waited for: jobs queued at start-up get the model.
        self._loop = BackgroundLoop(
            "triage-worker",
            self._tick,
            interval=settings.triage.poll_seconds,
            log=log,
            error_event="worker_loop_error",
            setup=self.slot.ensure,
        )

    @property
    def model(self) -> Model | None:
        """The loaded model, None while it is not (yet) loaded."""
        return self.slot.model

    @property
    def model_error(self) -> str:
        """Why there is no model ("" once it loaded)."""
        return self.slot.error

    @property
    def alive(self) -> bool:
        """The worker's loop thread runs."""
        return self._loop.alive

    def _load_profiles(self) -> list[TriageProfile]:
        from node.config import ConfigError

        directory = self.settings.triage.profiles_path
        try:
            available = load_profiles(directory)
        except (ProfileError, OSError) as exc:
            raise ConfigError(f"triage.profiles_dir: cannot load triage profiles from {directory}: {exc}") from None
        missing = [name for name in self.settings.triage.profiles if name not in available]
        if missing:
            raise ConfigError(
                f"triage.profiles: no profile named {', '.join(missing)} in "
                f"{self.settings.triage.profiles_path} (have: {', '.join(sorted(available))})"
            )
        profiles = [available[name] for name in self.settings.triage.profiles]
        if any(f.probe is not None for p in profiles for f in p.findings):
            from node.embeddings.current import configured_weights_sha256
            from node.probes.probe import ProbeError, check_probe

            weights = configured_weights_sha256(self.settings)  # None: not on disk yet, checked after load
            try:
                for p in profiles:
                    for f in p.findings:
                        if f.probe is not None:
                            check_probe(f.probe, weights_sha256=weights)
            except ProbeError as exc:
                raise ConfigError(f"triage.profiles: {exc}") from None
        return profiles

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self.retake_orphans()
        self._loop.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Let the current batch finish (bounded); a job cut short is retaken at the next start.
        A model call still running past its deadline is left behind (a daemon thread)."""
        self._loop.stop(timeout)

    def retake_orphans(self) -> None:
        """Requeue running jobs whose worker died (lease expired, or a dead process of this host)."""
        requeued, failed = requeue_orphans(
            self.db,
            host_prefix=self.host_prefix,
            worker_id=self.worker_id,
            stale_seconds=self.settings.triage.stale_job_seconds,
            max_attempts=self.settings.triage.max_attempts,
        )
        self._last_retake = time.monotonic()
        if requeued or failed:
            log.info("jobs_retaken", requeued=requeued, failed=failed)

    def _tick(self) -> bool:
        self.slot.ensure(wait=False)  # later retries load in the background
        if time.monotonic() - self._last_retake >= self.settings.triage.heartbeat_seconds:
            self.retake_orphans()  # another worker process may have died holding jobs
        return self.run_once()

    # ------------------------------------------------------------------ one batch
    def run_once(self) -> bool:
        """Claim up to max_jobs_per_batch jobs and answer each. Returns False when the queue was empty."""
        jobs = claim_jobs(self.db, self.worker_id, self.settings.triage.max_jobs_per_batch)
        if not jobs:
            return False
        # One model for the whole batch: its input size decides how the batch is preprocessed (a
        # model of another size than 448 must not fail as model-error), it runs the batch and its
        # identity is named in the SRs; without a model no pixel needs decoding at all.
        model = self.slot.ensure(wait=False)
        with self._lease([job.id for job in jobs]):
            works: list[StudyWork] = []
            for job in jobs:
                self.answerer.audit_job(job.study_instance_uid, job.id, "triage job started")
                headers = read_study_headers(self.db, self.files, job.study_instance_uid)
                works.append(
                    prepare_study(
                        job.id,
                        job.study_instance_uid,
                        job.queued_at,
                        headers,
                        self.profiles,
                        model.image_size if model is not None else None,
                    )
                )
            decisions = infer_batch(
                works,
                model,
                runner=self.runner,
                timeout=self.settings.model.timeout_seconds,
                keep_embeddings=self._keep_embeddings,
            )
            identity = model.identity if model is not None else None
            for work in works:
                self.answerer.answer(work, decisions[work.job_id], identity)
        return True

    def _keep_embeddings(self, works: Sequence[StudyWork], embeddings: object, weights_sha256: str) -> None:
        keep_batch_embeddings(self.db, works, embeddings, weights_sha256)  # rule 8; never raises

    @contextmanager
    def _lease(self, job_ids: list[int]) -> Iterator[None]:
        """Renew the claimed jobs' lease every heartbeat_seconds while the batch is worked on, so
        that other workers retake them only when this process is really gone."""
        done = threading.Event()

        def beat() -> None:
            while not done.wait(self.settings.triage.heartbeat_seconds):
                try:
                    heartbeat(self.db, job_ids, self.worker_id)
                except Exception as exc:  # a database hiccup: the next beat tries again
                    log.warning("heartbeat_failed", error=type(exc).__name__)

        beater = threading.Thread(target=beat, name="job-heartbeat", daemon=True)
        beater.start()
        try:
            yield
        finally:
            done.set()
            beater.join(5)
