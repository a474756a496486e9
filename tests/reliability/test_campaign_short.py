"""Short versions of the fault campaign (reliability/*.py), run by CI: the same scripts an operator
runs for the long versions recorded in RELIABILITY.md, with a few cycles / seconds each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.ci import needs_tools, skip_or_fail

REPO = Path(__file__).resolve().parents[2]


def _run(script: str, *args: str, timeout: float = 300) -> dict:  # type: ignore[type-arg]
    result = subprocess.run(
        [sys.executable, str(REPO / "reliability" / script), "--json", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
    )
    start = result.stdout.find("{")
    assert start >= 0, result.stdout + result.stderr
    report = json.loads(result.stdout[start:])
    report["_rc"] = result.returncode
    return report


def test_kill9_cycles_lose_nothing_acknowledged(tmp_path) -> None:
    report = _run("kill9.py", "--stages", "receive", "--cycles", "2", "--max-delay", "0.8", "--workdir", str(tmp_path))
    assert report["problems"] == [] and report["_rc"] == 0, report
    assert report["acknowledged"] > 0 and report["stored_files"] == report["index_rows"]
    assert report["audit_verify_final"]


def test_disk_full_answers_a700_and_recovers_by_itself(tmp_path) -> None:
    if os.geteuid() != 0:
        skip_or_fail("mounts a tmpfs: needs root")
    probe = tmp_path / "probe"
    probe.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)]).returncode != 0:
        skip_or_fail("this machine does not allow mounting a tmpfs")
    subprocess.run(["umount", str(probe)], check=False)
    report = _run("disk_full.py", "--size-mb", "8", "--workdir", str(tmp_path))
    for run in report["runs"]:
        assert run["ok"], run
        assert run["statuses"].get("0xA700", 0) >= 20 and run["after_freeing"] == [0] * 5


def test_concurrent_senders_bounded_rss_nothing_lost(tmp_path) -> None:
    report = _run("load.py", "--workdir", str(tmp_path), "senders", "--senders", "8", "--seconds", "5")
    assert report["ok"] and report["lost"] == 0 and report["acknowledged"] > 0, report
    assert report["rss_max_mib"] - report["rss_baseline_mib"] < 64, report


def test_clients_above_max_associations_all_get_through(tmp_path, require_tools) -> None:
    require_tools("storescu")
    report = _run(
        "load.py", "--workdir", str(tmp_path), "storm", "--clients", "20", "--stores", "5", "--max-associations", "16"
    )
    for row in report["rows"]:
        assert row["stored"] == row["expected"], row


needs_orthanc = needs_tools("Orthanc")


@needs_orthanc
def test_kill9_across_triage_sr_store_and_forwarding(tmp_path) -> None:
    """kill -9 with triage (tiny model) and forwarding to Orthanc on; 3 cycles of up to 8 s."""
    report = _run(
        "kill9.py", "--stages", "all", "--cycles", "3", "--max-delay", "8", "--workdir", str(tmp_path), timeout=900
    )
    assert report["problems"] == [] and report["_rc"] == 0, report
    assert report["acknowledged"] > 0 and report["stable_studies"] == report["current_srs"] > 0, report
    assert report["orthanc_receptions_of_srs"] == report["srs_in_orthanc_index"] == report["current_srs"], report
    assert report["audit_verify_final"]


@needs_orthanc
def test_pacs_down_every_sr_delivered_once_after_return(tmp_path) -> None:
    """Orthanc stopped for 20 s while 5 studies are sent: each SR arrives once after it is back."""
    report = _run(
        "pacs_down.py",
        "--studies",
        "5",
        "--down-seconds",
        "20",
        "--max-backoff",
        "5",
        "--workdir",
        str(tmp_path),
        timeout=900,
    )
    assert report["problems"] == {} and report["_rc"] == 0, report
    assert report["current_srs"] == report["srs_in_orthanc_index"] == report["orthanc_receptions"] == 5, report
    assert report["failed_export_events"] >= 1, "forwarding was attempted while Orthanc was down"
