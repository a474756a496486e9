"""Priority over time (issue 7, DESIGN rule 5): the model may only raise.

One data folder is shared by a series of real nodes (in-process, DCMTK storescu as the modality,
the tiny random SigLIP as the model), each started with a different model or profile:

- RAISE: a profile whose urgent finding is always present -> the study goes HIGH (SR 1);
- then a late instance re-opens the study and a node that cannot assess, or assesses lower,
  triages it again: model unavailable, model error (a checkpoint with NaN weights), model
  timeout, urgent finding indeterminate, score lower. Each time the worklist (``worklist
  --json``) and the UPS (C-FIND) still say HIGH, and the new SR says it kept HIGH from SR 1;
- ``worklist clear`` (a person) lowers it, audited with who and why; a UPS COMPLETED does too;
- the order's own priority: STAT -> HIGH with no finding, ROUTINE + urgent finding -> HIGH,
  LOW stays LOW;
- the urgent-indeterminate no-assist SR holds every computed score, band and domain score;
- the image size comes from the loaded model even when the model loads after start-up.

The profiles below steer the tiny model's (random) scores with their bands, not with the
model: "always present" is a band [0, 0] (every score > 0 is above it), "always
indeterminate" a band [0, 1], "lower" a band [1, 1].
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import UnifiedProcedureStepPull, UnifiedProcedureStepPush  # type: ignore[attr-defined]

from dicom_sr import FindingState, read_triage_sr
from node.demo import synthetic_image
from tests.support.ci import needs_tools
from tests.support.config import NODE_AE, SCU_AE, NodeConfig, node_config
from tests.support.dimse import send_files
from tests.support.index import open_db, sr_instances, study_jobs
from tests.support.nodes import NodeRunner
from tests.support.polling import wait_until
from tests.support.serve import cli_command, node_env

pytestmark = [pytest.mark.dcmtk, needs_tools("storescu", "echoscu", "dcmcrle", "dciodvfy")]

WAIT_S = 90

PROFILE = """
name = "cxr"
description = "issue 7 test profile: band {band} on the urgent finding"

[selection]
modalities = ["DX"]
sop_class_uids = ["1.2.840.10008.5.1.4.1.1.1.1"]
body_parts = ["CHEST", ""]
view_positions = ["PA", "AP"]
min_age_years = 18
photometric_interpretations = ["MONOCHROME1", "MONOCHROME2"]

[domain]
in_domain_prompts = ["a chest X-ray"]
out_of_domain_prompts = ["a photograph of skin"]
min_score = 0.0

[preprocessing]
multiframe = "middle"

[[findings]]
key = "pleural_effusion"
display_name = "Pleural effusion"
code = ["60046008", "SCT", "Pleural effusion"]
absent_prompts = ["no pleural effusion"]
present_prompts = ["there is a pleural effusion"]
threshold = 0.5
indeterminate_band = [0.4, 0.6]
urgency = "routine"

