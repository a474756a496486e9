"""`triage-node evaluate` on a large cohort with stored embeddings: 10,000 studies, 1,000 bootstrap
resamples, the 13 findings of the cxr profile, subgroups by sex, age band, manufacturer, view,
modality and a `--by site` column.

    .venv/bin/python bench/evaluate.py                     # 10,000 studies, 1,000 resamples
    .venv/bin/python bench/evaluate.py --studies 2000 --bootstrap 200   # a quick look

What runs is the product's ``node.evaluate.run.run_evaluation`` end to end (labels.csv -> index
lookup -> DICOM headers read and selected with the profile -> kept embeddings -> ``policy.decide``
per study -> analysis -> metrics.json, scores.csv, report.html). Only the model is replaced: a
synthetic *text* tower (deterministic 1152-dim vectors per prompt). Every image embedding is
already stored, so no vision forward happens -- which is the situation the issue measures ("with
stored embeddings"); the bench asserts it.

Setup (not timed): a SQLite index with one DX study per patient, one small DICOM file per study
(headers are read from disk as in real use), and one 1152-dim float32 embedding per image, built
so that the finding scores depend on synthetic labels (AUROC 0.75-0.9, prevalence 5-30 %).

Also in the same run, the peer for the bootstrap: scikit-learn's ``roc_auc_score`` called once
per resample (the obvious implementation), for one finding, against our count-matrix bootstrap.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DIM = 1152
LOGIT_SCALE = 100.0


class SyntheticTextModel:
    """Just what evaluation needs from a model when every image embedding is kept."""

    def __init__(self) -> None:
        from node.triage.model import ModelIdentity

        self.identity = ModelIdentity("bench/synthetic-text", "bench", "b" * 64, 448, "cpu", "float32", True)
        self.logit_scale = LOGIT_SCALE
        self.batch_size = 32
        self.image_size = 448
        self.vision_calls = 0

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        out = []
        for p in prompts:
            seed = int.from_bytes(hashlib.sha256(p.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).normal(size=DIM)
            out.append(v / np.linalg.norm(v))
        return torch.tensor(np.array(out), dtype=torch.float32)

    def embed_images(self, batch):  # type: ignore[no-untyped-def]
        self.vision_calls += 1
        raise AssertionError("the bench stores every embedding: no image pass may happen")


def build(root: Path, n: int, seed: int) -> tuple[object, Path]:
    """The index, the files, the embeddings and labels.csv for ``n`` studies."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
    from sqlalchemy import insert

    from node.config import Settings
    from node.db.engine import Database
    from node.db.models import ImageEmbedding, Instance, Patient, Series, Study
    from node.triage.policy import embed_profile
    from node.triage.profiles import load_profile

    profile = load_profile(REPO / "config" / "profiles" / "cxr.toml")
    model = SyntheticTextModel()
    prompts = embed_profile(model, profile)  # type: ignore[arg-type]
    rng = np.random.default_rng(seed)
    settings = Settings.model_validate(
        {
            "node": {"data_dir": str(root / "data")},
            "storage": {"path": str(root / "storage")},
            "database": {"url": f"sqlite:///{root / 'index.db'}"},
            "triage": {"profiles_dir": str(REPO / "config/profiles")},
            "model": {"path": str(root / "no-model"), "device": "cpu"},
        }
    )
    db = Database(settings.database.url)
    now = datetime.now(UTC)
    keys = [f.key for f in profile.findings]
    prevalence = np.linspace(0.05, 0.30, len(keys))
    labels = (rng.random((n, len(keys))) < prevalence).astype(np.int8)
    in_mean = prompts.domain[0].numpy().astype(np.float64)
    x = rng.normal(size=(n, DIM)) * 0.02 + in_mean * 0.3
    for j, key in enumerate(keys):
        a, p = (v.numpy().astype(np.float64) for v in prompts.findings[key])
        direction = (p - a) / np.linalg.norm(p - a)
        effect = 0.02 + 0.02 * j / (len(keys) - 1)  # AUROC from about 0.75 to 0.9 across findings
        x += np.outer(labels[:, j] * effect + rng.normal(0, 0.01, n), direction)
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    sexes, makers, views = np.array(["F", "M", "O"]), np.array(["ACME", "Globex", "Initech"]), np.array(["PA", "AP"])
    sex = sexes[rng.choice(3, n, p=[0.49, 0.49, 0.02])]
    age = rng.integers(18, 95, n)
    maker, view = makers[rng.integers(0, 3, n)], views[rng.integers(0, 2, n)]
    site = np.array(["north", "south", "east"])[rng.integers(0, 3, n)]
    storage = Path(settings.storage.path)
    pix = np.zeros((8, 8), dtype=np.uint16).tobytes()
    patients, studies, series, instances, embeddings, rows = [], [], [], [], [], []
    for i in range(n):
        study_uid, series_uid, sop_uid = f"1.2.826.0.1.99.{i}.1", f"1.2.826.0.1.99.{i}.2", f"1.2.826.0.1.99.{i}.3"
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = DigitalXRayImageStorageForPresentation
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.PatientID, ds.PatientSex, ds.PatientAge = f"P{i}", str(sex[i]), f"{age[i]:03d}Y"
        ds.Modality, ds.BodyPartExamined, ds.ViewPosition, ds.Manufacturer = "DX", "CHEST", str(view[i]), str(maker[i])
        ds.Rows = ds.Columns = 8
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pix
        rel = f"{study_uid}/{series_uid}/{sop_uid}.dcm"
        (storage / study_uid / series_uid).mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(storage / rel, ds, enforce_file_format=True)
        patients.append(
            {"id": i + 1, "patient_id": f"P{i}", "issuer": "", "name": "", "birth_date": "", "sex": str(sex[i])}
        )
        studies.append(
            {
                "id": i + 1,
                "study_instance_uid": study_uid,
                "patient_pk": i + 1,
                "last_arrival_at": now,
                "stability_state": "stable",
                "instance_count": 1,
                "modalities": "DX",
            }
        )
        series.append(
            {
                "id": i + 1,
                "series_instance_uid": series_uid,
                "study_pk": i + 1,
                "modality": "DX",
                "series_number": 1,
                "body_part": "CHEST",
            }
        )
        instances.append(
            {
                "id": i + 1,
                "sop_instance_uid": sop_uid,
                "series_pk": i + 1,
                "sop_class_uid": DigitalXRayImageStorageForPresentation,
                "instance_number": 1,
                "transfer_syntax_uid": ExplicitVRLittleEndian,
                "size_bytes": 400,
                "path": rel,
                "received_at": now,
                "calling_ae": "BENCH",
            }
        )
        embeddings.append(
            {
                "sop_instance_uid": sop_uid,
                "study_instance_uid": study_uid,
                "series_instance_uid": series_uid,
                "weights_sha256": model.identity.weights_sha256,
                "preprocessing_version": profile.preprocessing.method,
                "dim": DIM,
                "vector": x[i].astype("<f4").tobytes(),
                "created_at": now,
                "patient_sex": str(sex[i]),
                "patient_age_years": float(age[i]),
                "manufacturer": str(maker[i]),
                "manufacturer_model": "",
                "station_name": "",
                "institution_name": "",
                "modality": "DX",
                "view_position": str(view[i]),
                "body_part": "CHEST",
            }
        )
        rows.append([study_uid, *[int(v) for v in labels[i]], str(site[i])])
    with db.session() as session, session.begin():
        for model_cls, values in (
            (Patient, patients),
            (Study, studies),
            (Series, series),
            (Instance, instances),
            (ImageEmbedding, embeddings),
        ):
            session.execute(insert(model_cls), values)
    db.dispose()
    labels_path = root / "labels.csv"
    with labels_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["study_instance_uid", *keys, "site"])
        w.writerows(rows)
    return settings, labels_path


