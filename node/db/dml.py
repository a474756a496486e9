"""How many rows an UPDATE or DELETE matched, typed.

``Session.execute`` returns a ``CursorResult`` for DML statements but is typed as returning a
plain ``Result``, which has no ``rowcount``; the fences of the job queue and the stability tick
("only if still ours", "only if nothing arrived since") are decided on that count, so it is
read here with a check instead of trusting an untyped attribute.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import CursorResult, Result


def rowcount(result: Result[Any]) -> int:
    """Rows matched by the DML statement that produced ``result``."""
    if not isinstance(result, CursorResult):
        raise TypeError(f"rowcount of a {type(result).__name__}: not the result of an UPDATE or DELETE")
    return result.rowcount