[[findings]]
key = "pneumothorax"
display_name = "Pneumothorax"
code = ["36118008", "SCT", "Pneumothorax"]
absent_prompts = ["no pneumothorax"]
present_prompts = ["there is a pneumothorax"]
threshold = {threshold}
indeterminate_band = {band}
urgency = "high"
"""

BANDS = {"present": ("0.0", "[0.0, 0.0]"), "indeterminate": ("0.5", "[0.0, 1.0]"), "lower": ("1.0", "[1.0, 1.0]")}


def write_profile(folder: Path, mode: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    threshold, band = BANDS[mode]
    (folder / "cxr.toml").write_text(PROFILE.format(threshold=threshold, band=band), encoding="utf-8")
    return folder


def overflowing_model(tiny: Path, dest: Path) -> Path:
    """A copy of the tiny checkpoint that overflows on real images: a model error at inference.

    Two patch-embedding weights of +-1e38 cancel on a flat image (the loader's warm-up input,
    so the model loads) but overflow float32 on any textured patch: non-finite embeddings, as
    a broken checkpoint or a half-precision overflow would give.
    """
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny, dest)
    weights = dest / "model.safetensors"
    tensors = load_file(str(weights))
    name = next(k for k in tensors if k.endswith("vision_model.embeddings.patch_embedding.weight"))
    w = tensors[name].clone()
    w[0, 0, 0, 0], w[0, 0, 0, 1] = 1e38, -1e38
    tensors[name] = w
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return dest


@dataclass
class Shared:
    """One data folder; nodes come and go on it."""

    root: Path
    tiny: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data / 'index.db'}"

    def config(
        self, name: str, *, mode: str = "present", model_path: Path | str | None = None, **sections: dict[str, Any]
    ) -> NodeConfig:
        model_section = {"path": str(model_path or self.tiny), **sections.pop("model", {})}
        return node_config(
            self.root / name,
            model_section["path"],
            node={"data_dir": self.data},
            storage={"path": self.data / "storage"},
            database={"url": self.db_url},
            audit={"path": self.data / "audit.jsonl"},
            triage={"profiles_dir": write_profile(self.root / name / "profiles", mode), "poll_seconds": 0.2},
            http={"enabled": True, "host": "127.0.0.1", "port": 0},
            model=model_section,
            **sections,
        )


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Shared:
    return Shared(tmp_path_factory.mktemp("prio"), tiny_model_dir)


@contextlib.contextmanager
def running(cfg: NodeConfig) -> Iterator[Any]:
    """``with running(cfg) as node:`` an in-process node, stopped on exit."""
    with NodeRunner() as nodes:
        yield nodes.start(cfg)


def chest(
    path: Path,
    *,
    study_uid: str,
    series_uid: str,
    number: int = 1,
    patient_id: str = "PRIO",
    order: dict[str, Any] | None = None,
) -> Path:
    from pydicom.uid import DigitalXRayImageStorageForPresentation

    path.parent.mkdir(parents=True, exist_ok=True)
    synthetic_image(
        path,
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view="PA",
        body_part="CHEST",
        age=54,
        study_uid=study_uid,
        patient_id=patient_id,
        number=number,
        series_uid=series_uid,
        rows=96,
        cols=96,
    )
    if order:
        ds = pydicom.dcmread(path)
        for keyword, value in order.items():
            setattr(ds, keyword, value)
        ds.save_as(path, enforce_file_format=True)
    return path


def n_srs(db_url: str, study_uid: str) -> int:
    return len(sr_instances(open_db(db_url), study_uid))


def jobs_done(db_url: str, study_uid: str, n: int) -> bool:
    jobs = study_jobs(open_db(db_url), study_uid)
    return len(jobs) == n and all(j.state == "done" for j in jobs)


def worklist_json(cfg: NodeConfig) -> list[dict[str, Any]]:
    out = subprocess.run(
        [*cli_command(), "worklist", "--config", str(cfg.config_path), "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=node_env(),
        check=True,
    )
    rows = json.loads(out.stdout)
    for row in rows:  # every timestamp names its zone (UTC), on SQLite as on PostgreSQL (issue 8)
        for key in ("queued_at", "triaged_at"):
            if row.get(key):
                assert datetime.fromisoformat(row[key]).utcoffset() == timedelta(0), row[key]
    return rows


def row_of(cfg: NodeConfig, study_uid: str) -> dict[str, Any]:
    return next(r for r in worklist_json(cfg) if r["study_instance_uid"] == study_uid)


def latest_sr(shared: Shared, study_uid: str) -> Dataset:
    rows = sr_instances(open_db(shared.db_url), study_uid)
    return pydicom.dcmread(shared.data / "storage" / rows[-1][3])


def ups_priority(port: int, study_uid: str) -> str:
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(UnifiedProcedureStepPull)
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        query = Dataset()
        query.StudyInstanceUID = study_uid
        query.ScheduledProcedureStepPriority = ""
        query.SOPInstanceUID = ""
        found = [
            ident
            for status, ident in assoc.send_c_find(query, UnifiedProcedureStepPull)
            if status and status.Status in (0xFF00, 0xFF01)
        ]
    finally:
        assoc.release()
        ae.shutdown()
    assert len(found) == 1
    return str(found[0].ScheduledProcedureStepPriority)


def triage_once(
    shared: Shared,
    cfg: NodeConfig,
    study_uid: str,
    series_uid: str,
    tmp: Path,
    *,
    number: int,
    order: dict[str, Any] | None = None,
) -> None:
    """Send one instance of the study to ``cfg``'s running node and wait for its job to be done."""
    before = len(study_jobs(open_db(shared.db_url), study_uid))
    send_files(
        cfg.port,
        [
            chest(
                tmp / f"{study_uid}-{number}.dcm",
                study_uid=study_uid,
                series_uid=series_uid,
                number=number,
                order=order,
            )
        ],
    )
    wait_until(lambda: jobs_done(shared.db_url, study_uid, before + 1), WAIT_S, f"triage job {before + 1}")


