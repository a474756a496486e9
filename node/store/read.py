"""The read side of the store: which instances the index holds, and their files.

Every reader (the triage worker, Q/R, WADO-RS, the forwarder, the console, evaluation, drift)
asks here instead of joining the storage root with an index path or writing the "instances
of a study" query again: one order for a study's instances (series number, then instance
number, then arrival), one place that turns an index row into a file.

Reading never changes anything, so this module needs no lock and no transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.engine import Database
from node.db.models import Instance, Series, Study
from node.oplog import get_logger

log = get_logger("store")
_BATCH = 500  # UIDs per IN (...) list


@dataclass(frozen=True)
class StoredInstance:
    """One indexed instance; ``path`` is relative to the storage root (open it with StoredFiles)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str


#: The one query: instances with their study and series, in a study's reading order (callers
#: add their WHERE; StoredInstance takes a row as it comes).
_INSTANCES = (
    select(
        Study.study_instance_uid,
        Series.series_instance_uid,
        Instance.sop_instance_uid,
        Instance.sop_class_uid,
        Instance.transfer_syntax_uid,
        Instance.path,
    )
    .select_from(Instance)
    .join(Series, Instance.series_pk == Series.id)
    .join(Study, Series.study_pk == Study.id)
    .order_by(Study.id, Series.series_number, Series.id, Instance.instance_number, Instance.id)
)


@contextmanager
def _reading(source: Database | Session) -> Iterator[Session]:
    """A caller's session (to read inside its transaction), or a short one of its own."""
    if isinstance(source, Session):
        yield source
        return
    with source.session() as session:
        yield session


def instances_of_study(
    source: Database | Session,
    study_uid: str,
    *,
    series_uid: str | None = None,
    sop_uids: Sequence[str] | None = None,
    limit: int | None = None,
) -> list[StoredInstance]:
    """The study's instances in reading order, optionally of one series or only ``sop_uids``
    (at most 1000 of them); empty when the index has none. ``source`` is a Database, or the
    caller's Session to read inside its transaction."""
    stmt = _INSTANCES.where(Study.study_instance_uid == study_uid)
    if series_uid is not None:
        stmt = stmt.where(Series.series_instance_uid == series_uid)
    if sop_uids is not None:
        stmt = stmt.where(Instance.sop_instance_uid.in_(list(sop_uids)[:1000]))
    if limit is not None:
        stmt = stmt.limit(limit)
    with _reading(source) as session:
        return [StoredInstance(*row) for row in session.execute(stmt)]


def instances_of_studies(db: Database, study_uids: Sequence[str]) -> dict[str, list[StoredInstance]]:
    """Each study's instances in reading order (one query per 500 studies); a study the index
    does not hold maps to an empty list."""
    out: dict[str, list[StoredInstance]] = {uid: [] for uid in study_uids}
    uids = list(out)
    with db.session() as session:
        for start in range(0, len(uids), _BATCH):
            for row in session.execute(_INSTANCES.where(Study.study_instance_uid.in_(uids[start : start + _BATCH]))):
                out[row[0]].append(StoredInstance(*row))
    return out


def instances_by_uid(db: Database, sop_uids: Sequence[str]) -> list[StoredInstance]:
    """The indexed instances among ``sop_uids``, whatever their study (one query per 500)."""
    out: list[StoredInstance] = []
    uids = list(dict.fromkeys(sop_uids))
    with db.session() as session:
        for start in range(0, len(uids), _BATCH):
            out.extend(
                StoredInstance(*row)
                for row in session.execute(
                    _INSTANCES.where(Instance.sop_instance_uid.in_(uids[start : start + _BATCH]))
                )
            )
    return out


class StoredFiles:
    """The instance files under one storage root, read-only. ``rel`` is an index path
    (``Instance.path`` / ``OutboxItem.path``), written by the store and never taken from a peer."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, rel: str | Path) -> Path:
        """The file of an index path (for code that hands a path on, e.g. pynetdicom's C-STORE)."""
        return self.root / rel

    def open(self, rel: str | Path) -> IO[bytes]:
        """The stored bytes as received (Part 10), for streaming them unchanged."""
        return self.path(rel).open("rb")

    def read(self, rel: str | Path) -> Dataset:
        """The whole data set, pixel data included."""
        return pydicom.dcmread(self.path(rel))

    def read_header(
        self, rel: str | Path, *, stop_before_pixels: bool = False, specific_tags: Sequence[Any] | None = None
    ) -> Dataset:
        """The data set without loading pixel data: deferred (read from the file when first
        used) or, with ``stop_before_pixels``, left out."""
        if stop_before_pixels:
            return pydicom.dcmread(
                self.path(rel), stop_before_pixels=True, specific_tags=list(specific_tags) if specific_tags else None
            )
        return pydicom.dcmread(
            self.path(rel), defer_size=1024, specific_tags=list(specific_tags) if specific_tags else None
        )

    def read_headers(self, rels: Iterable[str | Path], *, stop_before_pixels: bool = False) -> list[Dataset]:
        """Headers of ``rels`` in order; an unreadable file is skipped (and logged without PHI)."""
        headers = []
        for rel in rels:
            try:
                headers.append(self.read_header(rel, stop_before_pixels=stop_before_pixels))
            except Exception as exc:
                log.warning("unreadable_instance", error=type(exc).__name__)
        return headers


def study_headers(
    db: Database, files: StoredFiles, study_uid: str, *, stop_before_pixels: bool = False, limit: int | None = None
) -> list[Dataset]:
    """The study's readable instances in reading order, pixel data not loaded (see read_header)."""
    return files.read_headers(
        [i.path for i in instances_of_study(db, study_uid, limit=limit)], stop_before_pixels=stop_before_pixels
    )


__all__ = [
    "StoredFiles",
    "StoredInstance",
    "instances_by_uid",
    "instances_of_studies",
    "instances_of_study",
    "study_headers",
]
