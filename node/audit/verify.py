"""`triage-node audit verify`: recompute the chain and compare its end with the database head.

Each process writes its own audit file (per host when several hosts share one database), each
with its own head row; verify checks every file the database names, so a deleted or truncated
file of any process is found from one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from node.audit.chain import GENESIS_HASH, entry_hash
from sqlalchemy import select

from node.db.engine import Database
from node.db.models import AuditHead


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    lines: int
    message: str
    bad_line: int | None = None  # 1-based line number of the first problem


def verify_log(path: Path, database: Database | None) -> VerifyResult:
    path = Path(path)
    if not path.exists():
        return VerifyResult(False, 0, f"audit log {path} does not exist")
    head: AuditHead | None = None
    if database is not None:
        with database.session() as session:
            head = session.get(AuditHead, str(path.resolve()))
    hash_at_head: str | None = None
    prev = GENESIS_HASH
    seq = 0
    count = 0
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                return VerifyResult(False, count, f"line {number}: empty line inside the log", number)
            try:
                entry = json.loads(raw)
            except ValueError:
                return VerifyResult(False, count, f"line {number}: not valid JSON (torn or edited)", number)
            if not isinstance(entry, dict) or "hash" not in entry or "seq" not in entry:
                return VerifyResult(False, count, f"line {number}: not an audit entry", number)
            if entry.get("prev_hash") != prev:
                return VerifyResult(
                    False, count, f"line {number} (seq {entry['seq']}): previous-hash link broken "
                    "(a line before it was removed, reordered or edited)", number)
            if entry_hash(entry) != entry["hash"]:
                return VerifyResult(False, count, f"line {number} (seq {entry['seq']}): content does not match "
                                    "its hash (edited)", number)
            if entry["seq"] != seq + 1:
                return VerifyResult(False, count, f"line {number}: sequence {entry['seq']} follows {seq}", number)
            prev, seq, count = entry["hash"], entry["seq"], count + 1
            if head is not None and seq == head.seq:
                hash_at_head = prev
    if head is not None:
        if head.seq > seq:
            return VerifyResult(
                False, count, f"log ends at seq {seq} (line {count}) but the database head is seq "
                f"{head.seq}: the tail was truncated", count + 1)
        if hash_at_head != head.hash:
            return VerifyResult(False, count, f"line with seq {head.seq} differs from the database head "
                                "(the log was rewritten)", head.seq)
    return VerifyResult(True, count, f"audit chain intact: {count} lines, head seq {seq}")


def audit_paths(database: Database | None, own: Path, extra: tuple[Path, ...] = ()) -> list[Path]:
    """Every audit file of the deployment: ours, those listed in the config, and those named in
    the database's audit_head table (one row per file, written by each process as it logs)."""
    seen: dict[str, Path] = {}
    for path in (own, *extra):
        seen.setdefault(str(Path(path).resolve()), Path(path))
    if database is not None:
        with database.session() as session:
            for log_path in session.scalars(select(AuditHead.log_path).order_by(AuditHead.log_path)):
                seen.setdefault(str(Path(log_path).resolve()), Path(log_path))
    return list(seen.values())


def verify_all(paths: list[Path], database: Database | None) -> list[tuple[Path, VerifyResult]]:
    """Verify each audit file against its own head row; a file named but absent here fails
    (run the command on the host that writes it, or mount it and list it in audit.verify_paths)."""
    return [(path, verify_log(path, database)) for path in paths]