# --------------------------------------------------------------------------- raised, then re-triaged

VARIANTS = ("model-unavailable", "model-error", "model-timeout", "urgent-indeterminate", "lower-score")


@pytest.fixture(scope="module")
def raised(shared: Shared, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, str]]:
    """One study per variant, each raised to HIGH by SR 1 (urgent finding present)."""
    tmp = tmp_path_factory.mktemp("raise-src")
    cfg = shared.config("raise", mode="present")
    out: dict[str, tuple[str, str, str]] = {}
    with running(cfg):
        for variant in VARIANTS:
            study_uid, series_uid = generate_uid(), generate_uid()
            triage_once(shared, cfg, study_uid, series_uid, tmp, number=1)
            row = row_of(cfg, study_uid)
            assert row["priority"] == "HIGH" and row["ai_raised"] and not row["priority_kept"], row
            out[variant] = (study_uid, series_uid, row["sr_sop_instance_uid"])
    return out


def variant_config(shared: Shared, variant: str, tmp: Path) -> NodeConfig:
    if variant == "model-unavailable":
        return shared.config(variant, model_path=tmp / "no-such-model")
    if variant == "model-error":
        return shared.config(variant, model_path=overflowing_model(shared.tiny, tmp / "overflow-model"))
    if variant == "model-timeout":
        return shared.config(variant, model={"timeout_seconds": 0.000001})
    if variant == "urgent-indeterminate":
        return shared.config(variant, mode="indeterminate")
    return shared.config(variant, mode="lower")


