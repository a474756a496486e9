"""A bad triage configuration stops `serve` with a message naming the key, not a traceback.

The profiles are loaded while the node is built, before any socket is opened, so the port
named here is never bound."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    full = dict(
        os.environ,
        TRIAGE_NODE__NODE__DATA_DIR=str(tmp_path / "data"),
        TRIAGE_NODE__STORAGE__PATH=str(tmp_path / "data/storage"),
        TRIAGE_NODE__DATABASE__URL=f"sqlite:///{tmp_path}/data/index.db",
        TRIAGE_NODE__AUDIT__PATH=str(tmp_path / "data/audit.jsonl"),
        TRIAGE_NODE__DICOM__PORT="11199",
        TRIAGE_NODE__HTTP__ENABLED="false",
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "serve", "--config", str(REPO / "config/node.toml")],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )


def test_missing_profiles_dir_names_the_key(tmp_path):
    result = _serve(tmp_path, TRIAGE_NODE__TRIAGE__PROFILES_DIR=f'"{tmp_path / "nope"}"')
    assert result.returncode == 2
    assert "triage.profiles_dir" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_profile_name_names_the_key(tmp_path):
    result = _serve(
        tmp_path,
        TRIAGE_NODE__TRIAGE__PROFILES_DIR=f'"{REPO / "config/profiles"}"',
        TRIAGE_NODE__TRIAGE__PROFILES='["cxr", "nosuch"]',
    )
    assert result.returncode == 2
    assert "triage.profiles" in result.stderr and "nosuch" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_packaged_profiles_are_found_from_any_directory(tmp_path):
    # cwd is tmp_path (no config/profiles there) and the config names no profiles_dir: the profiles
    # shipped inside the package are read. An unknown name stops the start with the list of those.
    result = _serve(tmp_path, TRIAGE_NODE__TRIAGE__PROFILES='["cxr", "nosuch"]')
    assert result.returncode == 2, result.stderr
    assert "nosuch" in result.stderr and "cxr" in result.stderr and "derm" in result.stderr, result.stderr
    assert "cannot load triage profiles" not in result.stderr
