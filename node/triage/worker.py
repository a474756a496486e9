"""The triage worker: claims queued jobs, selects and preprocesses images, runs MedSigLIP on
one batch across several studies, decides, and answers each study with an SR.

It survives every failure of the model: unavailable, error or timeout become a no-assist SR
(rule 6). Only a failure to write the answer (disk, database) sends a job back to the queue.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from node import metrics
from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import MINOR_FAILURE, SUCCESS
from node.config import Settings
from node.db.engine import Database
from node.db.models import TriageJob
from node.db.states import JobState
from node.embeddings import keep_batch_embeddings
from node.oplog import get_logger, study_ref
from node.results.contract import algorithm_info, triage_result
from node.results.outputs import ResultOutputs
from node.results.write import write_report
from node.store.ingest import Ingestor
from node.store.read import StoredFiles, study_headers
from node.triage.jobs import claim_jobs, finish_job, heartbeat, requeue_job, requeue_orphans
from node.triage.model import LoadedModel, ModelSettings, ModelUnavailable, load_model
from node.triage.policy import NoAssistReason, decide, embed_profile, no_assist
from node.triage.preprocess import PREPROCESS_VERSION, PreprocessError, preprocess_version, to_model_input
from node.triage.profiles import ProfileError, TriageProfile, load_profiles
from node.triage.select import select_images
from node.worklist.priority import order_priority

log = get_logger("triage")


@dataclass
class _StudyWork:
    """One claimed job on its way through the batch."""

    job_id: int
    study_uid: str
    queued_at: datetime
    headers: list[Dataset]
    profile: TriageProfile | None = None
    images: list[Dataset] = field(default_factory=list)  # accepted and preprocessed, decide() order
    pixels: list[np.ndarray] = field(default_factory=list)
    preprocessing: list[str] = field(default_factory=list)  # one description per image of ``images``
    skipped: list[tuple[str, str]] = field(default_factory=list)
    eligible: bool = False  # the profile accepted at least one image (preprocessed or not)


_MODEL_FAILED = (NoAssistReason.MODEL_ERROR, NoAssistReason.MODEL_TIMEOUT)


def _preprocessing_summary(descriptions: list[str], version: str = PREPROCESS_VERSION) -> str:
    """The TID 4019 preprocessing parameter: the recipe shared by every image; each image's own
    description (window, size...) is in its image group of the SR."""
    if not descriptions:
        return f"{version}: no image preprocessed"
    if len(set(descriptions)) == 1:
        return descriptions[0]
    return f"{version}: {len(descriptions)} images, each described in its image group"


class TriageWorker:
    def __init__(self, settings: Settings, db: Database, ingestor: Ingestor, audit: AuditLog,
                 *, model_loader=load_model) -> None:
        self.settings = settings
        self.db = db
        self.ingestor = ingestor
        self.audit = audit
        self.files = StoredFiles(settings.storage.path)
        self.profiles = self._load_profiles()
        # This process slot (host + data_dir): a restart of the same slot retakes its jobs at once.
        self.host_prefix = f"{settings.node.process_id()}:"
        self.worker_id = f"{self.host_prefix}{os.getpid()}:{id(self):x}"
        self._model_loader = model_loader
        self.model: LoadedModel | None = None
        self.model_error = "not loaded yet"
        self._last_load_attempt = 0.0
        self._loading: threading.Thread | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_retake = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        self._me = Participant(user_id=settings.dicom.ae_title, role="application")

    def _load_profiles(self) -> list[TriageProfile]:
        from node.config import ConfigError

        directory = self.settings.triage.profiles_path
        try:
            available = load_profiles(directory)
        except (ProfileError, OSError) as exc:
            raise ConfigError(f"triage.profiles_dir: cannot load triage profiles from {directory}: {exc}") from None
        missing = [name for name in self.settings.triage.profiles if name not in available]
        if missing:
            raise ConfigError(f"triage.profiles: no profile named {', '.join(missing)} in "
                              f"{self.settings.triage.profiles_path} (have: {', '.join(sorted(available))})")
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
        self._thread = threading.Thread(target=self._run, name="triage-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Let the current batch finish (bounded); a job cut short is retaken at the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def retake_orphans(self) -> None:
        """Requeue running jobs whose worker died (lease expired, or a dead process of this host)."""
        requeued, failed = requeue_orphans(
            self.db, host_prefix=self.host_prefix, worker_id=self.worker_id,
            stale_seconds=self.settings.triage.stale_job_seconds, max_attempts=self.settings.triage.max_attempts)
        self._last_retake = time.monotonic()
        if requeued or failed:
            log.info("jobs_retaken", requeued=requeued, failed=failed)

    def _run(self) -> None:
        self.ensure_model()  # the first load is waited for: jobs queued at start-up get the model
        while not self._stop.is_set():
            try:
                self.ensure_model(wait=False)  # later retries load in the background
                if time.monotonic() - self._last_retake >= self.settings.triage.heartbeat_seconds:
                    self.retake_orphans()  # another worker process may have died holding jobs
                worked = self.run_once()
            except Exception as exc:  # never let the loop die; the jobs stay visible as running/failed
                log.error("worker_loop_error", error=type(exc).__name__, detail=str(exc)[:300])
                worked = False
            if not worked:
                self._stop.wait(self.settings.triage.poll_seconds)

    # ------------------------------------------------------------------ model
    def ensure_model(self, *, wait: bool = True) -> LoadedModel | None:
        """Load the model once; after a failure, retry no more often than retry_load_seconds.

        With ``wait=False`` a due retry runs in a background thread and this returns None at
        once: queued triage is answered ("model not loaded") instead of waiting behind a load
        attempt that may take minutes. The model is used from the first batch after it loaded.
        """
        if self.model is not None:
            return self.model
        if self._loading is not None and self._loading.is_alive():
            return None
        now = time.monotonic()
        if self._last_load_attempt and now - self._last_load_attempt < self.settings.model.retry_load_seconds:
            return None
        self._last_load_attempt = now
        if wait:
            return self._load()
        self._loading = threading.Thread(target=self._load, name="model-load", daemon=True)
        self._loading.start()
        return None

    def _load(self) -> LoadedModel | None:
        m = self.settings.model
        try:
            loaded = self._model_loader(
                ModelSettings(id=m.id, path=m.path, revision=m.revision, device=m.device, batch_size=m.batch_size,
                              offline=m.offline, hf_token_env=m.hf_token_env, dtype=m.dtype,
                              timeout_s=m.timeout_seconds),
                cache_dir=Path(self.settings.node.data_dir) / "cache")
            for profile in self.profiles:
                embed_profile(loaded, profile)  # prompt embeddings once, at load
            self._check_probes(loaded.identity.weights_sha256)  # a probe of other weights: refuse the model
            self.model = loaded  # published only when ready (a background load races the batch loop)
        except Exception as exc:  # noqa: BLE001 - ModelUnavailable, or a prompt forward that failed
            if not isinstance(exc, ModelUnavailable):
                exc = ModelUnavailable(f"model start-up failed: {type(exc).__name__}: {str(exc)[:200]}")
            self.model, self.model_error = None, str(exc)
            log.error("model_unavailable", detail=str(exc)[:1000])
            self.audit.record(EventCode.APPLICATION_ACTIVITY, outcome=MINOR_FAILURE,
                              outcome_desc=f"model not loaded: {str(exc)[:300]}", participants=[self._me])
            return None
        ident = self.model.identity
        self.model_error = ""
        log.info("model_loaded", model_id=ident.model_id, revision=ident.revision, device=ident.device,
                 dtype=ident.dtype, weights_sha256=ident.weights_sha256, test_model=ident.is_test_model)
        self.audit.record(EventCode.APPLICATION_ACTIVITY, outcome=SUCCESS, outcome_desc="model loaded",
                          participants=[self._me],
                          objects=[AuditObject(type="model", id=ident.model_id, details={
                              "revision": ident.revision, "weights_sha256": ident.weights_sha256,
                              "device": ident.device, "dtype": ident.dtype, "test_model": ident.is_test_model})])
        return self.model

    def _check_probes(self, weights: str) -> None:
        """A probe of other weights must never score a study: refuse the model (no-assist SRs)."""
        from node.probes.probe import ProbeError, check_probe

        try:
            for profile in self.profiles:
                for f in profile.findings:
                    if f.probe is not None:
                        check_probe(f.probe, weights_sha256=weights)
        except ProbeError as exc:
            raise ModelUnavailable(str(exc)) from None

    # ------------------------------------------------------------------ one batch
    def run_once(self) -> bool:
        """Claim up to max_jobs_per_batch jobs and answer each. Returns False when the queue was empty."""
        jobs = claim_jobs(self.db, self.worker_id, self.settings.triage.max_jobs_per_batch)
        if not jobs:
            return False
        # The model first: its input size decides how the batch is preprocessed (a model of
        # another size than 448 must not fail as model-error), and without a model no pixel
        # needs decoding at all.
        model = self.ensure_model(wait=False)
        with self._lease([job.id for job in jobs]):
            works = []
            for job in jobs:
                self._audit_job(job.study_instance_uid, job.id, "triage job started")
                works.append(self._prepare(job, model))
            decisions = self._infer(works)
            for work in works:
                self._answer(work, decisions[work.job_id])
        return True

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

    def _study_headers(self, study_uid: str) -> list[Dataset]:
        # Pixel data stays on disk (deferred) until preprocessing asks for it.
        return study_headers(self.db, self.files, study_uid)

    def _prepare(self, job: TriageJob, model: LoadedModel | None) -> _StudyWork:
        """Select the images of the first profile that accepts any; with a model, preprocess
        them at the model's own input size (without one, nothing is decoded)."""
        work = _StudyWork(job.id, job.study_instance_uid, job.queued_at, self._study_headers(job.study_instance_uid))
        for profile in self.profiles:
            selection = select_images(work.headers, profile)
            if selection.accepted:
                work.profile = profile
                work.eligible = True
                work.skipped = [(s.sop_instance_uid, s.reason) for s in selection.skipped]
                if model is None:
                    break
                for ds in selection.accepted:
                    try:
                        pixels, record = to_model_input(ds, size=model.image_size, defaults=profile.preprocessing)
                    except PreprocessError as exc:
                        work.skipped.append((str(ds.SOPInstanceUID), f"preprocess: {exc}"[:120]))
                        continue
                    work.images.append(ds)
                    work.pixels.append(pixels)
                    work.preprocessing.append(record.describe())
                break
        if work.profile is None:
            work.profile = self.profiles[0]
        return work

    def _infer(self, works: list[_StudyWork]) -> dict[int, object]:
        """One model call per profile over the images of all jobs in the batch."""
        decisions: dict[int, object] = {}
        model = self.model
        for work in works:
            if work.eligible and model is None:
                decisions[work.job_id] = no_assist(NoAssistReason.MODEL_UNAVAILABLE)
            elif not work.pixels:
                decisions[work.job_id] = no_assist(NoAssistReason.NO_ELIGIBLE_IMAGE)
        pending = [w for w in works if w.job_id not in decisions]
        by_profile: dict[str, list[_StudyWork]] = {}
        for w in pending:
            by_profile.setdefault(w.profile.name, []).append(w)  # type: ignore[union-attr]
        for group in by_profile.values():
            profile = group[0].profile
            assert model is not None and profile is not None
            stack = np.stack([p for w in group for p in w.pixels])
            try:
                deadline = self.settings.model.timeout_seconds
                started = time.monotonic()
                future = self._executor.submit(model.embed_images, stack)
                embeddings = future.result(timeout=deadline)
                if time.monotonic() - started > deadline:
                    # The answer came, but after the deadline (this thread woke late): a timeout is
                    # decided by the clock, not by which thread the scheduler ran first.
                    raise FutureTimeout
                prompts = embed_profile(model, profile)
            except FutureTimeout:
                log.error("model_timeout", images=len(stack))
                for w in group:
                    decisions[w.job_id] = no_assist(NoAssistReason.MODEL_TIMEOUT)
                continue
            except Exception as exc:
                log.error("model_error", error=type(exc).__name__, detail=str(exc)[:300])
                for w in group:
                    decisions[w.job_id] = no_assist(NoAssistReason.MODEL_ERROR)
                continue
            keep_batch_embeddings(self.db, group, embeddings, model.identity.weights_sha256)  # rule 8
            start = 0
            for w in group:
                n = len(w.pixels)
                decisions[w.job_id] = decide(embeddings[start:start + n], profile, prompts, model.logit_scale)
                start += n
        return decisions

    def _answer(self, work: _StudyWork, decision) -> None:
        try:
            if not work.headers:
                raise RuntimeError("study has no readable instance")
            identity = self.model.identity if self.model is not None else None
            version = preprocess_version(work.profile.preprocessing)  # type: ignore[union-attr]
            algorithm = algorithm_info(identity, work.profile, version,  # type: ignore[arg-type]
                                       _preprocessing_summary(work.preprocessing, version))
            # Every image given to the model is listed with its domain score and preprocessing.
            given = work.preprocessing if decision.domain_scores or decision.reason in _MODEL_FAILED else []
            result = triage_result(decision, work.profile, work.images, algorithm, given)  # type: ignore[arg-type]
            evidence = list(work.images) if given else []
            context = work.images[0] if work.images else work.headers[0]
            report = write_report(self.db, self.ingestor, job_id=work.job_id, job_queued_at=work.queued_at,
                                  study_context=context, evidence=evidence, result=result,
                                  own_ae=self.settings.dicom.ae_title, order_priority=order_priority(work.headers),
                                  outputs=ResultOutputs.of(self.settings))
        except Exception as exc:
            log.error("job_failed", job_id=work.job_id, error=type(exc).__name__, detail=str(exc)[:300])
            self._fail_or_retry(work, exc)
            return
        if not finish_job(self.db, work.job_id, JobState.DONE, worker_id=self.worker_id):
            # Our lease ran out and another worker retook the job: it writes the same SR (same
            # UIDs), so the answer still exists once; the row is theirs to finish.
            log.warning("job_retaken_meanwhile", job_id=work.job_id)
            return
        metrics.SRS_WRITTEN.labels(report.priority).inc()
        if not report.assist:
            metrics.NO_ASSIST.labels(report.reason).inc()
        queued = work.queued_at if work.queued_at.tzinfo else work.queued_at.replace(tzinfo=timezone.utc)
        metrics.TRIAGE_LATENCY.observe((datetime.now(timezone.utc) - queued).total_seconds())
        patient_id = str(work.headers[0].get("PatientID", ""))
        self.audit.record(
            EventCode.INSTANCES_TRANSFERRED, action="C", outcome=SUCCESS,
            outcome_desc=(f"SR created: priority {report.priority}"
                          + (f" (kept from SR {report.priority_kept_from})" if report.priority_kept_from else "")
                          + f", worklist priority {report.worklist_priority}, "
                          + ("AI assessment" if report.assist else f"no AI assessment ({report.reason})")),
            participants=[self._me],
            objects=[AuditObject(type="patient", id=patient_id),
                     AuditObject(type="study", id=work.study_uid, details={
                         "job_id": work.job_id, "profile": work.profile.name if work.profile else "",
                         "images_evaluated": len(work.images), "skipped": work.skipped[:50]}),
                     AuditObject(type="report", id=report.sop_instance_uid, details={
                         "priority": report.priority, "worklist_priority": report.worklist_priority,
                         "priority_kept_from": report.priority_kept_from,
                         "assist": report.assist, "reason": report.reason})])
        self._audit_job(work.study_uid, work.job_id, "triage job finished")
        log.info("job_done", job_id=work.job_id, study_ref=study_ref(work.study_uid), priority=report.priority,
                 worklist_priority=report.worklist_priority, priority_kept=bool(report.priority_kept_from),
                 assist=report.assist, reason=report.reason, images=len(work.images))

    def _fail_or_retry(self, work: _StudyWork, exc: Exception) -> None:
        with self.db.session() as session:
            job = session.get(TriageJob, work.job_id)
            attempts = job.attempts if job else self.settings.triage.max_attempts
        if attempts >= self.settings.triage.max_attempts:
            finish_job(self.db, work.job_id, JobState.FAILED, f"{type(exc).__name__}: {exc}", worker_id=self.worker_id)
        else:
            requeue_job(self.db, work.job_id, f"{type(exc).__name__}: {exc}", worker_id=self.worker_id)
        self._audit_job(work.study_uid, work.job_id, f"triage job error: {type(exc).__name__}", outcome=MINOR_FAILURE)

    def _audit_job(self, study_uid: str, job_id: int, what: str, outcome: int = SUCCESS) -> None:
        self.audit.record(EventCode.APPLICATION_ACTIVITY, outcome=outcome, outcome_desc=what,
                          participants=[self._me],
                          objects=[AuditObject(type="study", id=study_uid, details={"job_id": job_id})])
