"""The audit trail: what a day of activity writes, that `audit verify` accepts it, and that it
names the first bad line after an edit, a byte flip, a swap, a deleted line or a cut tail."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from node import oplog
from node.audit import EventCode
from node.audit.chain import GENESIS_HASH, entry_hash
from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE, write_settings_toml
from tests.support.dimse import py_echo
from tests.support.index import audit_entries
from tests.support.polling import wait_until
from tests.support.serve import run_cli


@pytest.fixture
def active_log(tmp_path, make_settings, node_factory, dicom_factory, capfd):  # type: ignore[no-untyped-def]
    """A node that has accepted, refused, stored and queued, then stopped. Returns (settings,
    config path, the sent CT paths, operational log text)."""
    settings = make_settings(
        tmp_path, node={"log_level": "info"}, stability={"quiet_seconds": 0.5, "tick_seconds": 0.1}
    )
    node = node_factory(settings)
    from node import oplog

    oplog.configure("info")
    port = node.listener.port
    assert py_echo(port, calling_ae="PYSCU") == 0
    assert py_echo(port, calling_ae="INTRUDER") is None
    ct = dicom_factory.ct_series(3, size=64)
    assert [r.status for r in send(ct, Destination(NODE_AE, "127.0.0.1", port), calling_ae="TRIAGE_SCU")] == [0] * 3
    wait_until(
        lambda: any(e["outcome_desc"] == "triage job queued" for e in audit_entries(settings.audit.path)),
        20,
        what="the job queued line",
    )
    node.stop()
    config = write_settings_toml(tmp_path / "node.toml", settings)
    return settings, config, ct, capfd.readouterr().err


def verify(config: Path):  # type: ignore[no-untyped-def]
    return run_cli("audit", "verify", "--config", str(config))


def test_activity_is_audited_as_a_hash_chain(active_log) -> None:
    import pydicom

    settings, config, ct, oplog_text = active_log
    entries = audit_entries(settings.audit.path)
    assert [e["seq"] for e in entries] == list(range(1, len(entries) + 1))
    prev = GENESIS_HASH
    for e in entries:
        assert e["prev_hash"] == prev and e["hash"] == entry_hash(e)
        prev = e["hash"]
        assert datetime.fromisoformat(e["ts"]).utcoffset().total_seconds() == 0  # UTC
        assert {"code", "meaning"} <= set(e["event_id"]) and "outcome" in e
        assert {"participants", "objects", "source"} <= set(e)

    def kinds(e: dict) -> str:
        return e["event_type"]["code"] if e["event_type"] else e["event_id"]["code"]

    codes = [kinds(e) for e in entries]
    assert codes[0] == "110131"  # configuration loaded
    assert "110120" in codes and codes[-1] == "110121"  # start ... stop
    accepted = [e for e in entries if e["outcome_desc"] == "association accepted"]
    rejected = [e for e in entries if e["event_id"]["code"] == "110113" and e["outcome"] != 0]
    assert {p["user_id"] for e in accepted for p in e["participants"]} >= {"PYSCU", "TRIAGE_SCU", NODE_AE}
    assert [p["user_id"] for e in rejected for p in e["participants"] if p["is_requestor"]] == ["INTRUDER"]
    # the refusal says which rule, in the words of the setting to change (issue 8)
    assert "calling AE title 'INTRUDER' is not in dicom.allowed_peers" in rejected[0]["outcome_desc"], rejected
    assert "calling AE title 'INTRUDER' is not in dicom.allowed_peers" in oplog_text
    assert all(
        p["network_address"] == "127.0.0.1" for e in accepted + rejected for p in e["participants"] if p["is_requestor"]
    )

    src = pydicom.dcmread(ct[0], stop_before_pixels=True)
    transferred = [e for e in entries if e["event_id"]["code"] == "110104"]
    assert len(transferred) == 1
    objects = {o["type"]: o for o in transferred[0]["objects"]}
    assert objects["patient"]["id"] == src.PatientID
    assert objects["study"]["id"] == src.StudyInstanceUID
    assert objects["study"]["details"]["instances"] == 3
    assert {p["user_id"] for p in transferred[0]["participants"]} == {"TRIAGE_SCU", NODE_AE}
    queued = [e for e in entries if e["outcome_desc"] == "triage job queued"]
    assert [o["id"] for e in queued for o in e["objects"]] == [src.StudyInstanceUID]

    # the operational log (stderr) carries no patient identifiers
    assert "association_accepted" in oplog_text  # it was captured at all
    for secret in (src.PatientID, str(src.PatientName), src.StudyInstanceUID, src.AccessionNumber):
        assert secret not in oplog_text

    result = verify(config)
    assert result.returncode == 0, result.stderr
    assert f"{len(entries)} lines" in result.stdout


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def test_verify_names_an_edited_line(active_log) -> None:
    settings, config, _, _ = active_log
    path = Path(settings.audit.path)
    lines = path.read_bytes().splitlines(keepends=True)
    n = len(lines) // 2  # a middle line, 0-based
    entry = json.loads(lines[n])
    entry["outcome_desc"] = entry["outcome_desc"] + " (edited)"
    lines[n] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    _rewrite(path, lines)
    result = verify(config)
    assert result.returncode != 0
    assert re.search(rf"\bline {n + 1}\b", result.stderr), result.stderr
    assert "edited" in result.stderr
    assert "Traceback" not in result.stderr


def test_verify_names_the_truncated_tail(active_log) -> None:
    settings, config, _, _ = active_log
    path = Path(settings.audit.path)
    lines = path.read_bytes().splitlines(keepends=True)
    _rewrite(path, lines[:-2])
    result = verify(config)
    assert result.returncode != 0
    assert "truncated" in result.stderr
    assert re.search(rf"\bline {len(lines) - 2}\b", result.stderr), result.stderr


@pytest.mark.parametrize(
    "tamper",
    [
        "flip_one_byte",
        "swap_two_lines",
        "delete_middle_line",
        "insert_forged_line",
        "replace_last_line_rehashed",
        "empty_line",
    ],
)
def test_verify_fails_after_tampering(tamper, active_log, capfd) -> None:
    from node import cli

    settings, config, _, _ = active_log
    path = Path(settings.audit.path)
    lines = path.read_bytes().splitlines(keepends=True)
    n = len(lines) // 2
    expect_line = n + 1
    if tamper == "flip_one_byte":
        i = lines[n].index(b'"outcome":') + len(b'"outcome":')
        lines[n] = lines[n][:i] + bytes([lines[n][i] ^ 0x01]) + lines[n][i + 1 :]  # 0 -> 1 / 4 -> 5
    elif tamper == "swap_two_lines":
        lines[n], lines[n + 1] = lines[n + 1], lines[n]
    elif tamper == "delete_middle_line":
        del lines[n]  # the line after it no longer links: that one is named
    elif tamper == "insert_forged_line":
        forged = json.loads(lines[n])
        forged["outcome_desc"] = "forged"
        forged["hash"] = entry_hash(forged)  # self-consistent, but the chain does not follow
        lines.insert(n + 1, json.dumps(forged, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        expect_line = n + 2
    elif tamper == "replace_last_line_rehashed":
        # a forger who recomputes the last line's hash is caught by the head kept in the database
        last = json.loads(lines[-1])
        last["outcome_desc"] = "rewritten"
        last["hash"] = entry_hash(last)
        lines[-1] = json.dumps(last, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        expect_line = None
    elif tamper == "empty_line":
        lines.insert(n, b"\n")
    _rewrite(path, lines)
    capfd.readouterr()
    rc = cli.main(["audit", "verify", "--config", str(config)])
    err = capfd.readouterr().err
    assert rc != 0, err
    if expect_line is not None:
        assert re.search(rf"\bline {expect_line}\b", err), err
    else:
        assert "rewritten" in err or "head" in err, err


def _line(entry: dict) -> bytes:  # type: ignore[type-arg]
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def test_verify_refuses_a_correctly_chained_line_appended_after_the_head(active_log) -> None:
    settings, config, _, _ = active_log
    path = Path(settings.audit.path)
    lines = path.read_bytes().splitlines(keepends=True)
    last = json.loads(lines[-1])
    forged = dict(last, seq=last["seq"] + 1, prev_hash=last["hash"], outcome_desc="forged, well chained")
    forged["hash"] = entry_hash(forged)
    _rewrite(path, [*lines, _line(forged)])
    result = verify(config)
    assert result.returncode != 0
    assert re.search(rf"\bline {len(lines) + 1}\b", result.stderr) and "not anchored" in result.stderr


_KILLED_BETWEEN_LINE_AND_HEAD = """
import os, signal, sys
from pathlib import Path
from node.audit import AuditLog, EventCode
from node.config import load_settings
from node.db.engine import Database
settings = load_settings(sys.argv[1])
log = AuditLog(Path(settings.audit.path), Database(settings.database.url), source_id="killed")
log._store_head = lambda: os.kill(os.getpid(), signal.SIGKILL)  # die right after the line's fsync
log.record(EventCode.APPLICATION_ACTIVITY, outcome_desc="the last line before the kill")
"""


def test_a_line_whose_head_commit_was_cut_by_kill_9_verifies_and_is_anchored_at_start(active_log, node_factory) -> None:  # type: ignore[no-untyped-def]
    import subprocess
    import sys

    settings, config, _, _ = active_log
    path = Path(settings.audit.path)
    before = path.read_bytes().splitlines()
    killed = subprocess.run([sys.executable, "-c", _KILLED_BETWEEN_LINE_AND_HEAD, str(config)], timeout=60, check=False)
    assert killed.returncode == -9
    lines = path.read_bytes().splitlines(keepends=True)
    assert len(lines) == len(before) + 1 and b"the last line before the kill" in lines[-1]

    result = verify(config)  # the node's own line: accepted, and said to be not yet anchored
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"line {len(lines)} written by the node just before it stopped" in result.stdout

    # the same seq with other content (a forger replacing it) is refused
    last = json.loads(lines[-1])
    forged = dict(last, outcome_desc="forged in its place")
    forged["hash"] = entry_hash(forged)
    _rewrite(path, [*lines[:-1], _line(forged)])
    assert verify(config).returncode != 0
    _rewrite(path, lines)

    node_factory(settings).stop()  # the next start anchors it: verify no longer needs the pending rule
    result = verify(config)
    assert result.returncode == 0 and "not yet anchored" not in result.stdout, result.stdout


def test_verify_reports_a_deletion_with_the_rest_rechained_as_a_deletion(active_log) -> None:
    settings, config, _, _ = active_log
    path = Path(settings.audit.path)
    entries = [json.loads(line) for line in path.read_bytes().splitlines()]
    del entries[len(entries) // 2]
    prev = GENESIS_HASH
    for seq, entry in enumerate(entries, start=1):  # a careful forger re-chains everything after it
        entry["seq"], entry["prev_hash"] = seq, prev
        entry["hash"] = prev = entry_hash(entry)
    _rewrite(path, [_line(e) for e in entries])
    result = verify(config)
    assert result.returncode != 0
    assert "deleted" in result.stderr and "truncated" not in result.stderr, result.stderr


def test_torn_last_line_is_moved_aside_and_the_chain_continues(active_log, node_factory) -> None:
    settings, config, _, _ = active_log
    path = Path(settings.audit.path)
    good = path.read_bytes()
    last_seq = json.loads(good.splitlines()[-1])["seq"]
    torn = b'{"action":"E","detail":"","event_id":{"code":"110100"'  # a crash mid-write
    path.write_bytes(good + torn)
    oplog.configure("warning")  # the fixture's captured stderr is closed by now
    node = node_factory(settings)
    node.stop()
    aside = list(path.parent.glob(path.name + ".torn-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == torn
    entries = audit_entries(path)
    assert entries[last_seq]["seq"] == last_seq + 1  # continued, not restarted at 1
    assert "torn last audit line" in entries[last_seq]["outcome_desc"]
    result = verify(config)
    assert result.returncode == 0, result.stderr


def test_a_last_line_longer_than_64_kib_is_read_correctly(active_log, node_factory) -> None:
    from node.audit import AuditLog
    from node.db.engine import Database

    settings, config, _, _ = active_log
    db = Database(settings.database.url)
    writer = AuditLog(settings.audit.path, db, source_id="test")
    long_seq = writer.record(EventCode.APPLICATION_ACTIVITY, outcome_desc="x" * 200_000)["seq"]
    writer.close()
    db.dispose()
    oplog.configure("warning")
    node_factory(settings).stop()
    seqs = [e["seq"] for e in audit_entries(settings.audit.path)]
    assert seqs == list(range(1, len(seqs) + 1)) and long_seq + 1 in seqs  # continued after the long line
    assert verify(config).returncode == 0


def test_second_serve_on_the_same_data_dir_exits_and_writes_nothing(tmp_path, settings_dict, serve_factory) -> None:
    data = settings_dict(tmp_path)
    first = serve_factory(data).start()
    data_dir = Path(data["node"]["data_dir"])
    part = data_dir / "storage" / ".incoming" / "inflight.part"  # a store the live node has in flight
    part.write_bytes(b"half an instance")
    audit_before = Path(data["audit"]["path"]).read_bytes()
    second_data = dict(data, dicom=dict(data["dicom"], port=data["dicom"]["port"] + 1))
    second = serve_factory(second_data, name="second")
    second.start(wait=False)
    rc = second.proc.wait(timeout=60)  # type: ignore[union-attr]
    assert rc == 2
    assert "in use by another triage-node" in second.output() and "Traceback" not in second.output()
    assert Path(data["audit"]["path"]).read_bytes() == audit_before
    assert part.read_bytes() == b"half an instance"
    assert first.running
    assert py_echo(data["dicom"]["port"]) == 0
