"""Operational logging: structlog JSON lines on stderr, with no patient data.

Rule: names, patient ids, accession numbers never go here (they go to the audit log).
Study UIDs appear only as ``study_ref``, a short one-way hash, so an operator can correlate
lines with the audit log without the log carrying the identifier itself.

Libraries log too (pynetdicom, highdicom, pydicom warnings, uvicorn, apscheduler, SQLAlchemy),
and they do print identifiers ("copy Patient-related attributes from dataset <UID>", peer UIDs,
quoted element values in validation warnings) and tracebacks. Everything on stderr therefore
goes through one path: the stdlib root logger, whose only handler renders structlog JSON, and
whose filter rewrites every record that is not ours: UIDs and quoted values are replaced and a
traceback is cut to its exception type. Python warnings and uncaught exceptions in threads are
routed to the same place, so every stderr line is one JSON object.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
import threading
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
OURS = "node"  # structlog loggers of this package carry a "logger" name; stdlib ones are foreign

# Dotted numeric identifiers (DICOM UIDs and OIDs) of five or more components (not IPv4 addresses).
_UID = re.compile(r"\b\d+(?:\.\d+){4,}\b")
# Quoted values: pydicom's "Invalid value for VR PN: 'DOE^JOHN'", reprs of data elements.
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# Caret-separated person names written without quotes.
_PERSON_NAME = re.compile(r"\b[^\s^=]+\^[^\s]*")


def redact(text: str) -> str:
    """The message of a foreign log record without the identifiers a library may have put in it."""
    text = _UID.sub("<uid>", text)
    text = _QUOTED.sub("'<value>'", text)
    return _PERSON_NAME.sub("<name>", text)


class _RedactForeign(logging.Filter):
    """Rewrites records of library loggers in place; our own structlog events pass unchanged."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_from_structlog", False):
            return True
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        record.msg, record.args = redact(message)[:2000], None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg += f" [{type(exc).__name__}: {redact(str(exc))[:300]}]"
            record.exc_info, record.exc_text = None, None
        record.stack_info = None
        return True


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of the record (not the one at configure time)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def _handler(level: int) -> logging.Handler:
    handler = _StderrHandler()
    handler.setLevel(level)
    handler.addFilter(_RedactForeign())
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(),
            ],
        )
    )
    return handler


def _log_uncaught(kind: str, exc_type: type[BaseException], exc: BaseException | None, where: str = "") -> None:
    structlog.get_logger("node.uncaught").error(
        f"uncaught_exception_in_{kind}", error=exc_type.__name__, detail=redact(str(exc))[:300], where=where
    )


def configure(level: str = "info") -> None:
    numeric = _LEVELS.get(level, logging.INFO)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_node_oplog", False):  # ours from an earlier configure; others (pytest's) stay
            root.removeHandler(old)
    handler = _handler(numeric)
    handler._node_oplog = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    # pynetdicom's own logger is chatty at INFO and prints identifiers in its dumps; faiss.loader
    # reports its CPU-feature probing ("Could not load library with AVX512 ...") at INFO.
    for noisy in ("pynetdicom", "alembic", "uvicorn.access", "faiss.loader"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))
    # A tick skipped because the previous one still runs is normal under load, not a warning.
    logging.getLogger("apscheduler").setLevel(logging.ERROR)
    logging.captureWarnings(True)  # pydicom/highdicom warnings: JSON and redacted, not raw stderr lines
    threading.excepthook = lambda args: _log_uncaught(
        "thread", args.exc_type, args.exc_value, getattr(args.thread, "name", "")
    )
    sys.excepthook = lambda exc_type, exc, _tb: _log_uncaught("main", exc_type, exc)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_OurLoggerFactory(),
        cache_logger_on_first_use=False,
    )


class _OurLoggerFactory(structlog.stdlib.LoggerFactory):
    """stdlib loggers for our events, marked so the redaction filter leaves them alone."""

    def __call__(self, *args: Any) -> logging.Logger:
        logger = super().__call__(*args)
        if not getattr(logger, "_node_marked", False):
            logger.addFilter(_mark_record)
            logger._node_marked = True  # type: ignore[attr-defined]
        return logger


def _mark_record(record: logging.LogRecord) -> bool:
    record._from_structlog = True
    return True


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(f"{OURS}.{name}")


def study_ref(study_instance_uid: str) -> str:
    """Short non-reversible reference to a study for operational logs."""
    return hashlib.sha256(study_instance_uid.encode()).hexdigest()[:12]