EXPECTED_REASON = {
    "model-unavailable": "model-unavailable",
    "model-error": "model-error",
    "model-timeout": "model-timeout",
    "urgent-indeterminate": "urgent-finding-indeterminate",
    "lower-score": "",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_raised_study_stays_high_when_retriage_cannot_assess_or_assesses_lower(
    shared: Shared, raised: dict[str, tuple[str, str, str]], variant: str, tmp_path: Path
) -> None:
    study_uid, series_uid, first_sr = raised[variant]
    cfg = variant_config(shared, variant, tmp_path)
    with running(cfg):
        triage_once(shared, cfg, study_uid, series_uid, tmp_path, number=2)
        row = row_of(cfg, study_uid)
        assert row["priority"] == "HIGH", row
        assert row["ai_raised"] and row["priority_kept"] and row["raised_by_sr_uid"] == first_sr
        assert row["reason"] == EXPECTED_REASON[variant]
        assert row["sr_sop_instance_uid"] != first_sr
        assert ups_priority(cfg.port, study_uid) == "HIGH"

    sr = latest_sr(shared, study_uid)
    result = read_triage_sr(sr)
    assert result.priority == "HIGH" and result.priority_kept_from == first_sr
    assert (not result.assist) == (variant != "lower-score")
    texts = [
        item.TextValue
        for group in sr.ContentSequence
        if "ContentSequence" in group
        for sub in group.ContentSequence
        if "ContentSequence" in sub
        for item in sub.ContentSequence
        if item.ValueType == "TEXT"
    ]
    assert any(f"Priority kept HIGH from the earlier assessment {first_sr}" in t for t in texts), texts
    if variant == "lower-score":
        assert [f.state for f in result.findings if f.urgent] == [FindingState.NOT_DETECTED]


def test_worklist_clear_lowers_a_kept_raise_and_is_audited(
    shared: Shared, raised: dict[str, tuple[str, str, str]], tmp_path: Path
) -> None:
    study_uid, series_uid, first_sr = raised["model-unavailable"]
    cfg = shared.config("clear", mode="lower")
    with running(cfg):  # the node is live and writing to the same audit file while a person clears
        out = subprocess.run(
            [
                *cli_command(),
                "worklist",
                "clear",
                study_uid,
                "--config",
                str(cfg.config_path),
                "--by",
                "Dr. Reader",
                "--reason",
                "pneumothorax ruled out on review",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=node_env(),
        )
        assert out.returncode == 0, out.stderr
        assert "HIGH -> MEDIUM" in out.stdout
        row = row_of(cfg, study_uid)
        assert row["priority"] == "MEDIUM" and not row["ai_raised"] and not row["priority_kept"]
        assert row["cleared"]["by"] == "Dr. Reader"
        assert ups_priority(cfg.port, study_uid) == "MEDIUM"
        # a re-triage that assesses lower now leaves it at MEDIUM (nothing to keep)
        triage_once(shared, cfg, study_uid, series_uid, tmp_path, number=3)
        assert row_of(cfg, study_uid)["priority"] == "MEDIUM"
        assert read_triage_sr(latest_sr(shared, study_uid)).priority_kept_from is None

    lines = [json.loads(line) for line in (shared.data / "audit.jsonl").read_text().splitlines()]
    clears = [e for e in lines if e["event_id"]["code"] == "110111"]
    assert len(clears) == 1
    assert clears[0]["participants"][0]["user_id"] == "Dr. Reader"
    details = clears[0]["objects"][0]
    assert details["id"] == study_uid and details["details"]["reason"] == "pneumothorax ruled out on review"
    assert details["details"]["cleared_raise"] == first_sr
    verify = subprocess.run(
        [*cli_command(), "audit", "verify", "--config", str(cfg.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=node_env(),
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_ups_completed_clears_a_raise(shared: Shared, raised: dict[str, tuple[str, str, str]]) -> None:
    study_uid, _series, first_sr = raised["model-timeout"]
    cfg = shared.config("ups-complete", mode="lower")
    with running(cfg):
        ae = AE(ae_title=SCU_AE)
        ae.add_requested_context(UnifiedProcedureStepPull)
        ae.add_requested_context(UnifiedProcedureStepPush)
        assoc = ae.associate("127.0.0.1", cfg.port, ae_title=NODE_AE)
        assert assoc.is_established
        try:
            query = Dataset()
            query.StudyInstanceUID, query.SOPInstanceUID = study_uid, ""
            found = [
                str(i.SOPInstanceUID)
                for s, i in assoc.send_c_find(query, UnifiedProcedureStepPull)
                if s and s.Status in (0xFF00, 0xFF01)
            ]  # read every response before the next request
            (ups_uid,) = found
            txn = generate_uid()
            for state in ("IN PROGRESS", "COMPLETED"):
                info = Dataset()
                info.ProcedureStepState, info.TransactionUID = state, txn
                status, _ = assoc.send_n_action(info, 1, UnifiedProcedureStepPush, ups_uid)
                assert status.Status == 0x0000
        finally:
            assoc.release()
            ae.shutdown()
        row = row_of(cfg, study_uid)
        assert row["priority"] == "MEDIUM" and not row["ai_raised"]
        assert row["cleared"]["by"] == f"AE {SCU_AE}" and row["cleared"]["reason"] == "UPS COMPLETED"
    audit = (shared.data / "audit.jsonl").read_text()
    assert f"AI priority raise by SR {first_sr} cleared" in audit


# --------------------------------------------------------------------------- the order's own priority


@pytest.mark.parametrize(
    ("mode", "order", "expected", "sr_priority"),
    [
        ("lower", {"RequestedProcedurePriority": "STAT"}, "HIGH", "MEDIUM"),
        ("present", {"RequestedProcedurePriority": "ROUTINE"}, "HIGH", "HIGH"),
        ("lower", {"ScheduledProcedureStepPriority": "LOW"}, "LOW", "MEDIUM"),
        ("lower", {}, "MEDIUM", "MEDIUM"),
    ],
)
def test_the_order_priority_counts_and_the_model_only_raises(
    shared: Shared, tmp_path: Path, mode: str, order: dict[str, str], expected: str, sr_priority: str
) -> None:
    cfg = shared.config(f"order-{mode}-{len(order)}-{expected}", mode=mode)
    study_uid, series_uid = generate_uid(), generate_uid()
    with running(cfg):
        triage_once(shared, cfg, study_uid, series_uid, tmp_path, number=1, order=order)
        row = row_of(cfg, study_uid)
        assert row["priority"] == expected, row
        assert ups_priority(cfg.port, study_uid) == expected
    result = read_triage_sr(latest_sr(shared, study_uid))
    assert result.priority == sr_priority  # the SR states the model's own priority, never LOW


# --------------------------------------------------------------------------- every decision traceable


def test_an_urgent_indeterminate_no_assist_sr_holds_every_computed_score(shared: Shared, tmp_path: Path) -> None:
    cfg = shared.config("indeterminate-fresh", mode="indeterminate")
    study_uid, series_uid = generate_uid(), generate_uid()
    with running(cfg):
        triage_once(shared, cfg, study_uid, series_uid, tmp_path, number=1)
        send_files(cfg.port, [chest(tmp_path / "second.dcm", study_uid=study_uid, series_uid=series_uid, number=2)])
        wait_until(lambda: jobs_done(shared.db_url, study_uid, 2), WAIT_S, "the second job")
        row = row_of(cfg, study_uid)
    assert row["priority"] == "MEDIUM" and not row["assist"] and row["reason"] == "urgent-finding-indeterminate"

    sr = latest_sr(shared, study_uid)  # plain pydicom first: the numbers are really in the file
    nums = {}
    for group in sr.ContentSequence:
        for item in group.get("ContentSequence", []):
            if item.ValueType == "CONTAINER":
                for sub in item.get("ContentSequence", []):
                    if sub.ValueType == "NUM":
                        name = sub.ConceptNameCodeSequence[0].CodeMeaning
                        nums.setdefault(name, []).append(float(sub.MeasuredValueSequence[0].NumericValue))
    assert len(nums["Score"]) == 2 and len(nums["Threshold Value"]) == 2
    assert len(nums["Indeterminate band lower limit"]) == 2 and len(nums["In-domain score"]) == 2

    result = read_triage_sr(sr)
    assert not result.assist and result.no_assist_reason.value == "urgent-finding-indeterminate"
    by_key = {f.finding.meaning: f for f in result.findings}
    urgent = by_key["Pneumothorax"]
    assert urgent.state is FindingState.INDETERMINATE and (urgent.band_low, urgent.band_high) == (0.0, 1.0)
    assert urgent.threshold == 1.0  # the value that decides "present": above the band
    effusion = by_key["Pleural effusion"]
    assert (effusion.band_low, effusion.band_high, effusion.threshold) == (0.4, 0.6, 0.6)
    assert len(result.images) == 2 and all(a.evaluated and a.domain_score is not None for a in result.images)
    assert all(a.preprocessing.startswith("tn-pre") for a in result.images)
    assert {a.image.sop_instance_uid for a in result.images} == {i["sop_instance_uid"] for i in row["images"]}
    # the worklist JSON carries the same scores
    scores = {f["finding"]: f["score"] for f in row["findings"]}
    assert scores["Pneumothorax"] == pytest.approx(urgent.score, abs=1e-6)
    assert row["findings"][0]["indeterminate_band"] is not None


def test_the_image_size_comes_from_a_model_loaded_after_start(shared: Shared, tmp_path: Path) -> None:
    """The model appears after start-up (loaded by a background retry): the batch is
    preprocessed at its size (64), not 448."""
    late = tmp_path / "late-model"
    cfg = shared.config("late-model", mode="lower", model={"path": str(late), "retry_load_seconds": 0.3})
    first, second = generate_uid(), generate_uid()
    with running(cfg) as node:
        triage_once(shared, cfg, first, generate_uid(), tmp_path, number=1)
        assert row_of(cfg, first)["reason"] == "model-unavailable"
        shutil.copytree(shared.tiny, late)
        # the retry loads it in the background, without holding up the queue
        wait_until(lambda: node.worker.model is not None, WAIT_S, "the model to load on a retry")
        triage_once(shared, cfg, second, generate_uid(), tmp_path, number=1)
        row = row_of(cfg, second)
    assert row["assist"] and row["reason"] == "", row


def test_a_requeued_job_has_no_finished_at(tmp_path: Path) -> None:
    from datetime import datetime

    from node.db.engine import Database
    from node.db.models import TriageJob
    from node.db.states import JobState
    from node.triage.jobs import claim_jobs, queue_study, requeue_job

    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    with db.write() as session:
        queue_study(session, "1.2.3", instance_count=1, now=datetime.now(UTC))
    (job,) = claim_jobs(db, "w1", 1)
    requeue_job(db, job.id, "OSError: disk full")
    with db.session() as session:
        again = session.get(TriageJob, job.id)
        assert again.state == JobState.QUEUED and again.finished_at is None and again.error.startswith("OSError")
