"""The ``drift_stream`` table's one writer: a stream's row, its frozen reference window
(``triage-node drift freeze``) and its alert state (the background watch). Both writers used to
create the row on their own; now they share the one get-or-create below."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from node.db.models import DriftStream


def stream_row(session: Session, key: str, weights: str, version: str, now: datetime) -> tuple[DriftStream, bool]:
    """The stream's row (inside the caller's transaction), created when first seen; (row, created)."""
    row = session.execute(
        select(DriftStream).where(
            DriftStream.stream_key == key,
            DriftStream.weights_sha256 == weights,
            DriftStream.preprocessing_version == version,
        )
    ).scalar_one_or_none()
    if row is not None:
        return row, False
    row = DriftStream(
        stream_key=key,
        weights_sha256=weights,
        preprocessing_version=version,
        first_seen_at=now,
        alert=False,
        reasons="",
    )
    session.add(row)
    return row, True


def freeze_reference(
    session: Session, key: str, weights: str, version: str, *, first_id: int, last_id: int, now: datetime
) -> None:
    """Embedding rows ``first_id..last_id`` become the stream's reference window."""
    row, _ = stream_row(session, key, weights, version, now)
    row.reference_first_id, row.reference_last_id = first_id, last_id
    row.frozen_at = now


@dataclass(frozen=True)
class AlertChange:
    created: bool  # the stream was seen for the first time
    changed: bool  # the alert was raised or cleared just now


def record_alert(
    session: Session, key: str, weights: str, version: str, *, alert: bool, reasons: str, now: datetime
) -> AlertChange:
    """Keep the stream's alert state and reasons; says what changed, for the caller to announce once."""
    row, created = stream_row(session, key, weights, version, now)
    changed = bool(row.alert) != alert
    if changed:
        row.alert, row.alert_changed_at = alert, now
    row.reasons = reasons[:4000]
    return AlertChange(created, changed)


__all__ = ["AlertChange", "freeze_reference", "record_alert", "stream_row"]
