"""Triage results as DICOM Structured Reports (Comprehensive 3D SR, TID 1500).

A small library with no knowledge of the node: :func:`build_triage_sr` turns a
:class:`TriageResult` into an SR dataset, :func:`read_triage_sr` turns one back.
"""

from .build import algorithm_device_uid, build_triage_sr
from .read import (
    TriageSRError,
    is_triage_sr,
    read_predecessor,
    read_predecessors,
    read_triage_sr,
    sr_reference,
)
from .result import (
    ALLOWED_PRIORITIES,
    NOT_CALIBRATED_TEXT,
    PRIORITY_HIGH,
    PRIORITY_LOW,
    PRIORITY_MEDIUM,
    PRIORITY_NOT_RAISED_TEXT,
    AlgorithmInfo,
    Code,
    FindingResult,
    FindingState,
    ImageAssessment,
    ImageRef,
    SRReference,
    TriageResult,
)
from .validate import DciodvfyReport, dciodvfy_available, run_dciodvfy

__all__ = [
    "ALLOWED_PRIORITIES",
    "NOT_CALIBRATED_TEXT",
    "PRIORITY_HIGH",
    "PRIORITY_LOW",
    "PRIORITY_MEDIUM",
    "PRIORITY_NOT_RAISED_TEXT",
    "AlgorithmInfo",
    "Code",
    "DciodvfyReport",
    "FindingResult",
    "FindingState",
    "ImageAssessment",
    "ImageRef",
    "SRReference",
    "TriageResult",
    "TriageSRError",
    "algorithm_device_uid",
    "build_triage_sr",
    "dciodvfy_available",
    "is_triage_sr",
    "read_predecessor",
    "read_predecessors",
    "read_triage_sr",
    "run_dciodvfy",
    "sr_reference",
]
