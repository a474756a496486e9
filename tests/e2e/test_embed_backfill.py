"""`triage-node embed`: the missing embeddings of stored studies, batched, resumable after kill -9,
never computed twice for the same weights and preprocessing; and the store itself on SQLite and
PostgreSQL (same models, same migration).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pydicom
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid
from sqlalchemy import func, select

from node.demo import synthetic_image
from tests.support.config import NODE_AE, SCU_AE, node_config
from tests.support.index import open_db
from tests.support.polling import wait_until
from tests.support.serve import cli_command, node_env

N_IMAGES = 80


def count_rows(url: str, version: str | None = None) -> int:
    from node.db.models import ImageEmbedding

    db = open_db(url)
    try:
        with db.session() as session:
            q = select(func.count()).select_from(ImageEmbedding)
            if version:
                q = q.where(ImageEmbedding.preprocessing_version == version)
            return int(session.execute(q).scalar_one())
    finally:
        db.dispose()


def test_embed_backfills_batched_and_resumes_after_kill9(tmp_path: Path, tiny_model_dir: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    from node.dimse.scu import Destination, send

    # A node without a worker: studies are stored, nothing is embedded yet (as after an upgrade).
    cfg = node_config(tmp_path / "node", tiny_model_dir, triage={"enabled": False}, model={"batch_size": 1})
    node_factory(cfg)
    (tmp_path / "src").mkdir()
    files = [
        synthetic_image(
            tmp_path / "src" / f"{i}.dcm",
            modality="DX",
            sop_class=DigitalXRayImageStorageForPresentation,
            view="PA",
            body_part="CHEST",
            age=50,
            study_uid=generate_uid(),
            patient_id=f"B{i}",
            rows=96,
            cols=96,
        )
        for i in range(N_IMAGES)
    ]
    assert all(r.status == 0 for r in send(files, Destination(NODE_AE, "127.0.0.1", cfg.port), calling_ae=SCU_AE))
    assert count_rows(cfg.db_url) == 0

    cmd = [*cli_command(), "embed", "--config", str(cfg.config_path), "--all"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=node_env(), cwd=cfg.root)
    wait_until(
        lambda: count_rows(cfg.db_url) > 0 or proc.poll() is not None, 120, "the first kept embedding", interval=0.01
    )
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    partial = count_rows(cfg.db_url)
    assert 0 < partial < N_IMAGES, f"kill -9 came too late ({partial} rows)"

    done = subprocess.run(cmd, capture_output=True, text=True, env=node_env(), cwd=cfg.root, timeout=300)
    assert done.returncode == 0, done.stderr
    assert count_rows(cfg.db_url) == N_IMAGES
    assert f"{N_IMAGES - partial} images embedded now, {partial} already kept" in done.stdout
    assert "embedding for cxr (tn-pre-1)" in done.stderr  # the progress bar, on stderr

    again = subprocess.run(cmd, capture_output=True, text=True, env=node_env(), cwd=cfg.root, timeout=300)
    assert f"0 images embedded now, {N_IMAGES} already kept" in again.stdout
    # another preprocessing version is kept apart, under its own name
    other = subprocess.run(
        [*cmd, "--preprocessing", "google-dicom-1"],
        capture_output=True,
        text=True,
        env=node_env(),
        cwd=cfg.root,
        timeout=300,
    )
    assert other.returncode == 0, other.stderr
    assert count_rows(cfg.db_url, "google-dicom-1") == N_IMAGES and count_rows(cfg.db_url) == 2 * N_IMAGES
    bad = subprocess.run(
        [*cli_command(), "embed", "--config", str(cfg.config_path)],
        capture_output=True,
        text=True,
        env=node_env(),
        cwd=cfg.root,
        timeout=120,
    )
    assert bad.returncode == 2 and "--all" in bad.stderr


def test_store_round_trip_and_idempotent_put(db_url: str) -> None:
    from node.db.engine import Database
    from node.embeddings import get_embeddings, put_embeddings
    from node.embeddings.store import existing_sop_uids

    db = Database(db_url)
    try:
        study = generate_uid()
        images = []
        for i, (sex, age) in enumerate((("F", "034Y"), ("M", "070Y"), ("", ""))):
            ds = pydicom.Dataset()
            ds.SOPInstanceUID, ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), study, generate_uid()
            ds.PatientSex, ds.PatientAge, ds.Manufacturer, ds.ViewPosition, ds.Modality = sex, age, f"M{i}", "PA", "DX"
            ds.InstitutionName, ds.StationName, ds.ManufacturerModelName = "General", f"ST{i}", "X-1"
            images.append(ds)
        vectors = np.random.default_rng(0).normal(size=(3, 1152)).astype(np.float32)
        put_embeddings(db, images, vectors, weights_sha256="a" * 64, preprocessing_version="tn-pre-1")
        put_embeddings(db, images, vectors + 1, weights_sha256="a" * 64, preprocessing_version="tn-pre-1")  # ignored
        put_embeddings(db, images[:1], vectors[:1] * 2, weights_sha256="b" * 64, preprocessing_version="tn-pre-1")
        uids = [str(ds.SOPInstanceUID) for ds in images]
        got = get_embeddings(db, uids, weights_sha256="a" * 64, preprocessing_version="tn-pre-1")
        assert set(got) == set(uids)
        for i, uid in enumerate(uids):
            assert got[uid].vector.dtype == np.float32 and np.array_equal(got[uid].vector, vectors[i])
            assert got[uid].study_instance_uid == study
        facts = got[uids[0]].facts
        assert (
            facts.sex,
            facts.age_years,
            facts.manufacturer,
            facts.view_position,
            facts.institution_name,
            facts.station_name,
            facts.manufacturer_model,
            facts.modality,
        ) == ("F", 34.0, "M0", "PA", "General", "ST0", "X-1", "DX")
        assert got[uids[2]].facts.age_years is None and got[uids[2]].facts.sex == ""
        other = get_embeddings(db, uids, weights_sha256="b" * 64, preprocessing_version="tn-pre-1")
        assert list(other) == uids[:1] and np.array_equal(other[uids[0]].vector, vectors[0] * 2)
        assert existing_sop_uids(db, uids, weights_sha256="b" * 64, preprocessing_version="google-dicom-1") == set()
    finally:
        db.dispose()
