"""The states of a worklist row as a Unified Procedure Step (PS3.4 CC.1.1), shared by the row
writer (node/worklist/rows.py) and the UPS state machine (node/worklist/ups.py)."""

from __future__ import annotations

SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED = "SCHEDULED", "IN PROGRESS", "CANCELED", "COMPLETED"
STATES = (SCHEDULED, IN_PROGRESS, CANCELED, COMPLETED)
FINAL = (CANCELED, COMPLETED)

__all__ = ["CANCELED", "COMPLETED", "FINAL", "IN_PROGRESS", "SCHEDULED", "STATES"]
