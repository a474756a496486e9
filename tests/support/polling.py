"""The one polling helper: tests wait for an event to happen, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout: float = 20.0, what: str = "condition", *, interval: float = 0.05
) -> T:
    """Poll ``predicate`` until it returns something truthy and return that value; fail the test
    (naming ``what``) after ``timeout`` seconds. The predicate may raise to fail at once."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
