"""The one "skip locally, fail in CI" rule.

On a developer's machine a missing peer (DCMTK, Orthanc, chromium, PostgreSQL) skips the tests that
need it. Under ``CI=true`` scripts/test.sh has installed every one of them, so a missing peer is a
failure: a green CI run must mean those tests ran.
"""

from __future__ import annotations

import os
import shutil
from typing import NoReturn

import pytest

MARKER = "needs_tools"


def in_ci() -> bool:
    return (os.environ.get("CI") or "").strip().lower() in ("1", "true", "yes", "on")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test with ``reason``, or fail it under CI=true."""
    if in_ci():
        pytest.fail(f"{reason}, and CI=true: these tests must not be skipped")
    pytest.skip(reason)


def require_tools(*tools: str) -> None:
    """Skip (locally) or fail (CI) unless every command in ``tools`` is on PATH."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        skip_or_fail(f"needs {', '.join(missing)} on PATH")


def needs_tools(*tools: str) -> pytest.MarkDecorator:
    """Mark a test or module (``pytestmark = needs_tools("storescu")``): the root conftest applies
    ``require_tools`` before each marked test runs."""
    return getattr(pytest.mark, MARKER)(*tools)
