"""Issue 9 end to end on a synthetic cohort sent over C-STORE to a real node (tiny random test model):
search by example and by text (CLI and HTTP), a linear probe learnt from labels the pixels really
encode, a profile scoring with that probe, and drift per stream (frozen reference, reference-like
images do not alert, inverted + noisy images do, a new manufacturer is a new stream).

The label is a bright disc in the image; the tiny model is random, so nothing here is clinical.
"""

from __future__ import annotations

import csv
import json
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from sqlalchemy import select

from dicom_sr import read_triage_sr
from node.demo import synthetic_image
from tests.support.config import NODE_AE, PROFILES_DIR, SCU_AE, NodeConfig, node_config
from tests.support.index import open_db, sr_instances, worklist_row
from tests.support.polling import wait_until
from tests.support.serve import cli_command, node_env

TOKEN = "issue9-token"
STREAM = "DX|ACME|Model A|ROOM1"
WAIT_S = 180
N_COHORT = 30


def make_image(path: Path, *, index: int, positive: bool, manufacturer: str = "ACME", drifted: bool = False) -> Path:
    """A PA chest DX of one stream; positives carry a large bright disc (the label, in the pixels);
    ``drifted`` inverts the grey levels and adds strong noise (a detector software update gone wrong)."""
    rng = np.random.default_rng(index)
    synthetic_image(
        path,
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view="PA",
        body_part="CHEST",
        age=40,
        study_uid=generate_uid(),
        patient_id=f"P9{index:04d}",
        rows=128,
        cols=128,
    )
    ds = pydicom.dcmread(path)
    ds.Manufacturer, ds.ManufacturerModelName, ds.StationName = manufacturer, "Model A", "ROOM1"
    ds.SoftwareVersions = "1.0"
    px = ds.pixel_array.astype(np.float64)
    if positive:
        yy, xx = np.mgrid[0:128, 0:128]
        cy, cx = rng.integers(40, 88, 2)
        px[(yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(22, 32) ** 2] = 4000
    if drifted:
        px = 4095 - px + rng.normal(0, 600, px.shape)
    ds.PixelData = np.clip(px, 0, 4095).astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Archive:
    cfg: NodeConfig
    node: object
    root: Path
    labels: Path
    studies: dict[str, int]  # study uid -> label
    sops: list[str]


def send_and_wait(node, cfg: NodeConfig, files: list[Path]) -> list[str]:  # type: ignore[no-untyped-def]
    from node.dimse.scu import Destination, send

    results = send(files, Destination(NODE_AE, "127.0.0.1", cfg.port), calling_ae=SCU_AE)
    assert all(r.status == 0 for r in results)
    uids = [str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) for f in files]
    wait_until(lambda: all(worklist_row(node.db, u) for u in uids), WAIT_S, "an SR for every study")
    return uids


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, module_node_factory) -> Archive:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("issue9")
    cfg = node_config(
        root / "node",
        tiny_model_dir,
        http={"enabled": True, "port": 0, "token": TOKEN},
        search={"refresh_seconds": 0.5},
        drift={"interval_seconds": 0.5, "reference_size": 20, "recent_size": 15, "min_recent": 12},
    )
    node = module_node_factory(cfg)
    (root / "src").mkdir()
    files = [make_image(root / "src" / f"a{i:03d}.dcm", index=i, positive=i % 2 == 0) for i in range(N_COHORT)]
    uids = send_and_wait(node, cfg, files)
    studies = {u: int(i % 2 == 0) for i, u in enumerate(uids)}
    labels = root / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_instance_uid", "pneumothorax"])
        w.writerows(studies.items())
    sops = [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    return Archive(cfg, node, root, labels, studies, sops)


def cli(cfg: NodeConfig, *args: str, ok: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*cli_command(), *args, "--config", str(cfg.config_path)],
        capture_output=True,
        text=True,
        env=node_env(),
        cwd=cfg.root,
        timeout=timeout,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def stored_vectors(cfg: NodeConfig) -> dict[str, np.ndarray]:
    from node.db.models import ImageEmbedding

    db = open_db(cfg.db_url)
    with db.session() as session:
        rows = session.execute(select(ImageEmbedding.sop_instance_uid, ImageEmbedding.vector)).all()
    db.dispose()
    return {sop: np.frombuffer(v, dtype="<f4").astype(np.float64) for sop, v in rows}


def http_get(node, path: str, token: str | None = TOKEN) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    request = urllib.request.Request(f"http://127.0.0.1:{node.http_port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


# ------------------------------------------------------------------------------------------- search


def test_search_like_and_text_match_the_stored_embeddings(archive: Archive, tiny_model_dir: Path) -> None:
    query = archive.sops[3]
    like = json.loads(cli(archive.cfg, "search", "--like", query, "--limit", "5", "--json").stdout)
    assert like[0]["sop_instance_uid"] == query and abs(like[0]["score"] - 1.0) < 1e-5
    assert [r["score"] for r in like] == sorted((r["score"] for r in like), reverse=True) and len(like) == 5
    assert {"sop_instance_uid", "study_instance_uid", "series_instance_uid", "score"} == set(like[0])

    from node.config import ModelSection
    from node.triage.model import load_model

    text = "large left pneumothorax"
    found = json.loads(cli(archive.cfg, "search", "--text", text, "--limit", "10", "--json").stdout)
    model = load_model(ModelSection(id="tiny", path=str(tiny_model_dir), device="cpu", offline=True))
    q = model.embed_texts([text])[0].double().numpy()
    direct = {sop: float(v @ q / np.linalg.norm(v)) for sop, v in stored_vectors(archive.cfg).items()}
    best = sorted(direct.items(), key=lambda kv: -kv[1])[:10]
    assert [r["sop_instance_uid"] for r in found] == [sop for sop, _ in best]
    for r in found:
        assert abs(r["score"] - direct[r["sop_instance_uid"]]) < 1e-5
    assert json.loads(cli(archive.cfg, "search", "--text", text, "--modality", "CT", "--json").stdout) == []
    bad = cli(archive.cfg, "search", "--like", "1.2.3.4.5", ok=False)
    assert bad.returncode == 2 and "no embedding" in bad.stderr


def test_http_search_needs_the_token(archive: Archive) -> None:
    query = archive.sops[5]
    path = f"/search?like={query}&limit=3"
    assert http_get(archive.node, path, token=None)[0] == 401
    assert http_get(archive.node, path, token="wrong")[0] == 401
    status, body = http_get(archive.node, path)
    assert status == 200, body
    rows = json.loads(body)
    assert rows[0]["sop_instance_uid"] == query and abs(rows[0]["score"] - 1.0) < 1e-5 and len(rows) == 3
    status, body = http_get(archive.node, "/search?text=pleural%20effusion&limit=4")
    assert status == 200 and len(json.loads(body)) == 4
    status, body = http_get(archive.node, f"/search?like={query}&limit=0")
    assert status == 400 and json.loads(body)["status"] == 400


# ------------------------------------------------------------------------------------------- probes


@pytest.fixture(scope="module")
def probe(archive: Archive) -> tuple[dict, Path]:
    out = archive.root / "profiles" / "probes" / "pneumothorax.json"
    proc = cli(
        archive.cfg,
        "probe",
        "train",
        "--labels",
        str(archive.labels),
        "--finding",
        "pneumothorax",
        "--out",
        str(out),
        "--bootstrap",
        "200",
        "--json",
    )
    assert "random test model" in proc.stderr
    return json.loads(proc.stdout), out


def test_probe_learns_what_the_pixels_encode(archive: Archive, probe: tuple[dict, Path], e2e_tiny_sha: str) -> None:
    summary, path = probe
    assert summary["finding"] == "pneumothorax" and summary["path"] == str(path)
    assert (summary["n_pos"], summary["n_neg"]) == (N_COHORT // 2, N_COHORT // 2)
    assert summary["cv_auroc"] > 0.9
    lo, hi = summary["cv_auroc_ci"]
    assert lo <= summary["cv_auroc"] <= hi
    doc = json.loads(path.read_text())
    import hashlib

    assert doc["weights_sha256"] == e2e_tiny_sha and doc["preprocessing_version"] == "tn-pre-1"
    assert doc["labels_file_sha256"] == hashlib.sha256(archive.labels.read_bytes()).hexdigest()
    assert doc["cohort"]["n_studies"] == N_COHORT and doc["cv"]["folds"] == 5
    assert len(doc["model"]["coef"]) == doc["embedding_dim"] == 32


def probe_profile(folder: Path, probe_ref: str) -> Path:
    """cxr.toml with the pneumothorax prompts replaced by ``probe = probe_ref``."""
    text = (PROFILES_DIR / "cxr.toml").read_text()
    start = text.index('key = "pneumothorax"')
    a = text.index("absent_prompts", start)
    b = text.index("threshold", start)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "cxr.toml"
    path.write_text(text[:a] + f'probe = "{probe_ref}"\n' + text[b:])
    return path


def test_profile_with_the_probe_scores_srs_as_the_probe_by_hand(
    archive: Archive,
    probe: tuple[dict, Path],
    tiny_model_dir: Path,
    node_factory,  # type: ignore[no-untyped-def]
    tmp_path: Path,
) -> None:
    from node.probes.probe import load_probe
    from node.triage.profiles import load_profile

    _, path = probe
    profiles = probe_profile(archive.root / "profiles", "probes/pneumothorax.json").parent
    cfg = node_config(tmp_path / "probe-node", tiny_model_dir, triage={"profiles_dir": profiles, "poll_seconds": 0.2})
    node = node_factory(cfg)
    files = [make_image(tmp_path / f"p{i}.dcm", index=500 + i, positive=i % 2 == 0) for i in range(6)]
    uids = send_and_wait(node, cfg, files)
    p = load_probe(path)
    vectors = stored_vectors(cfg)
    db = open_db(cfg.db_url)
    checked = 0
    for f, uid in zip(files, uids):
        row = worklist_row(db, uid)
        (rel,) = [r[3] for r in sr_instances(db, uid) if r[1] == row["sr_sop_instance_uid"]]
        result = read_triage_sr(pydicom.dcmread(cfg.storage / rel))
        assert f"pneumothorax={p.version}" in result.algorithm.probe_versions
        if not result.assist:
            continue
        (score,) = [x.score for x in result.findings if x.finding.value == "36118008"]
        sop = str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)
        assert abs(score - float(p.probabilities(vectors[sop][None, :])[0])) < 1e-6
        checked += 1
    db.dispose()
    assert checked >= 3

    # evaluate and profile tune treat the probe finding like a prompt finding
    from node.evaluate.run import EvaluationOptions, run_evaluation
    from node.evaluate.tune import tune_profile

    metrics = run_evaluation(
        archive.cfg.settings(),
        EvaluationOptions(
            labels=archive.labels,
            out_dir=tmp_path / "eval",
            profile_file=profiles / "cxr.toml",
            bootstrap=50,
            progress=False,
        ),
    )
    assert metrics["findings"]["pneumothorax"]["auroc"] > 0.9
    tuned = tune_profile(
        archive.cfg.settings(),
        tmp_path / "eval" / "metrics.json",
        "cxr",
        profiles / "tuned.toml",
        source=profiles / "cxr.toml",
        min_positives=10,
    )
    assert "pneumothorax" in tuned.tuned
    assert load_profile(profiles / "tuned.toml").finding("pneumothorax").probe.version == p.version


def test_a_probe_for_other_weights_or_preprocessing_is_refused(
    archive: Archive, probe: tuple[dict, Path], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from node.config import ConfigError
    from node.service import Node
    from node.triage.profiles import ProfileError, load_profile

    _, path = probe
    doc = json.loads(path.read_text())
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "other.json").write_text(json.dumps({**doc, "weights_sha256": "0" * 64}))
    cfg = node_config(
        tmp_path / "n", tiny_model_dir, triage={"profiles_dir": probe_profile(tmp_path / "p", "other.json").parent}
    )
    with pytest.raises(ConfigError, match="other.json"):
        Node(cfg.settings())
    (tmp_path / "q").mkdir()
    (tmp_path / "q" / "pre.json").write_text(json.dumps({**doc, "preprocessing_version": "google-dicom-1"}))
    with pytest.raises(ProfileError, match="pre.json"):
        load_profile(probe_profile(tmp_path / "q", "pre.json"))


# ------------------------------------------------------------------------------------------- drift


def drift_json(cfg: NodeConfig) -> dict[str, dict]:
    return {s["key"]: s for s in json.loads(cli(cfg, "drift", "--json").stdout)["streams"]}


def metric_value(node, name: str, stream: str) -> float | None:  # type: ignore[no-untyped-def]
    status, body = http_get(node, "/metrics")
    assert status == 200
    for line in body.splitlines():
        if line.startswith(f'{name}{{stream="{stream}"}} '):
            return float(line.split()[-1])
    return None


def metric_total(node, name: str) -> float:  # type: ignore[no-untyped-def]
    status, body = http_get(node, "/metrics")
    assert status == 200
    return next(float(line.split()[-1]) for line in body.splitlines() if line.startswith(f"{name} "))


def audit_lines(cfg: NodeConfig, what: str) -> list[dict]:
    lines = [json.loads(x) for x in cfg.audit_path.read_text().splitlines()]
    return [x for x in lines if x.get("outcome_desc", "") == f"{what}: {STREAM}"]


def test_drift_alerts_on_changed_images_only(archive: Archive, tmp_path: Path) -> None:
    cfg, node = archive.cfg, archive.node
    frozen = cli(cfg, "drift", "freeze", "--stream", STREAM)
    assert "last 20 images" in frozen.stdout
    assert cli(cfg, "drift", "freeze", "--stream", "CT|nobody||", ok=False).returncode == 2

    # more images like the reference: no alert (the false-alarm check)
    same = [make_image(tmp_path / f"s{i}.dcm", index=1000 + i, positive=i % 2 == 0) for i in range(15)]
    send_and_wait(node, cfg, same)
    s = drift_json(cfg)[STREAM]
    assert (s["n_reference"], s["n_recent"], s["reference"].split()[0]) == (20, 15, "frozen")
    assert s["p_value"] is not None and s["embedding_shift"] is not None and set(s["score_shift"])
    assert s["alert"] is False, s["reasons"]
    wait_until(lambda: metric_value(node, "triage_node_drift_alert", STREAM) == 0.0, 30, "the drift gauge at 0")

    # the same modality and manufacturer after a "software update" that inverts and adds noise: alert
    raised_before = len(audit_lines(cfg, "drift alert raised"))
    drifted = [make_image(tmp_path / f"d{i}.dcm", index=2000 + i, positive=i % 2 == 0, drifted=True) for i in range(15)]
    send_and_wait(node, cfg, drifted)
    s = drift_json(cfg)[STREAM]
    assert s["alert"] is True and s["p_value"] < 0.01
    assert any(r.startswith("embedding shift") for r in s["reasons"]), s["reasons"]
    wait_until(lambda: metric_value(node, "triage_node_drift_alert", STREAM) == 1.0, 30, "the drift gauge at 1")
    wait_until(lambda: len(audit_lines(cfg, "drift alert raised")) > raised_before, 30, "the audit event")
    runs = metric_total(node, "triage_node_drift_runs_total")
    wait_until(
        lambda: metric_total(node, "triage_node_drift_runs_total") >= runs + 3,
        30,
        "three more background runs with the alert standing ...",
    )
    assert metric_value(node, "triage_node_drift_alert", STREAM) == 1.0
    assert len(audit_lines(cfg, "drift alert raised")) == raised_before + 1  # ... and no second event

    # the modality back to what the reference looked like: the alert clears, once
    cleared_before = len(audit_lines(cfg, "drift alert cleared"))
    back = [make_image(tmp_path / f"b{i}.dcm", index=4000 + i, positive=i % 2 == 0) for i in range(15)]
    send_and_wait(node, cfg, back)
    wait_until(lambda: metric_value(node, "triage_node_drift_alert", STREAM) == 0.0, 30, "the drift gauge back at 0")
    wait_until(lambda: len(audit_lines(cfg, "drift alert cleared")) > cleared_before, 30, "the clearing audit event")
    assert drift_json(cfg)[STREAM]["alert"] is False
    assert len(audit_lines(cfg, "drift alert cleared")) == cleared_before + 1

    # a new manufacturer is a new stream, reported as such
    other = [
        make_image(tmp_path / f"n{i}.dcm", index=3000 + i, positive=False, manufacturer="Initech") for i in range(3)
    ]
    send_and_wait(node, cfg, other)
    n = drift_json(cfg)["DX|Initech|Model A|ROOM1"]
    assert n["new_stream"] is True and n["alert"] is False and n["n_reference"] == 3
    assert any("new stream" in r for r in n["reasons"])
