"""The contract between the node and this library: what one triage produced.

Plain frozen dataclasses, no DICOM and no node types, so that the node can build
a result without touching pydicom and the reader can hand back exactly what the
builder was given. The invariants that the design does not let bend are checked
here, at construction, so that no SR can ever be written from a result that
breaks them:

* priority is ``HIGH`` or ``MEDIUM`` only: the model may raise priority, never
  lower it (rule 5), so ``LOW`` is refused;
* a no-assist result keeps the default priority ``MEDIUM`` and names its reason
  (rule 6);
* ``HIGH`` needs a finding that is both urgent and present, so a raised
  priority is always explained by the report itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

#: Worklist priorities the model may set (UPS Scheduled Procedure Step Priority).
PRIORITY_HIGH = "HIGH"
PRIORITY_MEDIUM = "MEDIUM"
ALLOWED_PRIORITIES = frozenset({PRIORITY_HIGH, PRIORITY_MEDIUM})


class FindingState(StrEnum):
    """What the model says about one finding.

    There is deliberately no "absent" or "normal": a negative result only means
    that the model did not detect the finding.
    """

    PRESENT = "present"
    NOT_DETECTED = "not_detected"
    INDETERMINATE = "indeterminate"


def _require_text(owner: str, **values: str) -> None:
    for name, value in values.items():
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{owner}.{name} must be a non-empty string, got {value!r}")


@dataclass(frozen=True)
class Code:
    """A coded concept (code value, coding scheme designator, code meaning).

    Example: ``Code("36118008", "SCT", "Pneumothorax")``.
    """

    value: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        _require_text("Code", value=self.value, scheme=self.scheme, meaning=self.meaning)


@dataclass(frozen=True)
class ImageRef:
    """One image instance the model looked at.

    ``series_instance_uid`` is optional for the caller; the reader fills it from
    the SR's evidence list, so give it when you want a result that compares
    equal after a round trip.
    """

    sop_class_uid: str
    sop_instance_uid: str
    series_instance_uid: str = ""

    def __post_init__(self) -> None:
        _require_text(
            "ImageRef",
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
        )


def _as_tuple(obj: object, name: str) -> None:
    """Freeze a sequence field so that equality and hashing do not depend on list vs tuple."""
    object.__setattr__(obj, name, tuple(getattr(obj, name)))


@dataclass(frozen=True)
class FindingResult:
    """The model's verdict on one finding of the profile, for the whole study.

    ``score`` is the study score (maximum over evaluated images), ``threshold``
    the profile's decision threshold; both are probabilities in [0, 1].
    ``urgent`` is the profile's flag: an urgent finding that is present raises
    the study to HIGH priority.
    """

    finding: Code
    state: FindingState
    score: float
    threshold: float
    urgent: bool
    source_images: tuple[ImageRef, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", FindingState(self.state))
        _as_tuple(self, "source_images")
        for name in ("score", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"FindingResult.{name} must be a number, got {value!r}")
            if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ValueError(f"FindingResult.{name} must be within [0, 1], got {value!r}")
            object.__setattr__(self, name, float(value))
        if not isinstance(self.urgent, bool):
            raise ValueError(f"FindingResult.urgent must be a bool, got {self.urgent!r}")


@dataclass(frozen=True)
class AlgorithmInfo:
    """Everything needed to say which model, weights, profile and preprocessing produced a result (rule 7)."""

    name: str
    version: str
    model_id: str
    model_revision: str
    weights_sha256: str
    profile_name: str
    profile_version: str
    preprocessing_version: str
    preprocessing_description: str
    is_test_model: bool = False
    probe_versions: str = ""  # "finding=sha256:..." per linear-probe finding, ";"-joined; "" = prompts only

    def __post_init__(self) -> None:
        _require_text(
            "AlgorithmInfo",
            name=self.name,
            version=self.version,
            model_id=self.model_id,
            model_revision=self.model_revision,
            weights_sha256=self.weights_sha256,
            profile_name=self.profile_name,
            profile_version=self.profile_version,
            preprocessing_version=self.preprocessing_version,
            preprocessing_description=self.preprocessing_description,
        )
        if not isinstance(self.is_test_model, bool):
            raise ValueError(f"AlgorithmInfo.is_test_model must be a bool, got {self.is_test_model!r}")


@dataclass(frozen=True)
class TriageResult:
    """The outcome of triaging one study: assist or not, priority, findings, provenance.

    ``assist=False`` is the "no AI assessment" answer; it then carries a coded
    reason (and optionally a free-text one) and keeps priority at ``MEDIUM``.
    """

    assist: bool
    priority: str
    no_assist_reason: Code | None
    no_assist_text: str | None
    findings: tuple[FindingResult, ...]
    evaluated_images: tuple[ImageRef, ...]
    algorithm: AlgorithmInfo

    def __post_init__(self) -> None:
        _as_tuple(self, "findings")
        _as_tuple(self, "evaluated_images")
        if not isinstance(self.assist, bool):
            raise ValueError(f"TriageResult.assist must be a bool, got {self.assist!r}")
        if self.priority not in ALLOWED_PRIORITIES:
            raise ValueError(
                f"TriageResult.priority must be HIGH or MEDIUM (the model never lowers "
                f"priority), got {self.priority!r}"
            )
        if self.assist:
            if self.no_assist_reason is not None or self.no_assist_text is not None:
                raise ValueError("an assisting TriageResult must not carry a no-assist reason")
        else:
            if not isinstance(self.no_assist_reason, Code):
                raise ValueError("a no-assist TriageResult needs a coded no_assist_reason")
            if self.priority != PRIORITY_MEDIUM:
                raise ValueError("a no-assist TriageResult must leave priority at MEDIUM")
        if self.no_assist_text is not None and not self.no_assist_text.strip():
            raise ValueError("TriageResult.no_assist_text must be None or non-empty")
        if self.priority == PRIORITY_HIGH and not any(
            f.urgent and f.state is FindingState.PRESENT for f in self.findings
        ):
            raise ValueError("priority HIGH needs at least one urgent finding that is present")
        codes = [(f.finding.scheme, f.finding.value) for f in self.findings]
        if len(codes) != len(set(codes)):
            raise ValueError("each finding may appear only once in a TriageResult")
        evaluated = {ref.sop_instance_uid for ref in self.evaluated_images}
        if len(evaluated) != len(self.evaluated_images):
            raise ValueError("evaluated_images lists an image twice")
        for f in self.findings:
            stray = {ref.sop_instance_uid for ref in f.source_images} - evaluated
            if stray:
                raise ValueError(
                    f"finding {f.finding.meaning!r} cites images that were not evaluated: {sorted(stray)}"
                )


@dataclass(frozen=True)
class SRReference:
    """Identifies an earlier triage SR that a new one supersedes (Predecessor Documents Sequence)."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        _require_text(
            "SRReference",
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
        )
