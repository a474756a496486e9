"""End to end over C-STORE: studies sent by DCMTK's storescu to a real node on 127.0.0.1, with
the tiny random SigLIP configured as [model] path, come back as DICOM SRs in the node's store
and as rows of the worklist (issue 3, "Tests" and "Done when").

- chest studies (uncompressed, RLE, JPEG 2000, MONOCHROME1) -> an assist SR that passes dciodvfy
  and names the weights hash;
- lateral, child, CT -> a no-assist SR ("no-eligible-image"); the worklist CLI never says LOW;
- a late instance -> a second SR that names the first as its predecessor;
- a model that cannot load -> no-assist SRs ("model-unavailable") from a node that still answers;
- `triage-node serve` killed (SIGKILL) during a job and restarted -> the job completes once;
- `triage-node demo` says its model is random.

The tiny model's scores are random but deterministic (fixed seed): for these synthetic chest
images its domain check passes and its urgent finding is outside the indeterminate band, so
the chest studies get an assessment (see also tests/triage for the policy itself).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import (
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

from dicom_sr import read_predecessor, read_triage_sr, run_dciodvfy
from node.demo import demo_studies, synthetic_image
from node.triage.tiny_model import TINY_MODEL_ID
from tests.support.ci import needs_tools
from tests.support.config import NodeConfig, node_config
from tests.support.dimse import echoscu, send_files
from tests.support.index import open_db, sr_instances, study_instances, study_jobs, worklist_row
from tests.support.polling import wait_until
from tests.support.serve import cli_command, node_env

pytestmark = [pytest.mark.dcmtk, needs_tools("storescu", "echoscu", "dcmcrle", "dciodvfy")]

N_CXR_FINDINGS = 13
WAIT_S = 120  # generous bound; each wait normally ends within a few seconds


def chest_image(
    path: Path,
    *,
    patient_id: str,
    study_uid: str | None = None,
    series_uid: str | None = None,
    number: int = 1,
    photometric: str = "MONOCHROME2",
    size: int = 256,
) -> Path:
    """An adult PA chest DX (For Presentation), via the demo's synthetic image."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return synthetic_image(
        path,
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view="PA",
        body_part="CHEST",
        age=54,
        study_uid=study_uid or generate_uid(),
        patient_id=patient_id,
        number=number,
        series_uid=series_uid,
        photometric=photometric,
        rows=size,
        cols=size,
    )


def compress(src: Path, dst: Path, transfer_syntax: str) -> Path:
    if transfer_syntax == RLELossless:  # DCMTK's encoder, as a modality would
        subprocess.run(["dcmcrle", str(src), str(dst)], check=True, capture_output=True, timeout=60)
    else:  # JPEG 2000 lossless by pydicom + pylibjpeg-openjpeg
        ds = pydicom.dcmread(src)
        ds.compress(transfer_syntax)
        ds.save_as(dst, enforce_file_format=True)
    assert pydicom.dcmread(dst, stop_before_pixels=True).file_meta.TransferSyntaxUID == transfer_syntax
    return dst


def uid_of(path: Path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID)


@dataclass
class SentStudy:
    study_uid: str
    image_uids: list[str]
    transfer_syntax: str  # how the images travelled (and are stored)


def sr_path(cfg: NodeConfig, db, study_uid: str) -> Path:  # type: ignore[no-untyped-def]
    """The study's current SR (the one its worklist row names) as a file in the node's store."""
    row = worklist_row(db, study_uid)
    assert row is not None, "no worklist row"
    (rel,) = [r[3] for r in sr_instances(db, study_uid) if r[1] == row["sr_sop_instance_uid"]]
    path = cfg.storage / rel
    assert path.is_file()
    return path


def answered(db, study_uids: list[str]) -> bool:  # type: ignore[no-untyped-def]
    """Whether every study has a worklist row; fails at once when one of their jobs failed."""
    for uid in study_uids:
        failed = [j for j in study_jobs(db, uid) if j.state == "failed"]
        if failed:
            pytest.fail(f"triage job {failed[0].id} failed: {failed[0].error}")
    return all(worklist_row(db, uid) for uid in study_uids)


def _worklist(db):  # type: ignore[no-untyped-def]
    from node.worklist.rows import worklist

    return worklist(db)


def assert_valid_dicom(path: Path) -> None:
    report = run_dciodvfy(path)
    assert report.errors == (), report.output


# =========================================================================== one healthy node
@dataclass
class Healthy:
    cfg: NodeConfig
    node: object
    studies: dict[str, SentStudy]

    @property
    def db(self):  # type: ignore[no-untyped-def]
        return self.node.db  # type: ignore[attr-defined]


