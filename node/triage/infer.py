"""Stage 2 of the worker: one model call per profile over the images of every study in the batch,
bounded by a deadline, and one typed decision per job.

Why each call gets its own thread: the worker used one single-thread executor, so a call that
hung past its deadline kept the executor's only thread, and the next batch's call queued behind
it and timed out as well (and the stale calls then ran for batches long answered). Here a call
that overruns its deadline is abandoned: its jobs are answered as model-timeout, the thread is
left to finish (or hang) on its own -- a daemon, so it never holds up the process exit -- and
the next batch starts a fresh thread at once. A bounded number of abandoned calls may be alive
at a time; beyond that the model is taken for hung and a batch is answered model-timeout
without a new call (no pile of stuck threads).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import numpy as np

from node.oplog import get_logger
from node.triage.batch import StudyWork
from node.triage.model_api import Model
from node.triage.policy import NoAssistReason, StudyDecision, decide, embed_profile, no_assist

log = get_logger("triage")

__all__ = ["DeadlineRunner", "InferenceTimeout", "KeepEmbeddings", "infer_batch"]

T = TypeVar("T")

#: Called with the studies of one model call (in stacking order), their embeddings and the weights' SHA-256.
KeepEmbeddings = Callable[[Sequence[StudyWork], object, str], None]


class InferenceTimeout(Exception):
    """The model did not answer within the deadline (or is still stuck in earlier calls)."""


class _Call(Generic[T]):
    """One call in its own thread; the result or the exception is picked up by whoever waits."""

    def __init__(self, fn: Callable[[], T], name: str) -> None:
        self._fn = fn
        self.done = threading.Event()
        self.result: T | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        try:
            self.result = self._fn()
        except BaseException as exc:  # handed to the waiting thread, which decides what it means
            self.error = exc
        finally:
            self.done.set()


class DeadlineRunner:
    """Runs calls with a deadline, each in a thread of its own that is left behind when it overruns."""

    def __init__(self, *, max_abandoned: int = 2, name: str = "model-call") -> None:
        self.max_abandoned = max_abandoned
        self.name = name
        self._abandoned: list[threading.Thread] = []
        self._lock = threading.Lock()

    def abandoned(self) -> int:
        """How many overrun calls are still running."""
        with self._lock:
            self._abandoned = [t for t in self._abandoned if t.is_alive()]
            return len(self._abandoned)

    def run(self, fn: Callable[[], T], timeout: float) -> T:
        """``fn()``'s result, or its exception; :class:`InferenceTimeout` when it took longer than
        ``timeout`` seconds (also when the answer came, but after the deadline: a timeout is
        decided by the clock, not by which thread the scheduler ran first)."""
        if self.abandoned() >= self.max_abandoned:
            raise InferenceTimeout(f"{self.max_abandoned} earlier calls are still running past their deadline")
        call: _Call[T] = _Call(fn, self.name)
        started = time.monotonic()
        call.thread.start()
        finished = call.done.wait(timeout)
        if not finished or time.monotonic() - started > timeout:
            if not finished:
                with self._lock:
                    self._abandoned.append(call.thread)
            raise InferenceTimeout(f"no answer within {timeout:g} s")
        if call.error is not None:
            raise call.error
        return call.result  # type: ignore[return-value]  # set when done without an error


def _no_keep(works: Sequence[StudyWork], embeddings: object, weights_sha256: str) -> None:
    return None


def infer_batch(
    works: Sequence[StudyWork],
    model: Model | None,
    *,
    runner: DeadlineRunner,
    timeout: float,
    keep_embeddings: KeepEmbeddings = _no_keep,
) -> dict[int, StudyDecision]:
    """One decision per job id of ``works``: no-assist without a model or without a preprocessed
    image; else one model call per profile over all studies' images (``timeout`` seconds at most),
    sliced back per study and decided by the policy. ``model`` is the one the batch was prepared
    for (its input size), so a model that finished loading meanwhile is not mixed in."""
    decisions: dict[int, StudyDecision] = {}
    for work in works:
        if work.eligible and model is None:
            decisions[work.job_id] = no_assist(NoAssistReason.MODEL_UNAVAILABLE)
        elif not work.pixels:
            decisions[work.job_id] = no_assist(NoAssistReason.NO_ELIGIBLE_IMAGE)
    by_profile: dict[str, list[StudyWork]] = {}
    for work in works:
        if work.job_id not in decisions:
            by_profile.setdefault(work.profile.name, []).append(work)
    if model is None:
        return decisions
    for group in by_profile.values():
        decisions.update(_infer_group(group, model, runner, timeout, keep_embeddings))
    return decisions


def _infer_group(
    group: list[StudyWork], model: Model, runner: DeadlineRunner, timeout: float, keep_embeddings: KeepEmbeddings
) -> dict[int, StudyDecision]:
    profile = group[0].profile
    stack = np.stack([p for w in group for p in w.pixels])
    try:
        embeddings = runner.run(lambda: model.embed_images(stack), timeout)
        if len(embeddings) != len(stack):
            raise ValueError(f"{len(embeddings)} embeddings for {len(stack)} images")
        prompts = embed_profile(model, profile)  # cached since the model loaded
    except InferenceTimeout as exc:
        log.error("model_timeout", images=len(stack), studies=len(group), detail=str(exc), abandoned=runner.abandoned())
        return {w.job_id: no_assist(NoAssistReason.MODEL_TIMEOUT) for w in group}
    except Exception as exc:  # whatever the model raised: a model-error answer (rule 6)
        log.error("model_error", error=type(exc).__name__, detail=str(exc)[:300])
        return {w.job_id: no_assist(NoAssistReason.MODEL_ERROR) for w in group}
    keep_embeddings(group, embeddings, model.identity.weights_sha256)  # rule 8
    decisions: dict[int, StudyDecision] = {}
    start = 0
    for w in group:
        n = len(w.pixels)
        decisions[w.job_id] = decide(embeddings[start : start + n], profile, prompts, model.logit_scale)
        start += n
    return decisions
