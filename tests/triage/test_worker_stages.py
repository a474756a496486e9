"""The triage worker's control flow with a FAKE model: a hung inference does not block the next
batch, a model error is answered (not retried), one model call serves several studies and each
study gets its own answer, and a job sent back to the queue is not stamped finished.

Why a fake model here (and only here): these tests are about the worker's stages (prepare ->
infer -> answer), deadlines and job states, not about MedSigLIP; the fake implements the same
``node.triage.model_api.Model`` Protocol as ``LoadedModel`` and lets a test hang or fail a call
on purpose. Everything else is real: the SQLite index in tmp, files stored by the Ingestor and
read back by the worker, the SRs it writes, the audit log.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import torch
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from sqlalchemy import select

from node.audit import AuditLog
from node.db.engine import Database
from node.db.models import Instance, TriageJob, WorklistItem
from node.demo import synthetic_image
from node.stability.tick import queue_stable_studies
from node.store.files import FileStore
from node.store.ingest import Ingestor
from node.triage.infer import DeadlineRunner, InferenceTimeout
from node.triage.model_api import ModelIdentity
from node.triage.worker import TriageWorker
from tests.support.polling import wait_until

WAIT_S = 20.0  # the bound on anything a test waits for; a pass takes well under a second each
TIMEOUT_S = 0.5  # model.timeout_seconds in these tests

PROFILE = """\
name = "fake"
description = "Frontal chest DX for the worker's unit tests: one urgent finding"

[selection]
modalities = ["DX"]
sop_class_uids = []
body_parts = ["CHEST"]
view_positions = ["PA"]
photometric_interpretations = []

[domain]
in_domain_prompts = ["a chest X-ray"]
out_of_domain_prompts = ["a photograph"]
min_score = 0.5

[preprocessing]
multiframe = "middle"

