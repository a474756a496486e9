"""Where an instance is fsynced: temp file -> fsync -> rename -> fsync the folder (rule 1).

Layout: <root>/<study uid>/<series uid>/<sop uid>.dcm, every component a validated UID.
Temp files live in <root>/.incoming on the same filesystem, so the rename is atomic. Their names
start with the writing process's id (``owner``): several processes may share one storage path
(a shared volume), and a restarted process clears only its own leftovers, never a temp file
another process is writing right now.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info

from node.store.read import StoredFiles
from node.uids import is_valid_uid

INCOMING = ".incoming"
PREAMBLE = b"\x00" * 128 + b"DICM"


class UnsafeUID(ValueError):
    """A UID that must not name a path."""


def relative_path(study_uid: str, series_uid: str, sop_uid: str) -> Path:
    for label, uid in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid), ("SOPInstanceUID", sop_uid)):
        if not is_valid_uid(uid):
            raise UnsafeUID(f"{label} is not a valid UID")
    return Path(study_uid) / series_uid / f"{sop_uid}.dcm"


def encode_file_meta(file_meta: FileMetaDataset) -> bytes:
    """Part 10 preamble + file meta group, written exactly once per instance."""
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, file_meta, enforce_standard=True)
    return PREAMBLE + buf.getvalue()


class FileStore(StoredFiles):
    """The write side over the storage root; reads are StoredFiles' (node/store/read.py)."""

    def __init__(self, root: Path, *, fsync: bool = True, owner: str = "node") -> None:
        super().__init__(root)
        self.fsync = fsync
        self.owner = owner
        self.incoming = self.root / INCOMING
        self.incoming.mkdir(parents=True, exist_ok=True)
        self._fsync_dir(self.root)

    def free_bytes(self) -> int:
        return shutil.disk_usage(self.root).free

    def write(self, rel: Path, header: bytes, body: bytes | memoryview) -> int:
        """Write header+body durably at ``rel``; returns the size. Raises OSError on failure."""
        final = self.root / rel
        tmp = self.incoming / f"{self.owner}.{uuid.uuid4().hex}.part"
        size = 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
            try:
                for chunk in (header, body):
                    view = memoryview(chunk)
                    while view:
                        n = os.write(fd, view)
                        view = view[n:]
                        size += n
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            created = self._make_parents(final.parent)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if self.fsync:
            self._fsync_dir(final.parent)
            for directory in created:
                self._fsync_dir(directory.parent)
        return size

    def _make_parents(self, directory: Path) -> list[Path]:
        created: list[Path] = []
        for d in reversed([directory, *directory.parents]):
            if d == self.root or self.root not in d.parents:
                continue
            if not d.exists():
                d.mkdir(exist_ok=True)
                created.append(d)
        return created

    def _fsync_dir(self, directory: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def clear_incoming(self) -> int:
        """Remove this owner's half-written temp files left by a crash (never acknowledged, so never
        needed); other processes' temp files on a shared storage path are left alone."""
        removed = 0
        for tmp in self.incoming.glob(f"{self.owner}.*.part"):
            tmp.unlink(missing_ok=True)
            removed += 1
        return removed

    def iter_files(self) -> Iterator[Path]:
        """Every stored instance file, as paths relative to the root (for reconciliation)."""
        for study in self.root.iterdir():
            if study.name == INCOMING or not study.is_dir():
                continue
            for series in study.iterdir():
                if series.is_dir():
                    for f in series.iterdir():
                        if f.suffix == ".dcm":
                            yield f.relative_to(self.root)