CHEST_VARIANTS = ["uncompressed", "rle", "jpeg2000", "monochrome1"]
NO_ELIGIBLE = {"lateral": "lateral chest (DX)", "child": "child PA chest (DX)", "ct": "CT chest (3 slices)"}


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, module_node_factory) -> Healthy:  # type: ignore[no-untyped-def]
    """A node with the tiny model; the four chest variants and the three no-eligible studies sent
    together (one quiet period for all), and every one of them triaged before the tests look."""
    root = tmp_path_factory.mktemp("healthy")
    cfg = node_config(root / "node", tiny_model_dir)
    node = module_node_factory(cfg)
    src = root / "src"

    demo = demo_studies(src / "demo")  # adult PA chest, lateral, child, CT (uncompressed)
    raw_rle = chest_image(src / "raw" / "rle.dcm", patient_id="E2E-RLE")
    raw_j2k = chest_image(src / "raw" / "j2k.dcm", patient_id="E2E-J2K")
    sends: dict[str, tuple[list[Path], tuple[str, ...], str]] = {
        "uncompressed": (sorted(demo["adult PA chest (DX)"].glob("*.dcm")), (), ExplicitVRLittleEndian),
        "rle": ([compress(raw_rle, src / "rle.dcm", RLELossless)], ("-xr",), RLELossless),
        "jpeg2000": ([compress(raw_j2k, src / "j2k.dcm", JPEG2000Lossless)], ("-xv",), JPEG2000Lossless),
        "monochrome1": (
            [chest_image(src / "mono1.dcm", patient_id="E2E-MONO1", photometric="MONOCHROME1")],
            (),
            ExplicitVRLittleEndian,
        ),
    }
    for key, label in NO_ELIGIBLE.items():
        sends[key] = (sorted(demo[label].glob("*.dcm")), (), ExplicitVRLittleEndian)

    studies = {}
    for key, (files, options, ts) in sends.items():
        send_files(cfg.port, files, *options)
        uids = [uid_of(f) for f in files]
        studies[key] = SentStudy(uids[0][0], [sop for _, sop in uids], ts)

    db = node.db
    uids = [s.study_uid for s in studies.values()]
    wait_until(lambda: answered(db, uids), WAIT_S, "a worklist row for every study")
    return Healthy(cfg, node, studies)


@pytest.mark.parametrize("variant", CHEST_VARIANTS)
def test_chest_study_gets_an_sr_that_validates_and_names_the_weights(
    healthy: Healthy, variant: str, e2e_tiny_sha: str
) -> None:
    study = healthy.studies[variant]
    db = healthy.db
    images = [r for r in study_instances(db, study.study_uid) if r[0] != "SR"]
    assert [r[1] for r in images] == study.image_uids
    assert {r[2] for r in images} == {study.transfer_syntax}, "the image did not travel in the syntax under test"

    srs = sr_instances(db, study.study_uid)
    assert len(srs) == 1, srs  # stored and indexed like a received instance, in an SR series
    row = worklist_row(db, study.study_uid)
    assert row is not None and row["sr_sop_instance_uid"] == srs[0][1]
    path = sr_path(healthy.cfg, db, study.study_uid)
    assert_valid_dicom(path)

    ds = pydicom.dcmread(path)
    assert ds.Modality == "SR" and ds.StudyInstanceUID == study.study_uid
    result = read_triage_sr(ds)
    assert result.assist, f"{variant}: no assist ({result.no_assist_text})"
    assert result.priority in ("HIGH", "MEDIUM")
    assert len(result.findings) == N_CXR_FINDINGS
    assert {ref.sop_instance_uid for ref in result.evaluated_images} == set(study.image_uids)
    alg = result.algorithm
    assert alg.weights_sha256 == e2e_tiny_sha
    assert alg.is_test_model is True
    assert alg.model_id == TINY_MODEL_ID
    assert alg.profile_name == "cxr"
    assert (row["priority"], row["assist"], row["reason"]) == (result.priority, True, "")
    assert [j.state for j in study_jobs(db, study.study_uid)] == ["done"]


@pytest.mark.parametrize("kind", list(NO_ELIGIBLE))
def test_lateral_child_and_ct_get_no_assist(healthy: Healthy, kind: str) -> None:
    study = healthy.studies[kind]
    row = worklist_row(healthy.db, study.study_uid)
    assert row is not None
    assert (row["assist"], row["reason"], row["priority"]) == (False, "no-eligible-image", "MEDIUM")
    assert len(sr_instances(healthy.db, study.study_uid)) == 1
    path = sr_path(healthy.cfg, healthy.db, study.study_uid)
    assert_valid_dicom(path)
    result = read_triage_sr(pydicom.dcmread(path))
    assert result.assist is False
    assert result.no_assist_reason is not None and result.no_assist_reason.value == "no-eligible-image"
    assert result.no_assist_text and "No AI assessment" in result.no_assist_text
    assert result.findings == () and result.evaluated_images == ()
    assert result.priority == "MEDIUM"


