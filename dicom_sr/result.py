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
* ``HIGH`` needs a finding that is both urgent and present, or an earlier
  assessment of this node that raised the study and whose raise is being kept
  (``priority_kept_from``), so a raised priority is always explained by the
  report itself;
* a kept ``HIGH`` names the SR that raised it; nothing else may be kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

#: Worklist priorities (UPS Scheduled Procedure Step Priority). The one vocabulary: the node's
#: worklist imports these. LOW comes only from an order, never from the model, so an SR may
#: carry only ALLOWED_PRIORITIES.
PRIORITY_HIGH = "HIGH"
PRIORITY_MEDIUM = "MEDIUM"
PRIORITY_LOW = "LOW"
ALLOWED_PRIORITIES = frozenset({PRIORITY_HIGH, PRIORITY_MEDIUM})

#: How an SR (and the worklist) words operating points that were not tuned on local data;
#: a statement that starts with it means "not calibrated" (``AlgorithmInfo.calibration``).
NOT_CALIBRATED_TEXT = "operating points not calibrated on local data"

#: How every output (summary card, FHIR) words an SR priority of MEDIUM: the AI did not raise the
#: study, and the order's own priority (STAT, LOW) stands. Never "priority MEDIUM", which a RIS or a
#: reader could take as lowering a STAT order.
PRIORITY_NOT_RAISED_TEXT = "Priority not raised by the AI (the order's own priority applies)"


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

    ``score`` is the study score (maximum over evaluated images); ``threshold``
    is the value that actually decides "present" (a score above it); scores from
    ``band_low`` to ``band_high`` inclusive are "indeterminate". All are
    probabilities in [0, 1]. The band is optional for callers that have none;
    when given, ``band_low <= band_high`` and the threshold is the band's upper
    limit or above it, since a score inside the band is never "present".
    ``urgent`` is the profile's flag: an urgent finding that is present raises
    the study to HIGH priority. ``calibration`` is "" when the algorithm's
    calibration statement applies to this finding's threshold; otherwise this
    finding's own statement, which starts with ``NOT_CALIBRATED_TEXT`` (a
    calibrated profile whose evaluation did not tune this finding).
    """

    finding: Code
    state: FindingState
    score: float
    threshold: float
    urgent: bool
    source_images: tuple[ImageRef, ...] = ()
    band_low: float | None = None
    band_high: float | None = None
    calibration: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", FindingState(self.state))
        _as_tuple(self, "source_images")
        for name in ("score", "threshold"):
            object.__setattr__(self, name, _probability("FindingResult", name, getattr(self, name)))
        if (self.band_low is None) != (self.band_high is None):
            raise ValueError("FindingResult.band_low and band_high are given together or not at all")
        if self.band_low is not None:
            low = _probability("FindingResult", "band_low", self.band_low)
            high = _probability("FindingResult", "band_high", self.band_high)
            if low > high:
                raise ValueError(f"FindingResult band is [low, high], got [{low}, {high}]")
            if self.threshold < high:
                raise ValueError(
                    f"FindingResult.threshold {self.threshold} lies inside the indeterminate band "
                    f"[{low}, {high}]: report the value that decides 'present'"
                )
            object.__setattr__(self, "band_low", low)
            object.__setattr__(self, "band_high", high)
        if not isinstance(self.urgent, bool):
            raise ValueError(f"FindingResult.urgent must be a bool, got {self.urgent!r}")
        if not isinstance(self.calibration, str) or (
            self.calibration and not self.calibration.startswith(NOT_CALIBRATED_TEXT)
        ):
            raise ValueError(
                "FindingResult.calibration is '' or a statement starting with "
                f"{NOT_CALIBRATED_TEXT!r} (a finding can only be less calibrated than its profile), "
                f"got {self.calibration!r}"
            )


def _probability(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}.{name} must be a number, got {value!r}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{owner}.{name} must be within [0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ImageAssessment:
    """What happened to one image the model was given: its in-domain score (``None``
    when the model produced none), whether it passed the domain check and so was
    evaluated for findings, and how its pixels were prepared (rule 7: every image,
    not only the last one)."""

    image: ImageRef
    preprocessing: str
    evaluated: bool
    domain_score: float | None = None

    def __post_init__(self) -> None:
        _require_text("ImageAssessment", preprocessing=self.preprocessing)
        if not isinstance(self.evaluated, bool):
            raise ValueError(f"ImageAssessment.evaluated must be a bool, got {self.evaluated!r}")
        if self.domain_score is not None:
            object.__setattr__(self, "domain_score", _probability("ImageAssessment", "domain_score", self.domain_score))
        elif self.evaluated:
            raise ValueError("an evaluated image needs its domain score")


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
    #: Whether the operating points were calibrated on local data, in words (issue 13); "" = not stated.
    calibration: str = ""
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
        if not isinstance(self.calibration, str):
            raise ValueError(f"AlgorithmInfo.calibration must be a string, got {self.calibration!r}")


@dataclass(frozen=True)
class TriageResult:
    """The outcome of triaging one study: assist or not, priority, findings, provenance.

    ``assist=False`` is the "no AI assessment" answer; it then carries a coded
    reason (and optionally a free-text one) and keeps priority at ``MEDIUM``,
    unless an earlier assessment raised the study to ``HIGH``: that raise is kept
    (``priority_kept_from`` names the SR that raised it), since only a person may
    lower it. A no-assist result still carries every score that was computed
    (``findings``: e.g. the urgent finding whose score fell in its band), so the
    decision can be audited afterwards.

    ``images`` lists every image given to the model, with its domain score and
    preprocessing; ``evaluated_images`` are those that passed the domain check.
    """

    assist: bool
    priority: str
    no_assist_reason: Code | None
    no_assist_text: str | None
    findings: tuple[FindingResult, ...]
    evaluated_images: tuple[ImageRef, ...]
    algorithm: AlgorithmInfo
    images: tuple[ImageAssessment, ...] = ()
    priority_kept_from: str | None = None

    def __post_init__(self) -> None:
        _as_tuple(self, "findings")
        _as_tuple(self, "evaluated_images")
        _as_tuple(self, "images")
        if not isinstance(self.assist, bool):
            raise ValueError(f"TriageResult.assist must be a bool, got {self.assist!r}")
        if self.priority not in ALLOWED_PRIORITIES:
            raise ValueError(
                f"TriageResult.priority must be HIGH or MEDIUM (the model never lowers priority), got {self.priority!r}"
            )
        kept = self.priority_kept_from
        if kept is not None:
            _require_text("TriageResult", priority_kept_from=kept)
            if self.priority != PRIORITY_HIGH:
                raise ValueError("only a HIGH priority can be kept from an earlier assessment")
        if self.assist:
            if self.no_assist_reason is not None or self.no_assist_text is not None:
                raise ValueError("an assisting TriageResult must not carry a no-assist reason")
        else:
            if not isinstance(self.no_assist_reason, Code):
                raise ValueError("a no-assist TriageResult needs a coded no_assist_reason")
            if self.priority != PRIORITY_MEDIUM and kept is None:
                raise ValueError("a no-assist TriageResult must leave priority at MEDIUM (or keep an earlier HIGH)")
        if self.no_assist_text is not None and not self.no_assist_text.strip():
            raise ValueError("TriageResult.no_assist_text must be None or non-empty")
        urgent_present = any(f.urgent and f.state is FindingState.PRESENT for f in self.findings)
        if self.priority == PRIORITY_HIGH and not (urgent_present or kept is not None):
            raise ValueError("priority HIGH needs an urgent finding that is present, or an earlier HIGH that is kept")
        if urgent_present and self.priority != PRIORITY_HIGH:
            raise ValueError("an urgent finding that is present must raise the priority to HIGH")
        if urgent_present and not self.assist:
            raise ValueError("a no-assist TriageResult cannot state that an urgent finding is present")
        codes = [(f.finding.scheme, f.finding.value) for f in self.findings]
        if len(codes) != len(set(codes)):
            raise ValueError("each finding may appear only once in a TriageResult")
        evaluated = {ref.sop_instance_uid for ref in self.evaluated_images}
        if len(evaluated) != len(self.evaluated_images):
            raise ValueError("evaluated_images lists an image twice")
        if self.images:
            given = [a.image.sop_instance_uid for a in self.images]
            if len(given) != len(set(given)):
                raise ValueError("images lists an image twice")
            passed = {a.image.sop_instance_uid for a in self.images if a.evaluated}
            if passed != evaluated:
                raise ValueError("evaluated_images must be exactly the images marked evaluated")
        for f in self.findings:
            stray = {ref.sop_instance_uid for ref in f.source_images} - evaluated
            if stray:
                raise ValueError(f"finding {f.finding.meaning!r} cites images that were not evaluated: {sorted(stray)}")


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
