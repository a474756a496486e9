"""The store's read side (node/store/read.py) over instances stored by the real Ingestor: the one
"instances of a study" query (its order and filters) and the files it names, read back as
stored, as headers with pixel data deferred or left out, and with an unreadable file skipped."""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

from node.db.engine import Database
from node.demo import synthetic_image
from node.store.files import FileStore
from node.store.ingest import Ingestor, encode_own_instance
from node.store.read import StoredFiles, instances_by_uid, instances_of_studies, instances_of_study, study_headers


def _store(ingestor: Ingestor, path: Path) -> str:
    ds = pydicom.dcmread(path)
    meta, body = encode_own_instance(ds)
    outcome = ingestor.store(meta, body, calling_ae="TEST")
    assert outcome.ok, outcome
    return str(ds.SOPInstanceUID)


def _image(folder: Path, study: str, series: str, number: int, series_number: int) -> Path:
    path = synthetic_image(
        folder / f"{series[-6:]}-{number}.dcm",
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        view="PA",
        body_part="CHEST",
        age=50,
        study_uid=study,
        patient_id="P1",
        rows=32,
        cols=32,
        number=number,
        series_uid=series,
    )
    ds = pydicom.dcmread(path)
    ds.SeriesNumber = series_number
    ds.save_as(path, enforce_file_format=True)
    return path


def test_instances_of_a_study_in_reading_order_and_their_files(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    files = FileStore(tmp_path / "storage", fsync=False)
    ingestor = Ingestor(db, files, max_dataset_bytes=10_000_000, min_free_bytes=0)
    study, other_study = generate_uid(), generate_uid()
    second, first = generate_uid(), generate_uid()
    src = tmp_path / "src"
    src.mkdir()
    # Arrival order differs from reading order: series 2 first, and its instances backwards.
    sent = [_store(ingestor, _image(src, study, second, n, series_number=2)) for n in (2, 1)]
    sent += [_store(ingestor, _image(src, study, first, 1, series_number=1))]
    elsewhere = _store(ingestor, _image(src, other_study, generate_uid(), 1, series_number=1))

    rows = instances_of_study(db, study)
    assert [r.sop_instance_uid for r in rows] == [sent[2], sent[1], sent[0]]  # series 1, then 2 by number
    assert {r.study_instance_uid for r in rows} == {study}
    assert [r.series_instance_uid for r in rows] == [first, second, second]
    assert all(r.sop_class_uid == DigitalXRayImageStorageForPresentation for r in rows)
    assert [r.sop_instance_uid for r in instances_of_study(db, study, series_uid=second)] == [sent[1], sent[0]]
    assert [r.sop_instance_uid for r in instances_of_study(db, study, sop_uids=[sent[0], elsewhere])] == [sent[0]]
    assert len(instances_of_study(db, study, limit=2)) == 2
    assert instances_of_study(db, generate_uid()) == []
    with db.session() as session:  # inside a caller's transaction: the same answer
        assert instances_of_study(session, study) == rows

    both = instances_of_studies(db, [study, other_study, "1.2.3"])
    assert both[study] == rows and [r.sop_instance_uid for r in both[other_study]] == [elsewhere]
    assert both["1.2.3"] == []
    assert {r.sop_instance_uid for r in instances_by_uid(db, [elsewhere, sent[0], "1.2.3"])} == {elsewhere, sent[0]}

    reader = StoredFiles(files.root)
    assert reader.path(rows[0].path) == files.root / study / first / f"{sent[2]}.dcm"
    with reader.open(rows[0].path) as f:
        assert f.read()[128:132] == b"DICM"
    assert reader.read(rows[0].path).pixel_array.shape == (32, 32)
    assert "PixelData" not in reader.read_header(rows[0].path, stop_before_pixels=True)
    deferred = reader.read_header(rows[0].path)
    assert deferred.SOPInstanceUID == sent[2] and deferred.pixel_array.shape == (32, 32)  # read on first use

    reader.path(rows[1].path).write_bytes(b"not DICOM")  # a damaged file is skipped, the others stay
    headers = study_headers(db, reader, study)
    assert [str(h.SOPInstanceUID) for h in headers] == [sent[2], sent[0]]
    db.dispose()
