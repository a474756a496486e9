"""One instance in, one status out: validate, write durably, index, then (and only then) Success.

Shared by every receiver (C-STORE now, STOW-RS later) so that rule 1 and rule 2 hold in one
place. Failure statuses (PS3.4 B.2.3): 0xA700 out of resources (disk floor, I/O error),
0xA701 data set larger than the configured limit, 0xA900 identifiers missing or not matching
the request, 0xC000 cannot understand (garbage / truncated), 0xC001 UID unsafe as a path.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian
from sqlalchemy.exc import IntegrityError, OperationalError

from node import metrics
from node.db.engine import Database
from node.oplog import get_logger, study_ref
from node.store.files import FileStore, UnsafeUID, encode_file_meta, relative_path
from node.store.header import BadDataset, DatasetTooLarge, InstanceHeader, instance_header, parse_header
from node.store.index import add_instance, instance_exists
from node.uids import is_valid_uid

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATASET_TOO_LARGE = 0xA701
IDENTIFIER_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
UNSAFE_UID = 0xC001

log = get_logger("ingest")


@dataclass(frozen=True)
class IngestOutcome:
    status: int
    reason: str = ""
    duplicate: bool = False
    header: InstanceHeader | None = None
    size: int = 0

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


class Ingestor:
    """Thread-safe: called from every association thread."""

    def __init__(self, db: Database, files: FileStore, *, max_dataset_bytes: int, min_free_bytes: int) -> None:
        self.db = db
        self.files = files
        self.max_dataset_bytes = max_dataset_bytes
        self.min_free_bytes = min_free_bytes
        # Two associations sending the same SOP Instance UID at once must not race on one path.
        self._inflight: set[str] = set()
        self._inflight_lock = threading.Condition()

    def store(
        self,
        file_meta: FileMetaDataset,
        dataset_bytes: bytes | bytearray | memoryview | io.BytesIO,
        *,
        calling_ae: str,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        touch_stability: bool = True,
    ) -> IngestOutcome:
        """Validate, write durably, index, and count the outcome for /metrics.

        ``dataset_bytes`` may be the BytesIO pynetdicom received into: it is read through a
        memoryview, never copied (a data set is held in memory once, not twice).
        """
        with _view(dataset_bytes) as view:
            outcome = self._store(
                file_meta,
                view,
                calling_ae=calling_ae,
                expected_sop_instance_uid=expected_sop_instance_uid,
                expected_sop_class_uid=expected_sop_class_uid,
                touch_stability=touch_stability,
            )
        self.count(outcome)
        return outcome

    @staticmethod
    def count(outcome: IngestOutcome) -> None:
        """The outcome in /metrics (also for refusals decided before the store, e.g. by the PDU guard)."""
        if not outcome.ok:
            metrics.INSTANCES_RECEIVED.labels("refused").inc()
        elif outcome.duplicate:
            metrics.INSTANCES_RECEIVED.labels("duplicate").inc()
        else:
            metrics.INSTANCES_RECEIVED.labels("stored").inc()
            metrics.BYTES_RECEIVED.inc(outcome.size)

    def _store(
        self,
        file_meta: FileMetaDataset,
        dataset_bytes: memoryview,
        *,
        calling_ae: str,
        expected_sop_instance_uid: str | None = None,
        expected_sop_class_uid: str | None = None,
        touch_stability: bool = True,
    ) -> IngestOutcome:
        size = len(dataset_bytes)
        if size > self.max_dataset_bytes:
            return IngestOutcome(DATASET_TOO_LARGE, f"data set of {size} bytes exceeds the limit")
        ts = str(file_meta.get("TransferSyntaxUID", ""))
        try:
            ds = parse_header(dataset_bytes, ts, max_inflated_bytes=self.max_dataset_bytes)
        except DatasetTooLarge as exc:
            return IngestOutcome(DATASET_TOO_LARGE, str(exc))
        except BadDataset as exc:
            return IngestOutcome(CANNOT_UNDERSTAND, str(exc))
        h = instance_header(ds)
        for label, uid in (
            ("SOPClassUID", h.sop_class_uid),
            ("SOPInstanceUID", h.sop_instance_uid),
            ("StudyInstanceUID", h.study_instance_uid),
            ("SeriesInstanceUID", h.series_instance_uid),
        ):
            if not uid:
                return IngestOutcome(IDENTIFIER_MISMATCH, f"{label} missing")
            if not is_valid_uid(uid):
                return IngestOutcome(UNSAFE_UID, f"{label} is not a valid UID")
        if expected_sop_instance_uid is not None and expected_sop_instance_uid != h.sop_instance_uid:
            return IngestOutcome(IDENTIFIER_MISMATCH, "SOPInstanceUID differs from the request's")
        if expected_sop_class_uid is not None and expected_sop_class_uid != h.sop_class_uid:
            return IngestOutcome(IDENTIFIER_MISMATCH, "SOPClassUID differs from the request's")
        try:
            rel = relative_path(h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid)
        except UnsafeUID as exc:
            return IngestOutcome(UNSAFE_UID, str(exc))

        with self._claim(h.sop_instance_uid):
            with self.db.session() as session:
                if instance_exists(session, h.sop_instance_uid):
                    return IngestOutcome(
                        SUCCESS, "duplicate SOP Instance UID: kept the first copy", duplicate=True, header=h
                    )
            try:
                if self.files.free_bytes() - size < self.min_free_bytes:
                    log.warning("disk_floor_refusal", free=self.files.free_bytes(), floor=self.min_free_bytes)
                    return IngestOutcome(OUT_OF_RESOURCES, "free disk space below the configured floor")
                header = encode_file_meta(file_meta)
                written = self.files.write(rel, header, dataset_bytes)
            except (OSError, ValueError) as exc:
                log.error("store_write_failed", error=type(exc).__name__, study_ref=study_ref(h.study_instance_uid))
                return IngestOutcome(OUT_OF_RESOURCES, f"cannot write the instance: {type(exc).__name__}")
            try:
                with self.db.write() as session:
                    added = add_instance(
                        self.db,
                        session,
                        h,
                        rel_path=rel.as_posix(),
                        size=written,
                        transfer_syntax_uid=ts,
                        calling_ae=calling_ae,
                        touch_stability=touch_stability,
                    )
            except IntegrityError:
                # Another receiver (process or host) indexed the same SOP Instance UID between
                # our check and our commit: its row is the first copy, ours is a duplicate.
                with self.db.session() as session:
                    if instance_exists(session, h.sop_instance_uid):
                        return IngestOutcome(
                            SUCCESS, "duplicate SOP Instance UID: kept the first copy", duplicate=True, header=h
                        )
                log.error("index_write_failed", error="IntegrityError", study_ref=study_ref(h.study_instance_uid))
                return IngestOutcome(OUT_OF_RESOURCES, "cannot index the instance")
            except OperationalError as exc:
                log.error("index_write_failed", error=type(exc).__name__, study_ref=study_ref(h.study_instance_uid))
                return IngestOutcome(OUT_OF_RESOURCES, "cannot index the instance")
        return IngestOutcome(SUCCESS, "" if added else "duplicate", duplicate=not added, header=h, size=written)

    def _claim(self, uid: str) -> AbstractContextManager[None]:
        ingestor = self

        class _Claim:
            def __enter__(self) -> None:
                with ingestor._inflight_lock:
                    while uid in ingestor._inflight:
                        ingestor._inflight_lock.wait()
                    ingestor._inflight.add(uid)

            def __exit__(self, *exc: object) -> None:
                with ingestor._inflight_lock:
                    ingestor._inflight.discard(uid)
                    ingestor._inflight_lock.notify_all()

        return _Claim()


@contextmanager
def _view(data: Any) -> Iterator[memoryview]:
    """A memoryview of the data set, released afterwards (a BytesIO cannot grow while one is out)."""
    if isinstance(data, io.BytesIO):
        with data.getbuffer() as view:
            yield view
    else:
        with memoryview(data) as view:
            yield view


def reindex_file(db: Database, files: FileStore, rel: Path) -> bool:
    """Index a stored file that has no row (crash between rename and commit). True if added."""
    import pydicom

    path = files.root / rel
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ts = str(ds.file_meta.TransferSyntaxUID)
    except Exception:
        return False
    h = instance_header(ds)
    if relative_path(h.study_instance_uid, h.series_instance_uid, h.sop_instance_uid) != rel:
        return False
    with db.write() as session:
        return add_instance(
            db, session, h, rel_path=rel.as_posix(), size=path.stat().st_size, transfer_syntax_uid=ts, calling_ae=""
        )


def encode_own_instance(ds: Dataset) -> tuple[FileMetaDataset, bytes]:
    """A data set the node made itself (SR, summary card, PDF), as :meth:`Ingestor.store` takes a
    received one: our file meta, the data set as Explicit VR Little Endian bytes."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return meta, buf.getvalue()
