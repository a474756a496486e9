"""The newcomer's path in the documents (issue 8): what a new user copies must work as written.

These are scripted checks of text a person follows: the README's CLI examples run without an
activated venv, its configuration table is one table, the container guide names the token the
HTTP side requires, and the installer takes the CPU build of torch (not the multi-GB CUDA one).
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _code_lines(text: str) -> list[str]:
    lines, inside = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            inside = not inside
        elif inside:
            lines.append(line)
    return lines


def test_readme_cli_examples_work_without_an_activated_venv() -> None:
    calls = [line for line in _code_lines(README) if re.search(r"triage-node\s+[a-z]", line)]
    assert len(calls) >= 10, "the README shows CLI examples"
    bare = [line for line in calls if re.search(r"(^|[^/\w-])triage-node\s+[a-z]", line)]
    assert not bare, f"examples that need an activated venv: {bare}"


def test_readme_configuration_table_is_one_table() -> None:
    section = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| key |"))
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    table_keys = {m.group(1) for line in lines[start:end] for m in re.finditer(r"`([a-z_]+\.[a-z_.]+)`", line)}
    later = [line for line in lines[end:] if line.startswith("| `")]
    assert not later, f"rows after a blank line start a second table: {later[:3]}"
    for key in ("node.data_dir", "dicom.ae_title", "storage.path", "triage.profiles_dir", "audit.path"):
        assert key in table_keys or any(key in line for line in lines[start:end]), key


def test_container_guide_names_the_required_token() -> None:
    guide = (REPO / "docker" / "README.md").read_text()
    assert "TRIAGE_NODE__HTTP__TOKEN" in guide
    run_lines = [line for line in _code_lines(guide) if "docker run" in line or "-e TRIAGE_NODE__HTTP__TOKEN" in line]
    assert any("TRIAGE_NODE__HTTP__TOKEN" in line for line in run_lines), "the example sets the token"


def test_installer_takes_the_cpu_build_of_torch() -> None:
    script = (REPO / "scripts" / "install.sh").read_text()
    assert "https://download.pytorch.org/whl/cpu" in script
    assert re.search(r"pip install[^\n]*--index-url \"\$TORCH_INDEX_URL\"[^\n]*torch==", script)
