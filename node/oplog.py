"""Operational logging: structlog JSON lines on stderr, with no patient data.

Rule: names, patient ids, accession numbers never go here (they go to the audit log).
Study UIDs appear only as ``study_ref``, a short one-way hash, so an operator can correlate
lines with the audit log without the log carrying the identifier itself.
"""

from __future__ import annotations

import hashlib
import logging
import sys

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(level: str = "info") -> None:
    logging.basicConfig(stream=sys.stderr, level=_LEVELS.get(level, logging.INFO), format="%(message)s")
    # pynetdicom's own logger is chatty at INFO and prints identifiers in its dumps.
    for noisy in ("pynetdicom", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # A tick skipped because the previous one still runs is normal under load, not a warning.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)  # type: ignore[no-any-return]


def study_ref(study_instance_uid: str) -> str:
    """Short non-reversible reference to a study for operational logs."""
    return hashlib.sha256(study_instance_uid.encode()).hexdigest()[:12]