[[findings]]
key = "pneumothorax"
display_name = "Pneumothorax"
code = ["36118008", "SCT", "Pneumothorax"]
absent_prompts = ["no pneumothorax"]
present_prompts = ["there is a pneumothorax"]
threshold = 0.5
indeterminate_band = [0.4, 0.6]
urgency = "high"
"""

# One axis per prompt class: an image embedding is "in domain" plus "finding present" or "absent".
_AXES = {"a chest X-ray": 0, "a photograph": 1, "no pneumothorax": 2, "there is a pneumothorax": 3}


class FakeModel:
    """Implements node.triage.model_api.Model. ``embed_images`` answers row i with "present" when
    ``present(call_number, i)`` is true, else "absent"; ``hang`` / ``fail`` make a call block
    (until ``release`` is set) or raise."""

    def __init__(self, present: Callable[[int, int], bool] = lambda call, row: False) -> None:
        self.identity = ModelIdentity(
            model_id="test/fake-model",
            revision="test",
            weights_sha256="f" * 64,
            image_size=32,
            device="cpu",
            dtype="float32",
            is_test_model=True,
        )
        self.logit_scale = 100.0
        self.present = present
        self.hang: set[int] = set()  # call numbers (0-based) that block until release is set
        self.fail: set[int] = set()  # call numbers that raise
        self.release = threading.Event()
        self.calls: list[int] = []  # images per embed_images call, in call order
        self.finished: list[int] = []  # call numbers that returned (a hung one, after release)

    @property
    def image_size(self) -> int:
        return self.identity.image_size

    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor([_AXES[p] for p in prompts]), 4).float()

    def embed_images(self, batch_uint8: np.ndarray) -> torch.Tensor:
        call = len(self.calls)
        self.calls.append(len(batch_uint8))
        assert batch_uint8.dtype == np.uint8 and batch_uint8.shape[1:] == (32, 32, 3)
        if call in self.hang:
            self.release.wait(WAIT_S)
        if call in self.fail:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        rows = torch.zeros((len(batch_uint8), 4))
        rows[:, 0] = 1.0
        for i in range(len(batch_uint8)):
            rows[i, 3 if self.present(call, i) else 2] = 1.0
        self.finished.append(call)
        return rows / rows.norm(dim=-1, keepdim=True)


@dataclass
class Harness:
    worker: TriageWorker
    model: FakeModel
    db: Database
    ingestor: Ingestor
    src: Path
    storage: Path

    def study(self, n_images: int, patient_id: str) -> tuple[str, list[str]]:
        """Store a frontal chest DX study of ``n_images`` through the Ingestor; (study UID, SOP UIDs)."""
        study_uid, series_uid = generate_uid(), generate_uid()
        sops = []
        for number in range(1, n_images + 1):
            path = synthetic_image(
                self.src / f"{patient_id}-{number}.dcm",
                modality="DX",
                sop_class=DigitalXRayImageStorageForPresentation,
                view="PA",
                body_part="CHEST",
                age=50,
                study_uid=study_uid,
                patient_id=patient_id,
                number=number,
                series_uid=series_uid,
                rows=64,
                cols=64,
            )
            ds = pydicom.dcmread(path)
            buf = DicomBytesIO()
            buf.is_little_endian, buf.is_implicit_VR = True, False
            write_dataset(buf, ds)
            assert self.ingestor.store(ds.file_meta, buf.getvalue(), calling_ae="TEST").ok
            sops.append(str(ds.SOPInstanceUID))
        return study_uid, sops

    def queue(self) -> None:
        assert queue_stable_studies(self.db, quiet_seconds=0.0)

    def job(self, study_uid: str) -> TriageJob:
        with self.db.session() as session:
            return session.execute(select(TriageJob).where(TriageJob.study_instance_uid == study_uid)).scalar_one()

    def row(self, study_uid: str) -> WorklistItem:
        with self.db.session() as session:
            return session.execute(
                select(WorklistItem).where(WorklistItem.study_instance_uid == study_uid)
            ).scalar_one()

    def run_once_bounded(self) -> float:
        """run_once in a thread, waited for at most WAIT_S (a hang fails the test, not the suite)."""
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                self.worker.run_once()
            except BaseException as exc:  # surfaced below
                errors.append(exc)
            finally:
                done.set()

        started = time.monotonic()
        threading.Thread(target=run, daemon=True).start()
        assert done.wait(WAIT_S), f"run_once did not return within {WAIT_S} s"
        assert not errors, errors
        return time.monotonic() - started


@pytest.fixture
def harness(tmp_path: Path, make_settings: Callable[..., Any]) -> Iterator[Harness]:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "fake.toml").write_text(PROFILE, encoding="utf-8")
    settings = make_settings(
        tmp_path,
        triage={"enabled": True, "profiles_dir": str(profiles), "profiles": ["fake"], "max_attempts": 2},
        model={"timeout_seconds": TIMEOUT_S},
    )
    db = Database(settings.database.url)
    audit = AuditLog(Path(settings.audit.path), db, source_id="test", fsync=False)
    storage = Path(settings.storage.path)
    ingestor = Ingestor(db, FileStore(storage, fsync=False), max_dataset_bytes=10**8, min_free_bytes=0)
    model = FakeModel()
    worker = TriageWorker(settings, db, ingestor, audit, model_loader=lambda section, cache_dir: model)
    assert worker.slot.ensure() is model  # what the loop's first step does: the load is waited for
    try:
        (tmp_path / "src").mkdir()
        yield Harness(worker, model, db, ingestor, tmp_path / "src", storage)
    finally:
        model.release.set()  # a hung fake call ends; its thread is a daemon either way
        audit.close()
        db.dispose()


def test_a_hung_inference_does_not_block_the_next_batch(harness: Harness) -> None:
    h, model = harness, harness.model
    model.hang.add(0)
    hung_uid, _ = h.study(1, "HUNG")
    h.queue()
    elapsed = h.run_once_bounded()
    assert elapsed >= TIMEOUT_S
    row = h.row(hung_uid)
    assert (row.assist, row.reason, row.priority) == (False, "model-timeout", "MEDIUM")
    assert h.job(hung_uid).state == "done"
    assert model.finished == []  # the first call still hangs

    # The next batch gets a model call of its own at once, not a place in a queue behind the hung one.
    next_uid, _ = h.study(1, "NEXT")
    h.queue()
    h.run_once_bounded()
    assert model.calls == [1, 1] and model.finished == [1]
    row = h.row(next_uid)
    assert (row.assist, row.reason) == (True, "")
    assert h.job(next_uid).state == "done"

    # The hung call ends late: its answer is dropped, the study keeps its model-timeout answer.
    model.release.set()
    wait_until(lambda: h.worker.runner.abandoned() == 0, WAIT_S, "the hung call to end", interval=0.01)
    assert 0 in model.finished
    row = h.row(hung_uid)
    assert (row.assist, row.reason) == (False, "model-timeout")


def test_deadline_runner_stops_calling_a_model_stuck_in_earlier_calls() -> None:
    release = threading.Event()
    runner = DeadlineRunner(max_abandoned=2)
    try:
        for _ in range(2):
            with pytest.raises(InferenceTimeout):
                runner.run(lambda: release.wait(WAIT_S), 0.05)
        assert runner.abandoned() == 2
        started = time.monotonic()
        with pytest.raises(InferenceTimeout, match="still running"):
            runner.run(lambda: pytest.fail("must not be called while two calls hang"), 5.0)
        assert time.monotonic() - started < 1.0  # answered without waiting out a deadline
    finally:
        release.set()
    wait_until(lambda: runner.abandoned() == 0, WAIT_S, "the released calls to end", interval=0.01)
    assert runner.run(lambda: 42, 1.0) == 42


def test_a_model_error_is_answered_not_retried(harness: Harness) -> None:
    h = harness
    h.model.fail.add(0)
    uids = [h.study(1, "ERR-A")[0], h.study(2, "ERR-B")[0]]
    h.queue()
    h.run_once_bounded()
    assert h.model.calls == [3]  # one call for the batch: its error answers both studies
    for uid in uids:
        row, job = h.row(uid), h.job(uid)
        assert (row.assist, row.reason, row.priority) == (False, "model-error", "MEDIUM")
        assert row.sr_sop_instance_uid
        assert (job.state, job.attempts, job.error) == ("done", 1, "")
        assert job.finished_at is not None
        # The images given to the model are listed in the SR's record even though it failed.
        assert len(json.loads(row.images)) == (1 if uid == uids[0] else 2)
    assert not h.worker.run_once()  # nothing went back to the queue


def test_one_call_for_several_studies_and_each_gets_its_own_answer(harness: Harness) -> None:
    h = harness
    # Study A (two images) is claimed first: rows 0-1 of the call are its images, row 2 is study B's.
    h.model.present = lambda call, row: row < 2
    a_uid, a_sops = h.study(2, "BATCH-A")
    b_uid, b_sops = h.study(1, "BATCH-B")
    h.queue()
    h.run_once_bounded()
    assert h.model.calls == [3]
    a, b = h.row(a_uid), h.row(b_uid)
    assert (a.assist, a.priority) == (True, "HIGH")
    assert (b.assist, b.priority) == (True, "MEDIUM")
    assert a.sr_sop_instance_uid != b.sr_sop_instance_uid
    assert [i["sop_instance_uid"] for i in json.loads(a.images)] == a_sops
    assert [i["sop_instance_uid"] for i in json.loads(b.images)] == b_sops
    assert {f["state"] for f in json.loads(a.findings)} == {"present"}
    assert {f["state"] for f in json.loads(b.findings)} == {"not_detected"}
    assert h.job(a_uid).state == h.job(b_uid).state == "done"


def test_a_job_sent_back_to_the_queue_is_not_stamped_finished(harness: Harness) -> None:
    h = harness
    uid, _ = h.study(1, "GONE")
    with h.db.session() as session:
        (h.storage / session.execute(select(Instance.path)).scalar_one()).unlink()  # the file is lost
    h.queue()
    h.run_once_bounded()
    job = h.job(uid)
    assert (job.state, job.attempts, job.finished_at) == ("queued", 1, None)
    assert "no readable instance" in job.error
    assert h.model.calls == []  # nothing to infer: no image could be read

    h.run_once_bounded()  # the second claim is the last (max_attempts = 2): failed, and now finished
    job = h.job(uid)
    assert (job.state, job.attempts) == ("failed", 2)
    assert job.finished_at is not None
    assert not h.worker.run_once()


def test_the_background_loop_survives_a_failing_tick_and_stops_in_bounds() -> None:
    from node.background import BackgroundLoop

    class Log:
        def __init__(self) -> None:
            self.errors: list[tuple[str, dict[str, Any]]] = []

        def error(self, event: str, **fields: Any) -> None:
            self.errors.append((event, fields))

    def wait_for(predicate: Callable[[], bool]) -> None:
        wait_until(predicate, WAIT_S, "the loop's next step", interval=0.01)

    ticks: list[int] = []
    log = Log()

    def tick() -> bool:
        ticks.append(len(ticks))
        if len(ticks) == 1:
            raise RuntimeError("database is locked")
        return len(ticks) < 4  # work for a few rounds, then idle

    loop = BackgroundLoop("test-loop", tick, interval=0.05, log=log, error_event="test_loop_error")
    loop.start()
    wait_for(lambda: len(ticks) >= 5)
    assert loop.alive  # it went on after the error
    assert log.errors == [("test_loop_error", {"error": "RuntimeError", "detail": "database is locked"})]
    assert loop.stop(timeout=5.0) and not loop.alive

    idle = BackgroundLoop(
        "idle-loop", lambda: bool(ticks.append(-1)), interval=60.0, log=log, error_event="test_loop_error"
    )
    idle.start()
    wait_for(lambda: ticks[-1] == -1)
    started = time.monotonic()
    assert idle.stop(timeout=5.0)
    assert time.monotonic() - started < 5.0  # the 60 s idle wait is cut short by stop()
