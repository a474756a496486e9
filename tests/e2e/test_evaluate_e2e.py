"""Issue 13 end to end: a labelled synthetic cohort sent over C-STORE to a real node with the tiny
test model; the worker keeps every embedding; `triage-node evaluate` scores the cohort from
those embeddings with the live triage math and writes metrics.json, scores.csv and report.html.

The label is really in the pixels (a bright disc in the positive studies), so the tiny random
model's scores differ by label and the numbers are not degenerate. They still mean nothing
clinically: the model is random.

Checked as a user would: AUROC == scikit-learn's on the command's own scores.csv, scores == the
SRs' scores, the CI holds its estimate, subgroup rows for sex and for a --by column, the report's
plots decode in headless Chromium, the same seed gives the same file, and a prompt change
re-scores the cohort with zero forward passes of the vision tower.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from sklearn.metrics import roc_auc_score

from dicom_sr import read_triage_sr
from node.demo import synthetic_image
from tests.support.config import NODE_AE, PROFILES_DIR, SCU_AE, NodeConfig, node_config
from tests.support.index import open_db, sr_instances, worklist_row
from tests.support.polling import wait_until
from tests.support.serve import cli_command, node_env

N_STUDIES = 32
FINDINGS = ("pneumothorax", "pleural_effusion")
WAIT_S = 180


def labelled_image(path: Path, *, index: int, positive: bool, sex: str) -> Path:
    """A PA chest DX; positives carry a bright disc of varying size (the label, encoded in the pixels).

    (For the tiny random model a disc lowers most finding scores: its AUROCs come out well below
    0.5, which is as good a test of the arithmetic as any; the model is random.)"""
    synthetic_image(
        path,
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view="PA",
        body_part="CHEST",
        age=30 + index,
        study_uid=generate_uid(),
        patient_id=f"EVAL{index:03d}",
        rows=128,
        cols=128,
    )
    ds = pydicom.dcmread(path)
    ds.PatientSex = sex
    ds.Manufacturer = "ACME" if index % 3 else "Globex"
    if positive:
        px = ds.pixel_array.astype(np.int32)
        yy, xx = np.mgrid[0:128, 0:128]
        radius = 6 + (index * 7) % 19  # 6..24 px: small discs overlap with the negatives
        cy, cx = 40 + (index % 5) * 8, 40 + (index % 7) * 6
        px[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = 4000
        ds.PixelData = px.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@dataclass
class Cohort:
    cfg: NodeConfig
    node: object
    labels: Path
    studies: dict[str, int]  # study uid -> label
    root: Path


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, module_node_factory) -> Cohort:  # type: ignore[no-untyped-def]
    from node.dimse.scu import Destination, send

    root = tmp_path_factory.mktemp("evaluate")
    cfg = node_config(root / "node", tiny_model_dir)
    node = module_node_factory(cfg)
    files, studies = [], {}
    (root / "src").mkdir()
    rows = []
    for i in range(N_STUDIES):
        positive = i % 2 == 0
        path = labelled_image(root / "src" / f"s{i:03d}.dcm", index=i, positive=positive, sex="MF"[i % 4 // 2])
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        files.append(path)
        studies[uid] = int(positive)
        # pleural_effusion: the same label, unknown for every fifth study (left out for that finding only)
        rows.append(
            {
                "study_instance_uid": uid,
                "pneumothorax": int(positive),
                "pleural_effusion": "" if i % 5 == 0 else int(positive),
                "site": "north" if i % 3 else "south",
            }
        )
    # Not dropped silently: a lateral view the profile does not take, and a study the node never got.
    lateral = synthetic_image(
        root / "src" / "lateral.dcm",
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view="LL",
        body_part="CHEST",
        age=60,
        study_uid=generate_uid(),
        patient_id="EVAL-LL",
        rows=64,
        cols=64,
    )
    lateral_uid = str(pydicom.dcmread(lateral, stop_before_pixels=True).StudyInstanceUID)
    files.append(lateral)
    rows += [
        {"study_instance_uid": lateral_uid, "pneumothorax": 1, "pleural_effusion": 0, "site": "north"},
        {"study_instance_uid": generate_uid(), "pneumothorax": 0, "pleural_effusion": 0, "site": "south"},
    ]
    results = send(files, Destination(NODE_AE, "127.0.0.1", cfg.port), calling_ae=SCU_AE)
    assert all(r.status == 0 for r in results)
    labels = root / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    db = node.db  # type: ignore[attr-defined]
    wait_until(lambda: all(worklist_row(db, uid) for uid in [*studies, lateral_uid]), WAIT_S, "an SR for every study")
    return Cohort(cfg, node, labels, studies, root)


def evaluate_cli(cfg: NodeConfig, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*cli_command(), "evaluate", "--config", str(cfg.config_path), *args],
        capture_output=True,
        text=True,
        env=node_env(),
        cwd=cfg.root,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def read_scores(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def scores_in_sr(path: Path) -> dict[str, float]:
    """Finding code value -> the Score NUM of its measurement group, read straight from the SR's content tree
    (highdicom's full parse takes seconds per SR; ``read_triage_sr`` cross-checks this on a few)."""
    from dicom_sr import codes

    out = {}

    def walk(items) -> None:  # type: ignore[no-untyped-def]
        for group in items:
            inner = group.get("ContentSequence", [])
            finding = [
                i.ConceptCodeSequence[0].CodeValue
                for i in inner
                if i.ValueType == "CODE" and i.ConceptNameCodeSequence[0].CodeValue == "121071"
            ]
            score = [
                float(i.MeasuredValueSequence[0].NumericValue)
                for i in inner
                if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == codes.SCORE.value
            ]
            if finding and score:
                out[finding[0]] = score[0]
            walk(inner)

    walk(pydicom.dcmread(path).ContentSequence)
    return out


def sr_scores(cohort: Cohort) -> dict[tuple[str, str], float]:
    """(study uid, finding key) -> the score the study's current SR states."""
    from node.triage.profiles import load_profile

    by_code = {f.code[0]: f.key for f in load_profile(PROFILES_DIR / "cxr.toml").findings}
    db = open_db(cohort.cfg.db_url)
    out = {}
    for n, uid in enumerate(cohort.studies):
        row = worklist_row(db, uid)
        (rel,) = [r[3] for r in sr_instances(db, uid) if r[1] == row["sr_sop_instance_uid"]]
        scores = scores_in_sr(cohort.cfg.storage / rel)
        if n < 2:
            result = read_triage_sr(pydicom.dcmread(cohort.cfg.storage / rel))
            full = {f.finding.value: f.score for f in result.findings}  # FloatingPointValue: more digits
            assert scores.keys() == full.keys() and all(abs(scores[k] - full[k]) < 1e-9 for k in full)
        for code, score in scores.items():
            out[(uid, by_code[code])] = score
    db.dispose()
    return out


@pytest.fixture(scope="module")
def first_run(cohort: Cohort) -> tuple[dict, Path]:
    out = cohort.root / "eval-1"
    proc = evaluate_cli(
        cohort.cfg,
        "--labels",
        str(cohort.labels),
        "--out",
        str(out),
        "--by",
        "site",
        "--bootstrap",
        "200",
        "--seed",
        "7",
        "--target-sensitivity",
        "0.9",
        "--json",
    )
    return json.loads(proc.stdout), out


def test_worker_kept_every_embedding(cohort: Cohort, e2e_tiny_sha: str) -> None:
    from sqlalchemy import select

    from node.db.models import ImageEmbedding

    db = open_db(cohort.cfg.db_url)
    with db.session() as session:
        rows = session.execute(select(ImageEmbedding)).scalars().all()
    db.dispose()
    assert {r.study_instance_uid for r in rows} == set(cohort.studies)
    assert {(r.weights_sha256, r.preprocessing_version, r.dim) for r in rows} == {(e2e_tiny_sha, "tn-pre-1", 32)}
    assert {r.patient_sex for r in rows} == {"M", "F"} and {r.manufacturer for r in rows} == {"ACME", "Globex"}


def test_evaluate_json_matches_sklearn_and_the_srs(cohort: Cohort, first_run: tuple[dict, Path]) -> None:
    metrics, out = first_run
    assert json.loads((out / "metrics.json").read_text()) == metrics
    for key in ("profile", "profile_version", "weights_sha256", "n_studies", "not_eligible", "findings"):
        assert key in metrics
    assert metrics["n_labelled"] == N_STUDIES + 2
    assert metrics["n_studies"] + sum(metrics["not_eligible"].values()) == N_STUDIES + 2
    assert metrics["not_eligible"].get("no-eligible-image") == 1 and metrics["not_eligible"].get("not-in-index") == 1
    assert metrics["n_studies"] >= N_STUDIES * 3 // 4, metrics["not_eligible"]
    assert len((out / "not_found.csv").read_text().splitlines()) == 2  # header + the unknown study
    rows = read_scores(out / "scores.csv")
    live = sr_scores(cohort)
    for key in FINDINGS:
        m = metrics["findings"][key]
        mine = [r for r in rows if r["finding"] == key]
        y = np.array([int(r["label"]) for r in mine])
        s = np.array([float(r["score"]) for r in mine])
        assert (m["n_pos"], m["n_neg"]) == (int(y.sum()), int((1 - y).sum()))
        assert len(set(s.round(6))) > len(s) // 2, "degenerate scores"
        assert abs(m["auroc"] - roc_auc_score(y, s)) < 1e-6
        lo, hi = m["auroc_ci"]
        assert lo <= m["auroc"] <= hi and hi - lo > 0
        for r in mine:
            assert abs(float(r["score"]) - live[(r["study_instance_uid"], key)]) < 1e-4
        for name in ("threshold", "sensitivity", "specificity", "ppv", "npv"):
            assert name in m["at_threshold"]
        for name in ("threshold", "indeterminate_band", "target_sensitivity", "sensitivity", "specificity"):
            assert name in m["suggested"]
        assert {"ece", "brier"} <= set(m)
        by = {row["by"] for row in m["subgroups"]}
        assert {"sex", "site"} <= by
        site = {row["value"]: row for row in m["subgroups"] if row["by"] == "site"}
        assert set(site) == {"north", "south"}
        assert sum(row["n_pos"] + row["n_neg"] for row in site.values()) == m["n_pos"] + m["n_neg"]
    # the unknown labels (every fifth study) are left out for pleural_effusion only
    pe, ptx = metrics["findings"]["pleural_effusion"], metrics["findings"]["pneumothorax"]
    assert pe["n_pos"] + pe["n_neg"] < ptx["n_pos"] + ptx["n_neg"]
    assert any("too few positives" in w for w in metrics["warnings"])  # 24 positives < 30: loud warning


def test_report_plots_render_in_headless_chromium(first_run: tuple[dict, Path], tmp_path: Path, require_tools) -> None:  # type: ignore[no-untyped-def]
    require_tools("chromium")  # scripts/test.sh installs it; under CI a missing one fails
    chromium = shutil.which("chromium")
    _, out = first_run
    html = (out / "report.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    assert html.count('src="data:image/png;base64,') >= 2 * len(FINDINGS)
    # The report has no script; a copy gets one that records, after load, whether every image decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(
        html.replace(
            "</body>",
            "<script>window.addEventListener('load', () => {"
            "const imgs = Array.from(document.images);"
            "document.title = 'decoded ' + imgs.filter(i => i.complete && i.naturalWidth > 0)"
            ".length + ' of ' + imgs.length;});</script></body>",
        )
    )
    proc = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--virtual-time-budget=10000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    import re

    m = re.search(r"<title>decoded (\d+) of (\d+)</title>", proc.stdout)
    assert m, proc.stdout[:500]
    assert int(m[1]) == int(m[2]) >= 2 * len(FINDINGS)


def test_same_seed_same_numbers(cohort: Cohort, first_run: tuple[dict, Path]) -> None:
    """In process this time (the CLI above is a thin wrapper): byte-identical files for the same seed."""
    from node.evaluate.run import EvaluationOptions, run_evaluation

    _, out1 = first_run
    out2 = cohort.root / "eval-2"
    run_evaluation(
        cohort.cfg.settings(),
        EvaluationOptions(
            labels=cohort.labels,
            out_dir=out2,
            by=["site"],
            bootstrap=200,
            seed=7,
            target_sensitivity=0.9,
            progress=False,
        ),
    )
    assert (out2 / "metrics.json").read_bytes() == (out1 / "metrics.json").read_bytes()
    assert (out2 / "scores.csv").read_bytes() == (out1 / "scores.csv").read_bytes()


def test_prompt_change_rescored_without_an_image_pass(cohort: Cohort, first_run: tuple[dict, Path]) -> None:
    """In process, to count forward calls of the vision tower (a hook on the loaded model)."""
    from node.evaluate.run import EvaluationOptions, run_evaluation
    from node.triage.model import load_model

    calls = {"vision": 0}

    def counting_loader(*args, **kwargs):  # type: ignore[no-untyped-def]
        model = load_model(*args, **kwargs)  # its warm-up forward happens here, before counting
        model.model.vision_model.register_forward_hook(lambda *_: calls.__setitem__("vision", calls["vision"] + 1))
        return model

    text = (PROFILES_DIR / "cxr.toml").read_text()
    assert 'present_prompts = ["apical pneumothorax"]' in text
    candidate = cohort.root / "candidate" / "cxr.toml"
    candidate.parent.mkdir()
    candidate.write_text(
        text.replace('present_prompts = ["apical pneumothorax"]', 'present_prompts = ["large pneumothorax"]')
    )
    settings = cohort.cfg.settings()
    out = cohort.root / "eval-prompt"
    run_evaluation(
        settings,
        EvaluationOptions(labels=cohort.labels, out_dir=out, profile_file=candidate, bootstrap=50, progress=False),
        model_loader=counting_loader,
    )
    assert calls["vision"] == 0
    before = {
        (r["study_instance_uid"], r["finding"]): float(r["score"]) for r in read_scores(first_run[1] / "scores.csv")
    }
    after = {(r["study_instance_uid"], r["finding"]): float(r["score"]) for r in read_scores(out / "scores.csv")}
    assert before.keys() == after.keys()
    moved = [k for k in after if abs(after[k] - before[k]) > 1e-9]
    assert moved and {f for _, f in moved} == {"pneumothorax"}  # only the changed prompt's finding moves

    # --no-embed names the studies lacking embeddings of a version instead of embedding them.
    named = cohort.root / "eval-no-embed"
    metrics = run_evaluation(
        settings,
        EvaluationOptions(
            labels=cohort.labels,
            out_dir=named,
            bootstrap=20,
            preprocessing=["google-dicom-1"],
            no_embed=True,
            progress=False,
        ),
        model_loader=counting_loader,
    )
    assert calls["vision"] == 0 and metrics["n_studies"] == 0
    assert metrics["not_eligible"]["embedding-missing"] == N_STUDIES
    assert len((named / "missing_embeddings.csv").read_text().splitlines()) == N_STUDIES + 1

    # The counter does count: a new preprocessing version embeds the cohort once, then never again.
    opts = EvaluationOptions(
        labels=cohort.labels,
        out_dir=cohort.root / "eval-google",
        bootstrap=50,
        preprocessing=["google-dicom-1", "tn-pre-1"],
        progress=False,
    )
    metrics = run_evaluation(settings, opts, model_loader=counting_loader)
    assert calls["vision"] > 0
    first_pass = calls["vision"]
    run_evaluation(settings, opts, model_loader=counting_loader)
    assert calls["vision"] == first_pass
    assert set(metrics["preprocessing"]) == {"google-dicom-1", "tn-pre-1"}
    g, t = (metrics["preprocessing"][v]["findings"]["pneumothorax"]["auroc"] for v in ("google-dicom-1", "tn-pre-1"))
    assert math.isfinite(g) and math.isfinite(t)
    assert "Preprocessing compared" in (cohort.root / "eval-google" / "report.html").read_text()


def sr_texts(path: Path) -> list[str]:
    """Every TEXT value in an SR's content tree."""
    out: list[str] = []

    def walk(items) -> None:  # type: ignore[no-untyped-def]
        for item in items:
            if item.get("ValueType") == "TEXT":
                out.append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(pydicom.dcmread(path).ContentSequence)
    return out


def current_sr(cfg: NodeConfig, db, uid: str) -> Path:  # type: ignore[no-untyped-def]
    row = worklist_row(db, uid)
    (rel,) = [r[3] for r in sr_instances(db, uid) if r[1] == row["sr_sop_instance_uid"]]
    return cfg.storage / rel


def test_tuned_profile_is_served_and_its_srs_say_calibrated(
    cohort: Cohort, first_run: tuple[dict, Path], tiny_model_dir: Path, node_factory
) -> None:  # type: ignore[no-untyped-def]
    import hashlib

    import httpx

    from dicom_sr import read_triage_sr
    from node.dimse.scu import Destination, send
    from node.triage.profiles import NOT_CALIBRATED_TEXT, load_profile

    metrics, out = first_run
    # The untuned node warned at start, and its SRs and worklist say "not calibrated".
    assert cohort.node.calibration_warnings == [f"triage profile cxr: {NOT_CALIBRATED_TEXT}"]  # type: ignore[attr-defined]
    uid = next(iter(cohort.studies))
    db = open_db(cohort.cfg.db_url)
    untuned = current_sr(cohort.cfg, db, uid)
    db.dispose()
    assert read_triage_sr(pydicom.dcmread(untuned)).algorithm.calibration == NOT_CALIBRATED_TEXT
    assert sr_texts(untuned).count(NOT_CALIBRATED_TEXT) == 13  # next to each finding's threshold
    listed = subprocess.run(
        [*cli_command(), "worklist", "--config", str(cohort.cfg.config_path), "--json"],
        capture_output=True,
        text=True,
        env=node_env(),
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert rows and all(r["calibrated"] is False and r["calibration"] == NOT_CALIBRATED_TEXT for r in rows)

    tuned_dir = cohort.root / "profiles-tuned"
    tuned_dir.mkdir()
    proc = subprocess.run(
        [
            *cli_command(),
            "profile",
            "tune",
            "--config",
            str(cohort.cfg.config_path),
            "--evaluation",
            str(out / "metrics.json"),
            "--profile",
            "cxr",
            "--out",
            str(tuned_dir / "cxr.toml"),
            "--min-positives",
            "5",
        ],
        capture_output=True,
        text=True,
        env=node_env(),
        cwd=cohort.root,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    sha = hashlib.sha256((out / "metrics.json").read_bytes()).hexdigest()
    tuned = load_profile(tuned_dir / "cxr.toml")
    suggested = metrics["findings"]["pneumothorax"]["suggested"]["threshold"]
    assert tuned.finding("pneumothorax").threshold == round(suggested, 4)

    cfg = node_config(
        cohort.root / "tuned-node",
        tiny_model_dir,
        triage={"profiles_dir": tuned_dir},
        http={"enabled": True, "host": "127.0.0.1", "port": 0},
    )
    node = node_factory(cfg)
    assert node.calibration_warnings == []
    (cohort.root / "src-tuned").mkdir()
    path = labelled_image(cohort.root / "src-tuned" / "t.dcm", index=1, positive=False, sex="F")
    study_uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
    assert all(r.status == 0 for r in send([path], Destination(NODE_AE, "127.0.0.1", cfg.port), calling_ae=SCU_AE))
    wait_until(lambda: worklist_row(node.db, study_uid), WAIT_S, "the SR of the tuned node")
    sr = current_sr(cfg, node.db, study_uid)
    result = read_triage_sr(pydicom.dcmread(sr))
    statement = result.algorithm.calibration
    assert statement.startswith("operating points calibrated on local data: evaluation sha256:" + sha[:16])
    assert f"{metrics['n_studies']} studies" in statement
    assert result.algorithm.profile_version == tuned.version
    # beside each threshold: "calibrated" for the two findings the evaluation tuned; the eleven it
    # did not label keep placeholder thresholds, and their SR groups say "not calibrated"
    texts = sr_texts(sr)
    assert texts.count(statement) == 2
    untuned = f"{NOT_CALIBRATED_TEXT} (not tuned by evaluation sha256:{sha[:16]})"
    assert texts.count(untuned) == 11
    by_key = {f.finding.value: f.calibration for f in result.findings}
    assert {k: by_key[tuned.finding(k).code[0]] for k in FINDINGS} == {k: "" for k in FINDINGS}
    row = worklist_row(node.db, study_uid)
    assert row["calibrated"] is True and row["calibration"] == statement
    assert sorted(f["calibration"] == statement for f in row["findings"]) == [False] * 11 + [True] * 2
    health = httpx.get(f"http://127.0.0.1:{node.http_port}/healthz", timeout=30).json()
    assert health["checks"]["calibration"]["cxr"] == {"calibrated": True, "statement": statement}
