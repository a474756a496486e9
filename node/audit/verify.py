"""`triage-node audit verify`: recompute the chain and compare its end with the database head."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from node.audit.chain import GENESIS_HASH, entry_hash
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
    ts_last = ""
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
            ts_last = str(entry.get("ts", ""))
            if head is not None and seq == head.seq:
                hash_at_head = prev
            if head is not None and seq > head.seq:
                return VerifyResult(
                    False, count - 1, f"line {number} (seq {seq}): after the database head (seq {head.seq}): "
                    "a line not anchored by the node (appended outside it)", number)
    if head is not None:
        if head.seq > seq:
            if head.last_ts and ts_last and ts_last >= head.last_ts:
                # The log still ends with the head's event: lines were taken out before it.
                return VerifyResult(
                    False, count, f"log holds {seq} lines but the database head is seq {head.seq}, and its "
                    f"last line is the head's event: {head.seq - seq} line(s) were deleted before it "
                    "and the rest re-chained", None)
            return VerifyResult(
                False, count, f"log ends at seq {seq} (line {count}) but the database head is seq "
                f"{head.seq}: the tail was truncated", count + 1)
        if hash_at_head != head.hash:
            return VerifyResult(False, count, f"line with seq {head.seq} differs from the database head "
                                "(the log was rewritten)", head.seq)
    return VerifyResult(True, count, f"audit chain intact: {count} lines, head seq {seq}")
