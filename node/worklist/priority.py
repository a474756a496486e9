"""The reading worklist as the node keeps it: one row per triaged study, most urgent first,
and the rule that sets its priority over time (DESIGN rule 5).

A study's worklist priority is the maximum of

- the order's own priority, read from the study's headers (Requested Procedure Priority, also
  inside Request Attributes Sequence, and Scheduled Procedure Step Priority: STAT/HIGH -> HIGH,
  ROUTINE/MEDIUM -> MEDIUM, LOW -> LOW; MEDIUM when the order names none), and
- HIGH while an SR of this node has raised the study (an urgent finding present) and no person
  has cleared that raise.

So a later SR that cannot assess, or assesses lower, never lowers the row: the raise is kept
and the SR says so. Only a person clears it: a UPS moved to COMPLETED or CANCELED, or
``triage-node worklist clear`` (both audited by their callers). The model never sets LOW; a LOW
order stays LOW unless the model raises it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import case

from dicom_sr import PRIORITY_HIGH as HIGH
from dicom_sr import PRIORITY_LOW as LOW
from dicom_sr import PRIORITY_MEDIUM as MEDIUM
from node.db.models import WorklistItem

PRIORITY_ORDER = {HIGH: 0, MEDIUM: 1, LOW: 2}

#: DICOM order priorities (Requested Procedure Priority 0040,1003; Scheduled Procedure Step
#: Priority 0074,1200) -> worklist priority.
ORDER_PRIORITY_MAP = {"STAT": HIGH, "HIGH": HIGH, "ROUTINE": MEDIUM, "MEDIUM": MEDIUM, "LOW": LOW}


def _order_values(ds: Dataset) -> Iterable[str]:
    for keyword in ("RequestedProcedurePriority", "ScheduledProcedureStepPriority"):
        value = ds.get(keyword)
        if value:
            yield str(value)
    for item in ds.get("RequestAttributesSequence") or []:
        value = item.get("RequestedProcedurePriority")
        if value:
            yield str(value)


def order_priority(headers: Iterable[Dataset]) -> str:
    """The order's own priority as the study's instances carry it ("" when none says).

    When instances disagree, the most urgent value wins: raising is the safe direction.
    """
    found = [
        ORDER_PRIORITY_MAP[v.strip().upper()]
        for ds in headers
        for v in _order_values(ds)
        if v.strip().upper() in ORDER_PRIORITY_MAP
    ]
    return min(found, key=PRIORITY_ORDER.__getitem__) if found else ""


def effective_priority(order: str, raised: bool) -> str:
    """max(order priority or MEDIUM, HIGH while raised)."""
    if raised:
        return HIGH
    return order if order in PRIORITY_ORDER else MEDIUM


def priority_rank() -> Any:
    """SQL expression ordering HIGH, MEDIUM, LOW."""
    return case((WorklistItem.priority == HIGH, 0), (WorklistItem.priority == MEDIUM, 1), else_=2)


__all__ = ["ORDER_PRIORITY_MAP", "PRIORITY_ORDER", "effective_priority", "order_priority", "priority_rank"]
