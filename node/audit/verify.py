"""`triage-node audit verify`: recompute the chain and compare its end with the database head.

Each process writes its own audit file (per host when several hosts share one database), each
with its own head row; verify checks every file the database names, so a deleted or truncated
file of any process is found from one place.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from node.audit.chain import GENESIS_HASH, entry_hash
from node.db.engine import Database
from node.db.models import AuditHead


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    lines: int
    message: str
    bad_line: int | None = None  # 1-based line number of the first problem


def verify_log(path: Path, database: Database | None, *, key: str | None = None) -> VerifyResult:
    """Check one file's chain and, with a database, its end against the head row ``key``
    (default: this host's row for ``path``, else a row from before rows named the host)."""
    path = Path(path)
    if not path.exists():
        return VerifyResult(False, 0, f"audit log {path} does not exist")
    head: AuditHead | None = None
    if database is not None:
        with database.session() as session:
            for candidate in [key] if key else [head_key(socket.gethostname(), path), str(path.resolve())]:
                head = session.get(AuditHead, candidate)
                if head is not None:
                    break
    hash_at_head: str | None = None
    pending_line: int | None = None
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
                    False,
                    count,
                    f"line {number} (seq {entry['seq']}): previous-hash link broken "
                    "(a line before it was removed, reordered or edited)",
                    number,
                )
            if entry_hash(entry) != entry["hash"]:
                return VerifyResult(
                    False,
                    count,
                    f"line {number} (seq {entry['seq']}): content does not match its hash (edited)",
                    number,
                )
            if entry["seq"] != seq + 1:
                return VerifyResult(False, count, f"line {number}: sequence {entry['seq']} follows {seq}", number)
            prev, seq, count = entry["hash"], entry["seq"], count + 1
            ts_last = str(entry.get("ts", ""))
            if head is not None and seq == head.seq:
                hash_at_head = prev
            if head is not None and seq == head.seq + 1 and prev == head.pending_hash and hash_at_head == head.hash:
                pending_line = number  # the node's own line, its head commit cut off by a crash
                continue
            if head is not None and seq > head.seq:
                return VerifyResult(
                    False,
                    count - 1,
                    f"line {number} (seq {seq}): after the database head (seq {head.seq}): "
                    "a line not anchored by the node (appended outside it)",
                    number,
                )
    if head is not None:
        if head.seq > seq:
            if head.last_ts and ts_last and ts_last >= head.last_ts:
                # The log still ends with the head's event: lines were taken out before it.
                return VerifyResult(
                    False,
                    count,
                    f"log holds {seq} lines but the database head is seq {head.seq}, and its "
                    f"last line is the head's event: {head.seq - seq} line(s) were deleted before it "
                    "and the rest re-chained",
                    None,
                )
            return VerifyResult(
                False,
                count,
                f"log ends at seq {seq} (line {count}) but the database head is seq {head.seq}: the tail was truncated",
                count + 1,
            )
        if hash_at_head != head.hash:
            return VerifyResult(
                False,
                count,
                f"line with seq {head.seq} differs from the database head (the log was rewritten)",
                head.seq,
            )
    if pending_line is not None:
        return VerifyResult(
            True,
            count,
            f"audit chain intact: {count} lines, head seq {seq} (line "
            f"{pending_line} written by the node just before it stopped, not yet anchored: "
            "its hash is the one the node committed before writing it)",
        )
    return VerifyResult(True, count, f"audit chain intact: {count} lines, head seq {seq}")


def head_key(host: str, path: Path | str) -> str:
    """The audit_head row of one audit file: the host that writes it and its absolute path there
    (containers all write /data/audit.jsonl, so the path alone does not name a file)."""
    return f"{host}:{Path(path).resolve()}"


def _split_key(key: str) -> tuple[str | None, str]:
    """(host, path); rows written before keys named the host are a bare path (host None)."""
    if key.startswith("/"):
        return None, key
    host, _, path = key.partition(":")
    return host, path


def _file_host(path: Path) -> str | None:
    """The host named in the file's first entry (``source.host``), None when unreadable."""
    try:
        with open(path, "rb") as f:
            return str(json.loads(f.readline())["source"]["host"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def verify_all(
    database: Database, own: Path, extra: tuple[Path, ...] = (), this_host: str | None = None
) -> list[tuple[str, VerifyResult]]:
    """Verify every audit file of the deployment, each against its own head row.

    The rows of the audit_head table name every file any process has written. A file of this
    host is read at its path; a file of another host is checked when it is visible here (mounted
    and listed in ``audit.verify_paths``, matched by the host its entries name), and otherwise
    reported as not checked (a failure: run the command on that host too, or mount the file).
    """
    me = this_host or socket.gethostname()
    with database.session() as session:
        keys = list(session.scalars(select(AuditHead.log_path).order_by(AuditHead.log_path)))
    extra_by_host: dict[str | None, list[Path]] = {}
    for listed in extra:
        extra_by_host.setdefault(_file_host(Path(listed)), []).append(Path(listed))
    results: list[tuple[str, VerifyResult]] = []
    checked: set[str] = set()
    own_key = head_key(me, own)
    if own_key not in keys and str(Path(own).resolve()) not in keys:
        results.append((str(own), verify_log(own, database, key=own_key)))
        checked.add(str(Path(own).resolve()))
    for key in keys:
        host, path = _split_key(key)
        if host is None or host == me:
            results.append((path, verify_log(Path(path), database, key=key)))
            checked.add(str(Path(path).resolve()))
            continue
        candidates = extra_by_host.get(host, [])
        attempts = [(c, verify_log(c, database, key=key)) for c in candidates]
        passed = next(((c, r) for c, r in attempts if r.ok), None)
        checked.update(str(c.resolve()) for c in candidates)
        if passed is not None:
            results.append((f"{host}:{path} (as {passed[0]})", passed[1]))
        elif attempts:
            results.append((f"{host}:{path} (as {attempts[0][0]})", attempts[0][1]))
        else:
            results.append(
                (
                    f"{host}:{path}",
                    VerifyResult(
                        False,
                        0,
                        f"written on host {host}, not visible here: run `audit verify` on that host, "
                        "or mount the file here and list it in audit.verify_paths",
                    ),
                )
            )
    for listed in extra:  # listed files that no head row names: their chain alone
        if str(Path(listed).resolve()) not in checked:
            results.append((str(listed), verify_log(Path(listed), None)))
    return results
