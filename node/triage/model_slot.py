"""The worker's model: loaded once, retried after a failure no more often than
``model.retry_load_seconds``, and published only when it is ready.

Why apart from the worker loop: loading is slow and may fail in many ways (no weights, no
token, no GPU, a probe trained on other weights); the loop only asks "which model, if any,
now?" and answers every job either way (rule 6). A retry runs in a background thread, so queued
triage is answered ("model not loaded") instead of waiting behind a load that may take minutes.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from node.audit import AuditLog, AuditObject, EventCode, Participant
from node.audit.events import MINOR_FAILURE, SUCCESS
from node.config import ModelSection
from node.oplog import get_logger
from node.triage.model import ModelUnavailable
from node.triage.model_api import Model
from node.triage.policy import embed_profile
from node.triage.profiles import TriageProfile

log = get_logger("triage")

__all__ = ["ModelLoader", "ModelSlot"]

#: ``load_model``'s shape: the [model] table and a cache folder -> a ready model, or ModelUnavailable.
ModelLoader = Callable[..., Model]


class ModelSlot:
    """Holds the loaded model (or why there is none) for one worker."""

    def __init__(
        self,
        settings: ModelSection,
        cache_dir: Path,
        profiles: Sequence[TriageProfile],
        audit: AuditLog,
        me: Participant,
        loader: ModelLoader,
    ) -> None:
        self.settings = settings
        self.cache_dir = cache_dir
        self.profiles = list(profiles)
        self.audit = audit
        self._me = me
        self._loader = loader
        self.model: Model | None = None
        self.error = "not loaded yet"
        self._last_attempt = 0.0
        self._loading: threading.Thread | None = None

    def ensure(self, *, wait: bool = True) -> Model | None:
        """The model, loading it if a (re)try is due.

        With ``wait=False`` a due retry runs in a background thread and this returns None at
        once; the model is used from the first batch after it loaded.
        """
        if self.model is not None:
            return self.model
        if self._loading is not None and self._loading.is_alive():
            return None
        now = time.monotonic()
        if self._last_attempt and now - self._last_attempt < self.settings.retry_load_seconds:
            return None
        self._last_attempt = now
        if wait:
            return self._load()
        self._loading = threading.Thread(target=self._load, name="model-load", daemon=True)
        self._loading.start()
        return None

    def _load(self) -> Model | None:
        try:
            loaded = self._loader(self.settings, cache_dir=self.cache_dir)
            for profile in self.profiles:
                embed_profile(loaded, profile)  # prompt embeddings once, at load
            self._check_probes(loaded.identity.weights_sha256)  # a probe of other weights: refuse the model
            self.model = loaded  # published only when ready (a background load races the batch loop)
        except Exception as exc:  # ModelUnavailable, or a prompt forward that failed
            if not isinstance(exc, ModelUnavailable):
                exc = ModelUnavailable(f"model start-up failed: {type(exc).__name__}: {str(exc)[:200]}")
            self.model, self.error = None, str(exc)
            log.error("model_unavailable", detail=str(exc)[:1000])
            self.audit.record(
                EventCode.APPLICATION_ACTIVITY,
                outcome=MINOR_FAILURE,
                outcome_desc=f"model not loaded: {str(exc)[:300]}",
                participants=[self._me],
            )
            return None
        ident = loaded.identity
        self.error = ""
        log.info(
            "model_loaded",
            model_id=ident.model_id,
            revision=ident.revision,
            device=ident.device,
            dtype=ident.dtype,
            weights_sha256=ident.weights_sha256,
            test_model=ident.is_test_model,
        )
        self.audit.record(
            EventCode.APPLICATION_ACTIVITY,
            outcome=SUCCESS,
            outcome_desc="model loaded",
            participants=[self._me],
            objects=[
                AuditObject(
                    type="model",
                    id=ident.model_id,
                    details={
                        "revision": ident.revision,
                        "weights_sha256": ident.weights_sha256,
                        "device": ident.device,
                        "dtype": ident.dtype,
                        "test_model": ident.is_test_model,
                    },
                )
            ],
        )
        return loaded

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
