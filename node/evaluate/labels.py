"""labels.csv: one row per study, one column per finding key (1, 0 or empty), any other column a
possible subgroup (``--by site``). Read strictly: a bad cell is an error naming line and column,
never a silently dropped study.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ID_COLUMNS", "LabelError", "LabelRow", "LabelTable", "read_labels"]

ID_COLUMNS = ("study_instance_uid", "accession_number")
_TRUE, _FALSE = {"1", "1.0"}, {"0", "0.0"}


class LabelError(ValueError):
    """labels.csv cannot be used; the message names the file, line and column."""


@dataclass(frozen=True)
class LabelRow:
    identifier: str  # a Study Instance UID or an Accession Number (LabelTable.id_column says which)
    labels: dict[str, float]  # finding key -> 1.0, 0.0 or nan (unknown)
    extra: dict[str, str]  # the --by columns


@dataclass(frozen=True)
class LabelTable:
    id_column: str
    findings: tuple[str, ...]  # the profile's finding keys that labels.csv has a column for
    rows: tuple[LabelRow, ...]


def read_labels(path: Path, finding_keys: Sequence[str], by: Sequence[str] = ()) -> LabelTable:
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise LabelError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        id_column = next((c for c in ID_COLUMNS if c in header), None)
        if id_column is None:
            raise LabelError(
                f"{path}: needs a column named study_instance_uid or accession_number "
                f"(has: {', '.join(header) or 'no header'})"
            )
        findings = tuple(k for k in finding_keys if k in header)
        if not findings:
            raise LabelError(
                f"{path}: no column for any finding of the profile (expected one or more of: {', '.join(finding_keys)})"
            )
        for column in by:
            if column not in header:
                raise LabelError(f"{path}: --by {column}: no such column (has: {', '.join(header)})")
        rows: list[LabelRow] = []
        seen: dict[str, int] = {}
        for line, raw in enumerate(reader, start=2):
            identifier = (raw.get(id_column) or "").strip()
            if not identifier:
                raise LabelError(f"{path}: line {line}: empty {id_column}")
            if identifier in seen:
                raise LabelError(f"{path}: line {line}: {id_column} already on line {seen[identifier]}")
            seen[identifier] = line
            labels: dict[str, float] = {}
            for key in findings:
                cell = (raw.get(key) or "").strip()
                if cell in _TRUE:
                    labels[key] = 1.0
                elif cell in _FALSE:
                    labels[key] = 0.0
                elif cell == "":
                    labels[key] = math.nan
                else:
                    raise LabelError(f"{path}: line {line}, column {key}: {cell!r} is not 1, 0 or empty")
            rows.append(LabelRow(identifier, labels, {c: (raw.get(c) or "").strip() or "unknown" for c in by}))
    if not rows:
        raise LabelError(f"{path}: no rows")
    return LabelTable(id_column, findings, tuple(rows))