def test_worklist_cli_lists_every_study_most_urgent_first_never_low(healthy: Healthy) -> None:
    proc = subprocess.run(
        [*cli_command(), "worklist", "--json", "--config", str(healthy.cfg.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=node_env(),
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    by_study = {item["study_instance_uid"]: item for item in items}
    for key, study in healthy.studies.items():
        item = by_study[study.study_uid]
        assert item["sr_sop_instance_uid"], key
        if key in NO_ELIGIBLE:
            assert (item["assist"], item["reason"]) == (False, "no-eligible-image"), key
        else:
            assert item["assist"] is True, key
    priorities = [item["priority"] for item in items]
    assert "LOW" not in priorities and set(priorities) <= {"HIGH", "MEDIUM"}
    rank = [(0 if item["priority"] == "HIGH" else 1, item["queued_at"]) for item in items]
    assert rank == sorted(rank), "not most urgent first (HIGH, then longest waiting)"


def test_late_instance_leads_to_a_superseding_sr(healthy: Healthy, tmp_path: Path) -> None:
    cfg, db = healthy.cfg, healthy.db
    study_uid, series_uid = generate_uid(), generate_uid()
    first = chest_image(tmp_path / "first.dcm", patient_id="E2E-LATE", study_uid=study_uid, series_uid=series_uid)
    send_files(cfg.port, [first])
    wait_until(lambda: answered(db, [study_uid]), WAIT_S, "the first SR")
    row = worklist_row(db, study_uid)
    first_sr = row["sr_sop_instance_uid"]
    first_path = sr_path(cfg, db, study_uid)

    late = chest_image(
        tmp_path / "late.dcm", patient_id="E2E-LATE", study_uid=study_uid, series_uid=series_uid, number=2
    )
    send_files(cfg.port, [late])
    row = wait_until(
        lambda: (r := worklist_row(db, study_uid)) and r["sr_sop_instance_uid"] != first_sr and r,
        WAIT_S,
        "a superseding SR",
    )
    second_sr = row["sr_sop_instance_uid"]

    # The row is written before the job is marked done: wait for that, do not race it.
    wait_until(
        lambda: (js := study_jobs(db, study_uid)) and [j.state for j in js] == ["done", "done"] and js,
        WAIT_S,
        "both jobs done",
    )
    srs = sr_instances(db, study_uid)
    assert sorted(r[1] for r in srs) == sorted([first_sr, second_sr])  # the first SR is kept
    assert first_path.is_file()
    second_path = sr_path(cfg, db, study_uid)
    assert_valid_dicom(second_path)
    second = pydicom.dcmread(second_path)
    predecessor = read_predecessor(second)
    first_ds = pydicom.dcmread(first_path)
    assert predecessor is not None
    assert (predecessor.study_instance_uid, predecessor.series_instance_uid, predecessor.sop_instance_uid) == (
        study_uid,
        str(first_ds.SeriesInstanceUID),
        first_sr,
    )
    assert read_predecessor(first_ds) is None
    result = read_triage_sr(second)
    late_uid = uid_of(late)[1]
    if result.assist:
        assert late_uid in {ref.sop_instance_uid for ref in result.evaluated_images}
    items = [i for i in _worklist(db) if i["study_instance_uid"] == study_uid]
    assert len(items) == 1 and items[0]["sr_sop_instance_uid"] == second_sr


# =========================================================================== a model that cannot load
def test_model_failing_to_load_gives_no_assist_srs_and_a_running_node(tmp_path: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    garbage = tmp_path / "garbage-model"
    garbage.mkdir()
    (garbage / "config.json").write_text("{ this is not a model config")
    (garbage / "model.safetensors").write_bytes(b"\x00garbage" * 512)
    cfg = node_config(tmp_path / "node", garbage)
    node = node_factory(cfg)
    chest = chest_image(tmp_path / "src" / "chest.dcm", patient_id="E2E-NOMODEL")
    lateral = synthetic_image(
        tmp_path / "src" / "lateral.dcm",
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view="LL",
        body_part="CHEST",
        age=60,
        study_uid=generate_uid(),
        patient_id="E2E-NOMODEL-LAT",
    )
    send_files(cfg.port, [chest, lateral])
    chest_uid, lateral_uid = uid_of(chest)[0], uid_of(lateral)[0]
    db = node.db
    wait_until(lambda: answered(db, [chest_uid, lateral_uid]), WAIT_S, "no-assist answers for both studies")

    for study_uid, reason in ((chest_uid, "model-unavailable"), (lateral_uid, "no-eligible-image")):
        row = worklist_row(db, study_uid)
        assert (row["assist"], row["reason"], row["priority"]) == (False, reason, "MEDIUM")
        assert [j.state for j in study_jobs(db, study_uid)] == ["done"]
        path = sr_path(cfg, db, study_uid)
        assert_valid_dicom(path)
        result = read_triage_sr(pydicom.dcmread(path))
        assert result.assist is False and result.no_assist_reason.value == reason
        assert "No AI assessment" in (result.no_assist_text or "")

    # The node lives on: it answers C-ECHO, its worker thread runs, it still stores.
    assert echoscu(cfg.port) == 0
    assert node.worker is not None and node.worker.alive
    audit = [json.loads(line) for line in cfg.audit_path.read_text().splitlines() if line.strip()]
    not_loaded = [e for e in audit if "model not loaded" in json.dumps(e)]
    assert not_loaded, "no model-not-loaded audit line"
    assert str(garbage) in json.dumps(not_loaded[0])  # it names what failed to load
    node.stop()


# =========================================================================== kill -9 during a job
def _slow_study(folder: Path, n: int) -> list[Path]:
    """One PA chest study of ``n`` large JPEG 2000 images: decoding them keeps the job running for
    seconds (one image is encoded, the others are copies with their own UIDs)."""
    study_uid, series_uid = generate_uid(), generate_uid()
    raw = chest_image(folder / "raw.dcm", patient_id="E2E-KILL", study_uid=study_uid, series_uid=series_uid, size=2048)
    ds = pydicom.dcmread(raw)
    ds.compress(JPEG2000Lossless)
    raw.unlink()
    paths = []
    for i in range(n):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        paths.append(folder / f"img{i}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.mark.slow
def test_kill_during_a_job_then_restart_completes_it_exactly_once(
    tmp_path: Path, tiny_model_dir: Path, serve_factory
) -> None:  # type: ignore[no-untyped-def]
    cfg = node_config(tmp_path / "node", tiny_model_dir)
    server = serve_factory(cfg)
    server.start()
    db = open_db(cfg.db_url)  # the server has migrated the schema by the time it listens

    sent: list[str] = []
    caught = None  # the job id seen running when the node was killed
    for attempt in range(3):  # bounded: a study whose job finished before we saw it run is no use
        files = _slow_study(tmp_path / f"src{attempt}", n=4)
        send_files(cfg.port, files, "-xv")
        study_uid = uid_of(files[0])[0]
        sent.append(study_uid)
        job = wait_until(
            lambda: next((j for j in study_jobs(db, study_uid) if j.state in ("running", "done")), None),
            WAIT_S,
            "the triage job to start",
            interval=0.02,
        )
        if job.state == "running":
            server.kill()
            caught = job.id
            break
    else:
        server.kill()  # the kill lands after completion: exactly-once must hold all the same

    if caught is not None:
        (job,) = study_jobs(db, sent[-1])
        assert job.state == "running" and job.attempts == 1, "the killed job should be left running"

    server.start()  # the restart takes back the dead worker's job
    for study_uid in sent:
        wait_until(
            lambda: [j.state for j in study_jobs(db, study_uid)] == ["done"],
            WAIT_S,
            f"the job to complete after the restart\n{server.output()}",
        )
    assert server.stop() == 0

    for study_uid in sent:
        (job,) = study_jobs(db, study_uid)
        assert job.state == "done"
        if job.id == caught:
            assert job.attempts == 2
        srs = sr_instances(db, study_uid)
        assert len(srs) == 1, srs
        on_disk = [
            p
            for p in (cfg.storage / study_uid).rglob("*.dcm")
            if pydicom.dcmread(p, stop_before_pixels=True).Modality == "SR"
        ]
        assert [p.stem for p in on_disk] == [srs[0][1]]
        items = [i for i in _worklist(db) if i["study_instance_uid"] == study_uid]
        assert len(items) == 1 and items[0]["sr_sop_instance_uid"] == srs[0][1]
        read_triage_sr(pydicom.dcmread(on_disk[0]))  # it reads back
    db.dispose()


# =========================================================================== the demo
@pytest.mark.slow
def test_demo_runs_and_says_its_model_is_random(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*cli_command(), "demo"],
        capture_output=True,
        text=True,
        timeout=300,
        env=node_env(TMPDIR=str(tmp_path)),
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "RANDOM TEST MODEL" in proc.stdout
    assert "MEAN NOTHING" in proc.stdout
    assert " LOW " not in proc.stdout
    # without --keep it prints no path that it then deletes, and says how to keep the data
    assert str(tmp_path) not in proc.stdout
    assert "triage-node demo --keep" in proc.stdout
