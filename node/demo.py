"""`triage-node demo`: the whole path on a fresh machine, with no model download.

A node in a temp folder, a tiny *random* SigLIP built on the fly and loaded through the normal
loader, four synthetic studies sent by C-STORE (adult PA chest, lateral chest, child chest,
CT), then the worklist and each SR's summary. The model is random: its scores mean nothing,
and the banner, the worklist and the SRs all say so.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
import zlib
from datetime import date
from pathlib import Path
from typing import TypedDict

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

BANNER = """\
================================================================================
  triage-node DEMO -- RANDOM TEST MODEL
  The model below is a tiny SigLIP with random weights, built on the fly.
  Its scores MEAN NOTHING. Nothing here is a clinical result. Research use only.
================================================================================"""

REPO_PROFILES = Path(__file__).resolve().parents[1] / "config" / "profiles"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def synthetic_image(
    path: Path,
    *,
    modality: str,
    sop_class: str,
    view: str,
    body_part: str,
    age: int,
    study_uid: str,
    patient_id: str,
    rows: int = 256,
    cols: int = 256,
    number: int = 1,
    series_uid: str | None = None,
    photometric: str = "MONOCHROME2",
) -> Path:
    """A small but well-formed image with a smooth phantom and noise (seeded by patient and number)."""
    # zlib.crc32, not hash(): str hashes are salted per process, and the same patient and number
    # must give the same pixels in every run (a reproducible demo and test cohort).
    rng = np.random.default_rng(zlib.crc32(f"{patient_id}/{number}".encode()))
    yy, xx = np.mgrid[0:rows, 0:cols]
    phantom = 2000 * np.exp(-(((yy - rows / 2) / (rows / 3)) ** 2 + ((xx - cols / 2) / (cols / 4)) ** 2))
    pixels = np.clip(phantom + rng.normal(300, 40, (rows, cols)), 0, 4095).astype(np.uint16)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientSex = patient_id, f"DEMO^{patient_id}", "O"
    today = date.today()
    ds.StudyDate = today.strftime("%Y%m%d")
    ds.PatientBirthDate = f"{today.year - age:04d}0101"
    ds.PatientAge = f"{age:03d}Y"
    ds.StudyTime, ds.AccessionNumber, ds.StudyID = "120000", f"A{patient_id}", "1"
    ds.ReferringPhysicianName = ""
    ds.Modality, ds.BodyPartExamined = modality, body_part
    if view:
        ds.ViewPosition = view
    ds.SeriesNumber, ds.InstanceNumber = 1, number
    ds.Manufacturer = "demo-modality"
    ds.PatientOrientation = ["L", "F"] if modality in ("DX", "CR") else ""
    if modality in ("DX", "CR"):
        ds.ImagerPixelSpacing = [0.2, 0.2]
        ds.PresentationIntentType = "FOR PRESENTATION"
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelSpacing = [0.7, 0.7]
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def chest_study(folder: Path, patient_id: str, images: int = 1, size: int = 128) -> tuple[str, list[Path]]:
    """An adult PA chest DX study (one series, ``images`` instances) that the cxr profile accepts,
    written under ``folder``; returns (study UID, files). Used by the fault campaign and the tests
    that need "a study the node triages" without caring what is in it."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = [
        synthetic_image(
            folder / f"{patient_id}-{n}.dcm",
            modality="DX",
            sop_class=DigitalXRayImageStorageForPresentation,
            view="PA",
            body_part="CHEST",
            age=54,
            study_uid=study_uid,
            patient_id=patient_id,
            number=n,
            series_uid=series_uid,
            rows=size,
            cols=size,
        )
        for n in range(1, images + 1)
    ]
    return study_uid, paths


class _StudySpec(TypedDict):
    modality: str
    sop_class: str
    view: str
    body_part: str
    age: int


def demo_studies(folder: Path) -> dict[str, Path]:
    """Four studies, one folder each: what a real CXR triage node would be sent in a morning."""
    dx = DigitalXRayImageStorageForPresentation
    specs = {
        "adult PA chest (DX)": _StudySpec(modality="DX", sop_class=dx, view="PA", body_part="CHEST", age=54),
        "lateral chest (DX)": _StudySpec(modality="DX", sop_class=dx, view="LL", body_part="CHEST", age=61),
        "child PA chest (DX)": _StudySpec(modality="DX", sop_class=dx, view="PA", body_part="CHEST", age=7),
        "CT chest (3 slices)": _StudySpec(modality="CT", sop_class=CTImageStorage, view="", body_part="CHEST", age=70),
    }
    out = {}
    for n, (label, spec) in enumerate(specs.items(), start=1):
        d = folder / f"study{n}"
        d.mkdir(parents=True)
        study_uid, series_uid = generate_uid(), generate_uid()
        count = 3 if spec["modality"] == "CT" else 1
        for i in range(count):
            synthetic_image(
                d / f"img{i}.dcm",
                study_uid=study_uid,
                patient_id=f"DEMO{n}",
                number=i + 1,
                series_uid=series_uid,
                **spec,
            )
        out[label] = d
    return out