def naive_bootstrap(scores: np.ndarray, labels: np.ndarray, b: int, seed: int) -> float:
    """The obvious stratified bootstrap: draw indices, call roc_auc_score, b times. Returns seconds."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    t0 = time.perf_counter()
    for _ in range(b):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        roc_auc_score(labels[idx], scores[idx])
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--studies", type=int, default=10_000)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", metavar="DIR", help="build in DIR and keep it (report.html for a screenshot)")
    args = ap.parse_args()

    from node import oplog

    oplog.configure("warning")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-evaluate-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _bench(args, root)
    finally:
        if not args.keep:  # a 10,000-study run leaves ~180 MB otherwise
            shutil.rmtree(root, ignore_errors=True)


def _bench(args: argparse.Namespace, root: Path) -> int:
    from node.evaluate.metrics import bootstrap_auroc, resamples, rng_for
    from node.evaluate.run import EvaluationOptions, run_evaluation

    t0 = time.perf_counter()
    settings, labels = build(root, args.studies, args.seed)
    setup_s = time.perf_counter() - t0

    import node.evaluate.report as report_module
    import node.evaluate.run as run_module

    stages: dict[str, float] = {}

    def timed(module, name: str, label: str) -> None:  # type: ignore[no-untyped-def]
        inner = getattr(module, name)

        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            t = time.perf_counter()
            try:
                return inner(*a, **k)
            finally:
                stages[label] = stages.get(label, 0.0) + time.perf_counter() - t

        setattr(module, name, wrapper)

    timed(run_module, "_gather", "read DICOM headers, select images (profile)")
    timed(run_module, "get_embeddings", "load kept embeddings (SQLite)")
    timed(run_module, "score_cohort", "score: policy.decide per study")
    timed(run_module, "analyse_cohort", "analyse: metrics, bootstrap, subgroups")
    timed(report_module, "write_report", "report.html (matplotlib PNGs)")

    model = SyntheticTextModel()
    opts = EvaluationOptions(
        labels=labels,
        out_dir=root / "evaluation",
        by=["site"],
        bootstrap=args.bootstrap,
        seed=args.seed,
        progress=False,
    )
    load_before = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    metrics = run_evaluation(settings, opts, model_loader=lambda *a, **k: model)
    total_s, cpu_s = time.perf_counter() - t0, time.process_time() - c0
    load_after = os.getloadavg()[0]
    assert model.vision_calls == 0 and metrics["n_studies"] == args.studies

    # the same analysis step alone, and the bootstrap peer, on the pneumothorax column of scores.csv
    rows = [r for r in csv.DictReader((root / "evaluation" / "scores.csv").open()) if r["finding"] == "pneumothorax"]
    s = np.array([float(r["score"]) for r in rows])
    y = np.array([int(r["label"]) for r in rows])
    t0 = time.perf_counter()
    for block in resamples(s, y, args.bootstrap, rng_for(args.seed, "bench")):
        bootstrap_auroc(block)
    ours_s = time.perf_counter() - t0
    naive_b = min(args.bootstrap, 200)
    naive_s = naive_bootstrap(s, y, naive_b, args.seed) * args.bootstrap / naive_b

    cpu = platform.processor() or platform.machine()
    print(
        f"machine: {os.cpu_count()} cores ({cpu}), torch threads {torch.get_num_threads()}, "
        f"python {platform.python_version()}; 1-min load average {load_before:.1f} before, "
        f"{load_after:.1f} after"
    )
    print(
        f"cohort: {args.studies} studies x 13 findings, {args.bootstrap} bootstrap resamples, "
        f"6 subgroup columns (setup {setup_s:.0f} s, not timed)"
    )
    print()
    print(f"{'step':<58} {'seconds':>9}")
    print(f"{'triage-node evaluate, end to end (run_evaluation)':<58} {total_s:>9.1f}")
    print(f"{'  the same, CPU seconds of this process (all threads)':<58} {cpu_s:>9.1f}")
    for label, seconds in stages.items():
        print(f"{'  ' + label:<58} {seconds:>9.1f}")
    print(f"{'  bootstrap AUROC, 1 finding, count matrices (ours)':<58} {ours_s:>9.2f}")
    print(
        f"{'  bootstrap AUROC, 1 finding, roc_auc_score per resample':<58} {naive_s:>9.2f}"
        + (f"  (extrapolated from {naive_b})" if naive_b < args.bootstrap else "")
    )
    print(f"{'  ratio sklearn loop / ours':<58} {naive_s / ours_s:>9.1f}x")
    auc = metrics["findings"]["pneumothorax"]
    print(
        f"\npneumothorax AUROC {auc['auroc']:.3f} CI {auc['auroc_ci'][0]:.3f}-{auc['auroc_ci'][1]:.3f}; "
        f"output in {root / 'evaluation'}"
        if args.keep
        else ""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
