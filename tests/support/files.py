"""Reading and crafting the files a test sends and the node keeps: the data set part of a Part-10
file, its UIDs, what lies in the storage folder, and raw Part-10 files with any UIDs at all."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from pydicom import config as pydicom_config
from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dsutils import split_dataset


def dataset_bytes(path: Path) -> bytes:
    """The data set part of a Part-10 file: everything after the file meta group."""
    _, offset = split_dataset(Path(path))
    return Path(path).read_bytes()[offset:]


def file_transfer_syntax(path: Path) -> str:
    meta, _ = split_dataset(Path(path))
    return str(meta.TransferSyntaxUID)


def file_sop_uid(path: Path) -> str:
    meta, _ = split_dataset(Path(path))
    return str(meta.MediaStorageSOPInstanceUID)


def stored_files(storage_root: Path) -> dict[str, Path]:
    """SOP Instance UID -> stored file, for every .dcm under storage (temp folder excluded)."""
    root = Path(storage_root)
    if not root.exists():
        return {}
    return {p.stem: p for p in root.rglob("*.dcm") if ".incoming" not in p.relative_to(root).parts}


def incoming_files(storage_root: Path) -> list[Path]:
    folder = Path(storage_root) / ".incoming"
    return sorted(folder.iterdir()) if folder.exists() else []


def all_files(root: Path) -> set[Path]:
    return {p for p in Path(root).rglob("*") if p.is_file()}


def write_raw_part10(path: Path, *, sop_class: str, sop_uid: str, transfer_syntax: str, body: bytes) -> Path:
    """A Part-10 file whose data set part is exactly ``body`` (no check of either), for crafted sends."""
    meta = FileMetaDataset()
    with unchecked_uids():
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = transfer_syntax
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        buf = DicomBytesIO()
        buf.is_little_endian, buf.is_implicit_VR = True, False
        write_file_meta_info(buf, meta, enforce_standard=True)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00" * 128 + b"DICM" + buf.getvalue() + body)
    return path


@contextlib.contextmanager
def unchecked_uids() -> Iterator[None]:
    """Let pydicom and pynetdicom carry non-conformant UIDs (the node must be the one to refuse)."""
    settings = pydicom_config.settings
    saved = (
        settings.reading_validation_mode,
        settings.writing_validation_mode,
        pynetdicom_config.ENFORCE_UID_CONFORMANCE,
    )
    settings.reading_validation_mode = pydicom_config.IGNORE
    settings.writing_validation_mode = pydicom_config.IGNORE
    pynetdicom_config.ENFORCE_UID_CONFORMANCE = False
    try:
        yield
    finally:
        (
            settings.reading_validation_mode,
            settings.writing_validation_mode,
            pynetdicom_config.ENFORCE_UID_CONFORMANCE,
        ) = saved
