"""Synthetic DICOM instances that look like what a modality sends: patient, study, series,
equipment and image modules, structured pixel data (an ellipse "body", a few blobs) plus seeded
noise. Behind the ``dicom_factory`` fixtures."""

from __future__ import annotations

import datetime as _dt
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
DX_PRESENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


# --------------------------------------------------------------------------- synthetic DICOM
@dataclass(frozen=True)
class Patient:
    patient_id: str
    name: str
    birth_date: str
    sex: str


class DicomFactory:
    """Writes realistic-looking synthetic instances (Explicit VR Little Endian unless compressed).

    Headers carry what a modality sends: patient, study, series, equipment and image modules.
    Pixel data is structured (an ellipse "body" and a few blobs) plus seeded noise.
    """

    def __init__(self, root: Path, seed: int = 1234) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.rng = np.random.default_rng(seed)
        self._n = 0

    # ---- building blocks
    def patient(self, index: int | None = None) -> Patient:
        self._n += 1
        i = self._n if index is None else index
        return Patient(
            patient_id=f"PAT{i:05d}",
            name=f"TEST^PATIENT{i}^^MR",
            birth_date=f"19{50 + i % 40:02d}0{1 + i % 9}1{i % 10}",
            sex="MF"[i % 2],
        )

    @staticmethod
    def patient_of(path: Path) -> Patient:
        """The patient of an instance written earlier (for late instances of the same study)."""
        from pydicom import dcmread

        ds = dcmread(path, stop_before_pixels=True)
        return Patient(ds.PatientID, str(ds.PatientName), ds.PatientBirthDate, ds.PatientSex)

    def _base(
        self,
        sop_class: str,
        patient: Patient,
        study_uid: str,
        series_uid: str,
        modality: str,
        *,
        accession: str,
        study_desc: str,
        series_number: int,
        series_desc: str,
        body_part: str,
        instance_number: int,
        sop_uid: str | None = None,
    ) -> Dataset:
        now = _dt.datetime(2024, 3, 14, 9, 30, 0)
        sop_uid = sop_uid or generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        meta.ImplementationVersionName = "TRIAGE_TESTS"
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.AccessionNumber = accession
        ds.Modality = modality
        ds.Manufacturer = "SYNTHETIC MEDICAL"
        ds.InstitutionName = "LOOPBACK HOSPITAL"
        ds.ReferringPhysicianName = "REFERRER^ROBERT"
        ds.StationName = "TESTSTATION1"
        ds.StudyDescription = study_desc
        ds.SeriesDescription = series_desc
        ds.ManufacturerModelName = "tests.support.factory"
        ds.PatientName = patient.name
        ds.PatientID = patient.patient_id
        ds.IssuerOfPatientID = "LOOPBACK"
        ds.PatientBirthDate = patient.birth_date
        ds.PatientSex = patient.sex
        ds.BodyPartExamined = body_part
        ds.SoftwareVersions = "1.0"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = accession[-6:]
        ds.SeriesNumber = series_number
        ds.InstanceNumber = instance_number
        return ds

    def _pixels(self, rows: int, cols: int, bits_stored: int, phase: float) -> np.ndarray:
        yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
        yy = (yy - rows / 2) / rows
        xx = (xx - cols / 2) / cols
        top = (1 << bits_stored) - 1
        img = np.full((rows, cols), 0.05 * top, dtype=np.float32)
        body = (xx / 0.45) ** 2 + (yy / (0.35 + 0.05 * np.sin(phase))) ** 2 <= 1
        img[body] = 0.45 * top
        for cx in (-0.18, 0.18):
            img[((xx - cx) / 0.12) ** 2 + (yy / 0.2) ** 2 <= 1] = 0.15 * top
        img[(xx / 0.05) ** 2 + ((yy - 0.25) / 0.05) ** 2 <= 1] = 0.9 * top
        img += self.rng.normal(0, 0.01 * top, size=(rows, cols)).astype(np.float32)
        return np.clip(img, 0, top)

    @staticmethod
    def _set_pixels(
        ds: Dataset, arr: np.ndarray, bits_allocated: int, bits_stored: int, photometric: str = "MONOCHROME2"
    ) -> None:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = photometric
        ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
        ds.BitsAllocated = bits_allocated
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = 0
        dtype = "<u2" if bits_allocated == 16 else "u1"
        ds.PixelData = np.ascontiguousarray(arr).astype(dtype).tobytes()
        ds["PixelData"].VR = "OW" if bits_allocated == 16 else "OB"

    def _save(self, ds: Dataset, out_dir: Path, name: str) -> Path:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / name
        ds.save_as(path, enforce_file_format=True)
        return path

    # ---- public makers
    def ct_series(
        self,
        n: int = 30,
        *,
        size: int = 256,
        out_dir: str | Path = "ct",
        patient: Patient | None = None,
        study_uid: str | None = None,
        series_uid: str | None = None,
        start: int = 1,
    ) -> list[Path]:
        """An axial CT series of ``n`` slices (16-bit allocated, 12 stored, HU rescale)."""
        patient = patient or self.patient()
        study_uid = study_uid or generate_uid()
        series_uid = series_uid or generate_uid()
        for_uid = generate_uid()
        out = self.root / out_dir
        paths = []
        for i in range(start, start + n):
            ds = self._base(
                CT_IMAGE_STORAGE,
                patient,
                study_uid,
                series_uid,
                "CT",
                accession=f"ACC{zlib.crc32(study_uid.encode()) % 10**8:08d}",
                study_desc="CT CHEST WITH CONTRAST",
                series_number=2,
                series_desc="AXIAL 1.0mm",
                body_part="CHEST",
                instance_number=i,
            )
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.PatientPosition = "HFS"
            ds.KVP = 120
            ds.SliceThickness = 1.0
            ds.PixelSpacing = [0.78125, 0.78125]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [-100.0, -100.0, -float(i)]
            ds.SliceLocation = -float(i)
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            ds.WindowCenter = 40
            ds.WindowWidth = 400
            self._set_pixels(ds, self._pixels(size, size, 12, i / 10), 16, 12)
            paths.append(self._save(ds, out, f"CT{i:04d}.dcm"))
        return paths

    def dx_image(
        self,
        *,
        rows: int = 512,
        cols: int = 400,
        bits: int = 14,
        out_dir: str | Path = "dx",
        patient: Patient | None = None,
        name: str | None = None,
    ) -> Path:
        """A PA chest DX (For Presentation), one image in its own study."""
        patient = patient or self.patient()
        ds = self._base(
            DX_PRESENTATION_STORAGE,
            patient,
            generate_uid(),
            generate_uid(),
            "DX",
            accession=f"DX{self.rng.integers(10**7):08d}",
            study_desc="XR CHEST PA",
            series_number=1,
            series_desc="PA",
            body_part="CHEST",
            instance_number=1,
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ViewPosition = "PA"
        ds.PatientOrientation = ["L", "F"]
        ds.ImagerPixelSpacing = [0.15, 0.15]
        ds.DetectorType = "SCINTILLATOR"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        ds.PixelIntensityRelationship = "LOG"
        ds.PixelIntensityRelationshipSign = 1
        ds.WindowCenter = (1 << bits) // 2
        ds.WindowWidth = 1 << bits
        ds.LossyImageCompression = "00"
        ds.BurnedInAnnotation = "NO"
        self._set_pixels(ds, self._pixels(rows, cols, bits, 0.3), 16 if bits > 8 else 8, bits)
        return self._save(ds, self.root / out_dir, name or f"DX_{ds.SOPInstanceUID[-12:]}.dcm")

    def dx_images(self, n: int = 3, **kwargs: Any) -> list[Path]:
        return [self.dx_image(**kwargs) for _ in range(n)]

    def mr_small(
        self,
        n: int = 10,
        *,
        size: int = 64,
        out_dir: str | Path = "mr",
        patient: Patient | None = None,
        study_uid: str | None = None,
    ) -> list[Path]:
        """Small MR instances (two series in one study), 16-bit, ~8 KB each."""
        patient = patient or self.patient()
        study_uid = study_uid or generate_uid()
        series = [generate_uid(), generate_uid()]
        paths = []
        for i in range(n):
            ds = self._base(
                MR_IMAGE_STORAGE,
                patient,
                study_uid,
                series[i % 2],
                "MR",
                accession=f"MR{zlib.crc32(study_uid.encode()) % 10**8:08d}",
                study_desc="MR BRAIN",
                series_number=1 + i % 2,
                series_desc=("T1 AX", "T2 AX")[i % 2],
                body_part="HEAD",
                instance_number=i // 2 + 1,
            )
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "2D"
            ds.EchoTime = 15.0
            ds.RepetitionTime = 500.0
            ds.MagneticFieldStrength = 1.5
            ds.SliceThickness = 5.0
            ds.PixelSpacing = [3.5, 3.5]
            self._set_pixels(ds, self._pixels(size, size, 12, i), 16, 12)
            paths.append(self._save(ds, self.root / out_dir, f"MR{i:04d}.dcm"))
        return paths

    def compressed(self, transfer_syntax: str, *, out_dir: str | Path = "compressed") -> Path:
        """One image in a compressed transfer syntax, encoded by pydicom (RLE, JPEG 2000 lossless)."""
        if transfer_syntax not in (RLELossless, JPEG2000Lossless):
            raise ValueError("use jpeg_baseline() for JPEG baseline (dcmcjpeg)")
        path = self.ct_series(1, size=128, out_dir=out_dir)[0]
        from pydicom import dcmread

        ds = dcmread(path)
        ds.compress(transfer_syntax)
        target = path.with_name(f"{transfer_syntax.name.split()[0]}_{ds.SOPInstanceUID[-10:]}.dcm")
        ds.save_as(target, enforce_file_format=True)
        path.unlink()
        return target

    def jpeg_baseline(self, *, out_dir: str | Path = "compressed") -> Path:
        """An 8-bit DX compressed to JPEG Baseline (Process 1) by DCMTK's dcmcjpeg."""
        import subprocess

        src = self.dx_image(rows=256, cols=200, bits=8, out_dir=Path(out_dir) / "raw8")
        target = self.root / out_dir / f"JPEGBASE_{src.stem}.dcm"
        subprocess.run(["dcmcjpeg", "+eb", str(src), str(target)], check=True, capture_output=True, timeout=60)
        return target