def wait_in_console(node, token: str) -> None:
    """``demo --keep``: leave the node running for the operator console until Ctrl-C (or SIGTERM)."""
    from node.console import console_url

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"\nOperator console: {console_url(node.settings.http.host, node.http_port)}  (log in with token {token})")
    print("The demo node keeps running for the console; Ctrl-C to stop.", flush=True)
    while not stop.wait(0.5):
        pass


def run_demo(keep: bool = False, timeout: float = 300.0) -> int:
    from dicom_sr import read_triage_sr
    from node import oplog
    from node.config import load_settings
    from node.db.engine import Database
    from node.dimse.scu import Destination, expand_paths, send
    from node.service import Node
    from node.store.read import instances_of_study
    from node.triage.tiny_model import build_tiny_siglip
    from node.worklist.rows import worklist

    print(BANNER, flush=True)
    root = Path(tempfile.mkdtemp(prefix="triage-node-demo-"))
    oplog.configure("warning")
    port = _free_port()
    where = f"in {root}" if keep else "in a temporary folder (deleted at the end; `triage-node demo --keep` keeps it)"
    print(f"\n[1/4] building a tiny random SigLIP {where} ...", flush=True)
    model_dir = build_tiny_siglip(root / "tiny-model")
    env = {
        "TRIAGE_NODE__NODE__DATA_DIR": str(root / "data"),
        "TRIAGE_NODE__STORAGE__PATH": str(root / "data" / "storage"),
        "TRIAGE_NODE__STORAGE__MIN_FREE_BYTES": "0",
        "TRIAGE_NODE__DATABASE__URL": f"sqlite:///{root / 'data' / 'index.db'}",
        "TRIAGE_NODE__AUDIT__PATH": str(root / "data" / "audit.jsonl"),
        "TRIAGE_NODE__DICOM__HOST": "127.0.0.1",
        "TRIAGE_NODE__HTTP__HOST": "127.0.0.1",
        "TRIAGE_NODE__HTTP__PORT": "0",
        "TRIAGE_NODE__DICOM__PORT": str(port),
        "TRIAGE_NODE__DICOM__ALLOWED_PEERS": '["DEMO_MODALITY"]',
        "TRIAGE_NODE__STABILITY__QUIET_SECONDS": "1",
        "TRIAGE_NODE__MODEL__PATH": f'"{model_dir}"',
        "TRIAGE_NODE__MODEL__DEVICE": "cpu",
        "TRIAGE_NODE__TRIAGE__PROFILES_DIR": f'"{REPO_PROFILES}"',
    }
    token = secrets.token_urlsafe(12)
    env["TRIAGE_NODE__HTTP__TOKEN"] = token  # the console (and DICOMweb) need it: printed for --keep
    settings = load_settings(None, env)
    node = Node(settings)
    node.start()
    try:
        print(
            f"[2/4] node TRIAGE_NODE listening on 127.0.0.1:{port}" + (f", data in {root / 'data'}" if keep else ""),
            flush=True,
        )
        studies = demo_studies(root / "studies")
        print("[3/4] sending four studies by C-STORE:", flush=True)
        for label, folder in studies.items():
            results = send(
                expand_paths([str(folder)]), Destination("TRIAGE_NODE", "127.0.0.1", port), calling_ae="DEMO_MODALITY"
            )
            ok = sum(r.status == 0 for r in results)
            print(f"      {label:<24} {ok}/{len(results)} instances acknowledged", flush=True)
        db = Database(settings.database.url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(worklist(db)) < len(studies):
            time.sleep(0.5)
        items = worklist(db)
        print(f"\n[4/4] worklist ({len(items)} studies, most urgent first) -- RANDOM TEST MODEL, scores mean nothing:")
        labels = {}
        for label, folder in studies.items():
            labels[str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).StudyInstanceUID)] = label
        for item in items:
            what = "AI assessment" if item["assist"] else f"no AI assessment: {item['reason']}"
            print(f"  {item['priority']:<6} {labels.get(item['study_instance_uid'], '?'):<24} {what}")
        print("\nSR summaries (read back from the stored SR files):")
        for item in items:
            stored = instances_of_study(db, item["study_instance_uid"], sop_uids=[item["sr_sop_instance_uid"]])[0]
            path = node.files.path(stored.path)
            result = read_triage_sr(node.files.read(stored.path))
            alg = result.algorithm
            print(
                f"- {labels.get(item['study_instance_uid'], '?')}: priority {result.priority}, "
                + ("assist" if result.assist else f"NO AI ASSESSMENT ({result.no_assist_text})")
            )
            print(
                f"    model {alg.model_id} (TEST MODEL: {alg.is_test_model}), weights sha256 {alg.weights_sha256[:16]}..., "
                f"profile {alg.profile_name} {alg.profile_version}, preprocessing {alg.preprocessing_version}"
            )
            for f in result.findings:
                print(f"    {f.finding.meaning:<28} {f.state.value:<14} score {f.score:.3f} (random model)")
            if keep:
                print(f"    SR file: {path}")
        print("\n" + BANNER)
        ok = len(items) == len(studies)
        if keep and node.http is not None:
            wait_in_console(node, token)
        return 0 if ok else 1
    finally:
        node.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
            print(
                "The demo's data (index, SR files, audit log) was deleted; run `triage-node demo --keep` to keep "
                "it and look at the files."
            )
        else:
            print(f"kept {root} (index.db, storage/ with the SR files, audit.jsonl)")
