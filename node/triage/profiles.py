"""Triage profiles: which images, which prompts, which thresholds.

A profile is one TOML file (``config/profiles/<name>.toml``). Its version is the content hash of
the file's bytes, ``"sha256:" + sha256(bytes).hexdigest()[:16]``, so any edit (a prompt, a
threshold, even a comment) gives a new version that the SR records.

File layout (every key is required unless marked optional; unknown keys are errors)::

    name = "cxr"                      # [a-z0-9][a-z0-9_-]*, unique across the profiles folder
    description = "..."

    [selection]
    modalities = ["CR", "DX"]         # Modality (0008,0060); upper case; non-empty
    sop_class_uids = [...]            # SOP Class UIDs accepted; [] = any image class
    body_parts = ["CHEST", ""]        # BodyPartExamined; [] = any; "" = accept a missing/empty tag
    view_positions = ["PA", "AP"]     # ViewPosition; [] = any; "" = accept a missing/empty tag
    min_age_years = 18                # optional; omitted = no lower bound (inclusive bound)
    max_age_years = 120               # optional; omitted = no upper bound (inclusive bound)
    photometric_interpretations = ["MONOCHROME1", "MONOCHROME2"]   # [] = any

    [domain]
    in_domain_prompts = ["a chest X-ray"]
    out_of_domain_prompts = ["a CT scan"]
    min_score = 0.5                   # in-domain softmax probability below this -> out of domain

    [preprocessing]
    window_center = 40                # optional, with window_width: default VOI window
    window_width = 400                # (used only when the image has no window tags)
    multiframe = "middle"             # frame used from a multi-frame image: first | middle
    method = "tn-pre-1"               # optional: tn-pre-1 (default, the model card's recipe) |
                                      # google-dicom-1 (Google's DICOM serving path), see preprocess.py

    [[findings]]                      # one table per finding, at least one
    key = "pneumothorax"              # [a-z0-9][a-z0-9_]*, unique within the profile
    display_name = "Pneumothorax"
    code = ["36118008", "SCT", "Pneumothorax"]   # (code value, coding scheme designator, meaning)
    absent_prompts = ["no pneumothorax"]
    present_prompts = ["apical pneumothorax"]
    threshold = 0.5                   # score >= threshold -> "present" (outside the band)
    indeterminate_band = [0.4, 0.6]   # low <= threshold <= high; low <= score <= high -> indeterminate
    urgency = "high"                  # "high" (raises priority to HIGH) | "routine"
    # probe = "probes/pneumothorax.json"  # instead of absent/present prompts: a linear probe trained
                                      # by `triage-node probe train` (path relative to this file)

    [calibration]                     # optional, written by `triage-node profile tune` (never by hand)
    evaluation_sha256 = "..."         # SHA-256 of the metrics.json the operating points came from
    date = "2026-12-01T15:00:00Z"
    cohort_size = 1200                # studies in the evaluation
    target_sensitivity = 0.95
    weights_sha256 = "..."            # the model weights the operating points hold for
    preprocessing_version = "tn-pre-1"
    [calibration.findings.pneumothorax]
    auroc = 0.91
    auroc_ci = [0.88, 0.94]
    n_pos = 120
    n_neg = 1080
    tuned = true                      # false: evaluated, old threshold kept (its SR says "not calibrated")

A profile without ``[calibration]``, or calibrated for other weights or another preprocessing,
is "uncalibrated" (:meth:`TriageProfile.calibration_state`).

TOML has no null, hence the optional keys. Everything else is checked strictly: a missing key, an
unknown key, a wrong type or a bad value raises :class:`ProfileError` naming the file and the key
(e.g. ``cxr.toml: findings[3].threshold: must be within [0, 1]``).
"""

from __future__ import annotations

import hashlib
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from dicom_sr import NOT_CALIBRATED_TEXT

__all__ = [
    "DEFAULT_PREPROCESSING",
    "MULTIFRAME_CHOICES",
    "NOT_CALIBRATED_TEXT",
    "PREPROCESSING_METHODS",
    "Calibration",
    "CalibrationState",
    "DomainCheck",
    "FindingCalibration",
    "FindingSpec",
    "PreprocessDefaults",
    "ProfileError",
    "SelectionCriteria",
    "TriageProfile",
    "Urgency",
    "load_profile",
    "load_profiles",
    "profile_version",
]

Urgency = Literal["high", "routine"]

#: Frame choices for multi-frame images (see ``preprocess.decode_pixels``).
MULTIFRAME_CHOICES: tuple[str, ...] = ("first", "middle")

#: Named preprocessing versions a profile may choose (``[preprocessing] method``); see preprocess.py.
PREPROCESSING_METHODS: tuple[str, ...] = ("tn-pre-1", "google-dicom-1")
DEFAULT_PREPROCESSING = PREPROCESSING_METHODS[0]


class ProfileError(ValueError):
    """A triage profile file is missing, unreadable or invalid. The message names file and key."""


@dataclass(frozen=True)
class FindingSpec:
    key: str
    display_name: str
    code: tuple[str, str, str]  # (value, scheme designator, meaning); SNOMED CT ("SCT") where one exists
    absent_prompts: tuple[str, ...]
    present_prompts: tuple[str, ...]
    threshold: float
    indeterminate_band: tuple[float, float]  # [low, high]; low <= threshold <= high
    urgency: Urgency
    probe: Any = None  # node.probes.probe.Probe scoring this finding instead of the prompts (issue 9)


@dataclass(frozen=True)
class SelectionCriteria:
    modalities: tuple[str, ...]
    sop_class_uids: tuple[str, ...]  # empty = any
    body_parts: tuple[str, ...]  # empty = any; "" = accept missing/empty BodyPartExamined
    view_positions: tuple[str, ...]  # empty = any; "" = accept missing/empty ViewPosition
    min_age_years: float | None
    max_age_years: float | None
    photometric_interpretations: tuple[str, ...]  # empty = any


@dataclass(frozen=True)
class DomainCheck:
    in_domain_prompts: tuple[str, ...]
    out_of_domain_prompts: tuple[str, ...]
    min_score: float  # softmax prob of in-domain below this -> out of domain


@dataclass(frozen=True)
class PreprocessDefaults:
    window_center: float | None
    window_width: float | None
    multiframe: str  # "first" | "middle"
    method: str = DEFAULT_PREPROCESSING  # one of PREPROCESSING_METHODS


@dataclass(frozen=True)
class FindingCalibration:
    auroc: float | None
    auroc_ci: tuple[float, float] | None
    n_pos: int
    n_neg: int
    tuned: bool = True  # False: evaluated, but its old threshold and band were kept (too few positives, ...)


@dataclass(frozen=True)
class Calibration:
    """Where a profile's operating points came from: one local evaluation (issue 13)."""

    evaluation_sha256: str
    date: str
    cohort_size: int
    target_sensitivity: float
    weights_sha256: str
    preprocessing_version: str
    findings: tuple[tuple[str, FindingCalibration], ...] = ()


@dataclass(frozen=True)
class CalibrationState:
    calibrated: bool
    text: str  # one sentence for SRs, /healthz, the worklist and the log
    evaluation_sha256: str = ""
    cohort_size: int = 0


@dataclass(frozen=True)
class TriageProfile:
    name: str
    version: str  # "sha256:<first 16 hex of the file bytes' sha256>"
    description: str
    selection: SelectionCriteria
    domain: DomainCheck
    preprocessing: PreprocessDefaults
    findings: tuple[FindingSpec, ...]
    calibration: Calibration | None = None

    def calibration_state(self, weights_sha256: str | None) -> CalibrationState:
        """Calibrated only for the weights (and the preprocessing) the evaluation was run with."""
        cal = self.calibration
        if cal is None:
            return CalibrationState(False, NOT_CALIBRATED_TEXT)
        if weights_sha256 is not None and cal.weights_sha256 != weights_sha256:
            return CalibrationState(
                False,
                f"{NOT_CALIBRATED_TEXT} (calibrated for other model weights {cal.weights_sha256[:12]})",
                cal.evaluation_sha256,
                cal.cohort_size,
            )
        if cal.preprocessing_version != self.preprocessing.method:
            return CalibrationState(
                False,
                f"{NOT_CALIBRATED_TEXT} (calibrated with preprocessing "
                f"{cal.preprocessing_version}, profile uses {self.preprocessing.method})",
                cal.evaluation_sha256,
                cal.cohort_size,
            )
        if cal.findings and not any(f.tuned for _, f in cal.findings):
            return CalibrationState(
                False,
                f"{NOT_CALIBRATED_TEXT} (evaluation sha256:{cal.evaluation_sha256[:16]} tuned no finding)",
                cal.evaluation_sha256,
                cal.cohort_size,
            )
        return CalibrationState(
            True,
            f"operating points calibrated on local data: evaluation sha256:"
            f"{cal.evaluation_sha256[:16]}, {cal.cohort_size} studies, {cal.date}",
            cal.evaluation_sha256,
            cal.cohort_size,
        )

    def finding_calibration(self, key: str, state: CalibrationState) -> str:
        """This finding's own statement where it differs from the profile's ``state``, else "".

        A calibrated profile can hold findings that its evaluation did not tune (not labelled, or
        too few positives): their thresholds are still the placeholders, and their SR says so.
        """
        cal = self.calibration
        if not state.calibrated or cal is None:
            return ""
        tuned = dict(cal.findings).get(key)
        if tuned is not None and tuned.tuned:
            return ""
        return f"{NOT_CALIBRATED_TEXT} (not tuned by evaluation sha256:{cal.evaluation_sha256[:16]})"

    def probe_versions(self) -> str:
        """``key=sha256:...`` per probe finding, ``;``-joined ("" without probes): what the SR records."""
        return ";".join(f"{f.key}={f.probe.version}" for f in self.findings if f.probe is not None)

    def finding(self, key: str) -> FindingSpec:
        for f in self.findings:
            if f.key == key:
                return f
        raise KeyError(key)


# --------------------------------------------------------------------------------------------
# loading

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_CS_RE = re.compile(r"^[A-Z0-9_ ]*$")  # DICOM Code String characters


def profile_version(data: bytes) -> str:
    """The version of a profile file: ``sha256:`` + the first 16 hex digits of its SHA-256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


class _Ctx:
    """Carries the file name into error messages."""

    def __init__(self, path: Path):
        self.file = str(path)

    def fail(self, key: str, msg: str) -> ProfileError:
        return ProfileError(f"{self.file}: {key}: {msg}")

    def table(self, obj: Any, key: str, allowed: set[str], optional: frozenset[str] | set[str] = frozenset()) -> dict:
        if not isinstance(obj, dict):
            raise self.fail(key or "<top>", "must be a table")
        prefix = f"{key}." if key else ""
        unknown = sorted(set(obj) - allowed - set(optional))
        if unknown:
            raise self.fail(prefix + unknown[0], "unknown key")
        missing = sorted(allowed - set(obj))
        if missing:
            raise self.fail(prefix + missing[0], "missing key")
        return obj

    def string(self, obj: Any, key: str, *, nonempty: bool = True) -> str:
        if not isinstance(obj, str):
            raise self.fail(key, f"must be a string, got {type(obj).__name__}")
        if nonempty and not obj.strip():
            raise self.fail(key, "must not be empty")
        return obj

    def number(self, obj: Any, key: str) -> float:
        if isinstance(obj, bool) or not isinstance(obj, (int, float)):
            raise self.fail(key, f"must be a number, got {type(obj).__name__}")
        value = float(obj)
        if not math.isfinite(value):
            raise self.fail(key, "must be finite")
        return value

    def strings(self, obj: Any, key: str, *, nonempty_list: bool, nonempty_items: bool = True) -> tuple[str, ...]:
        if not isinstance(obj, list):
            raise self.fail(key, f"must be an array of strings, got {type(obj).__name__}")
        if nonempty_list and not obj:
            raise self.fail(key, "must not be empty")
        out = tuple(self.string(v, f"{key}[{i}]", nonempty=nonempty_items) for i, v in enumerate(obj))
        if len(set(out)) != len(out):
            raise self.fail(key, "has duplicate entries")
        return out

    def prob(self, obj: Any, key: str) -> float:
        value = self.number(obj, key)
        if not 0.0 <= value <= 1.0:
            raise self.fail(key, "must be within [0, 1]")
        return value


def _code_strings(ctx: _Ctx, obj: Any, key: str, *, allow_empty_item: bool) -> tuple[str, ...]:
    values = ctx.strings(obj, key, nonempty_list=False, nonempty_items=not allow_empty_item)
    for i, v in enumerate(values):
        if v != v.strip().upper() or not _CS_RE.match(v) or len(v) > 16:
            raise ctx.fail(f"{key}[{i}]", f"{v!r} is not an upper-case DICOM code string")
    return values


def _selection(ctx: _Ctx, obj: Any) -> SelectionCriteria:
    t = ctx.table(
        obj,
        "selection",
        {"modalities", "sop_class_uids", "body_parts", "view_positions", "photometric_interpretations"},
        {"min_age_years", "max_age_years"},
    )
    modalities = _code_strings(ctx, t["modalities"], "selection.modalities", allow_empty_item=False)
    if not modalities:
        raise ctx.fail("selection.modalities", "must not be empty")
    uids = ctx.strings(t["sop_class_uids"], "selection.sop_class_uids", nonempty_list=False)
    for i, uid in enumerate(uids):
        if not _UID_RE.match(uid) or len(uid) > 64:
            raise ctx.fail(f"selection.sop_class_uids[{i}]", f"{uid!r} is not a UID")
    ages: dict[str, float | None] = {}
    for k in ("min_age_years", "max_age_years"):
        if k in t:
            v = ctx.number(t[k], f"selection.{k}")
            if v < 0:
                raise ctx.fail(f"selection.{k}", "must be >= 0")
            ages[k] = v
        else:
            ages[k] = None
    low, high = ages["min_age_years"], ages["max_age_years"]
    if low is not None and high is not None and low > high:
        raise ctx.fail("selection.max_age_years", "must be >= min_age_years")
    return SelectionCriteria(
        modalities=modalities,
        sop_class_uids=uids,
        body_parts=_code_strings(ctx, t["body_parts"], "selection.body_parts", allow_empty_item=True),
        view_positions=_code_strings(ctx, t["view_positions"], "selection.view_positions", allow_empty_item=True),
        min_age_years=ages["min_age_years"],
        max_age_years=ages["max_age_years"],
        photometric_interpretations=_code_strings(
            ctx, t["photometric_interpretations"], "selection.photometric_interpretations", allow_empty_item=False
        ),
    )


def _domain(ctx: _Ctx, obj: Any) -> DomainCheck:
    t = ctx.table(obj, "domain", {"in_domain_prompts", "out_of_domain_prompts", "min_score"})
    return DomainCheck(
        in_domain_prompts=ctx.strings(t["in_domain_prompts"], "domain.in_domain_prompts", nonempty_list=True),
        out_of_domain_prompts=ctx.strings(
            t["out_of_domain_prompts"], "domain.out_of_domain_prompts", nonempty_list=True
        ),
        min_score=ctx.prob(t["min_score"], "domain.min_score"),
    )


def _preprocessing(ctx: _Ctx, obj: Any) -> PreprocessDefaults:
    t = ctx.table(obj, "preprocessing", {"multiframe"}, {"window_center", "window_width", "method"})
    center = ctx.number(t["window_center"], "preprocessing.window_center") if "window_center" in t else None
    width = ctx.number(t["window_width"], "preprocessing.window_width") if "window_width" in t else None
    if (center is None) != (width is None):
        missing = "window_width" if width is None else "window_center"
        raise ctx.fail(f"preprocessing.{missing}", "window_center and window_width go together")
    if width is not None and width < 1:
        raise ctx.fail("preprocessing.window_width", "must be >= 1")
    multiframe = ctx.string(t["multiframe"], "preprocessing.multiframe")
    if multiframe not in MULTIFRAME_CHOICES:
        raise ctx.fail("preprocessing.multiframe", f"must be one of {', '.join(MULTIFRAME_CHOICES)}")
    method = ctx.string(t["method"], "preprocessing.method") if "method" in t else DEFAULT_PREPROCESSING
    if method not in PREPROCESSING_METHODS:
        raise ctx.fail("preprocessing.method", f"must be one of {', '.join(PREPROCESSING_METHODS)}")
    return PreprocessDefaults(window_center=center, window_width=width, multiframe=multiframe, method=method)


def _calibration(ctx: _Ctx, obj: Any, finding_keys: set[str]) -> Calibration:
    t = ctx.table(
        obj,
        "calibration",
        {"evaluation_sha256", "date", "cohort_size", "target_sensitivity", "weights_sha256", "preprocessing_version"},
        {"findings"},
    )
    cohort = t["cohort_size"]
    if isinstance(cohort, bool) or not isinstance(cohort, int) or cohort < 0:
        raise ctx.fail("calibration.cohort_size", "must be an integer >= 0")
    findings: list[tuple[str, FindingCalibration]] = []
    table = t.get("findings", {})
    if not isinstance(table, dict):
        raise ctx.fail("calibration.findings", "must be a table")
    for key, value in table.items():
        k = f"calibration.findings.{key}"
        if key not in finding_keys:
            raise ctx.fail(k, "not a finding of this profile")
        f = ctx.table(value, k, {"n_pos", "n_neg"}, {"auroc", "auroc_ci", "tuned"})
        if not isinstance(f.get("tuned", True), bool):
            raise ctx.fail(f"{k}.tuned", "must be true or false")
        ci = f.get("auroc_ci")
        if ci is not None and (not isinstance(ci, list) or len(ci) != 2):
            raise ctx.fail(f"{k}.auroc_ci", "must be [low, high]")
        findings.append(
            (
                key,
                FindingCalibration(
                    auroc=ctx.prob(f["auroc"], f"{k}.auroc") if "auroc" in f else None,
                    auroc_ci=(ctx.prob(ci[0], f"{k}.auroc_ci[0]"), ctx.prob(ci[1], f"{k}.auroc_ci[1]")) if ci else None,
                    n_pos=int(ctx.number(f["n_pos"], f"{k}.n_pos")),
                    n_neg=int(ctx.number(f["n_neg"], f"{k}.n_neg")),
                    tuned=f.get("tuned", True),
                ),
            )
        )
    return Calibration(
        evaluation_sha256=ctx.string(t["evaluation_sha256"], "calibration.evaluation_sha256"),
        date=ctx.string(t["date"], "calibration.date"),
        cohort_size=cohort,
        target_sensitivity=ctx.prob(t["target_sensitivity"], "calibration.target_sensitivity"),
        weights_sha256=ctx.string(t["weights_sha256"], "calibration.weights_sha256"),
        preprocessing_version=ctx.string(t["preprocessing_version"], "calibration.preprocessing_version"),
        findings=tuple(findings),
    )


def _finding(ctx: _Ctx, obj: Any, i: int) -> FindingSpec:
    k = f"findings[{i}]"
    t = ctx.table(
        obj,
        k,
        {
            "key",
            "display_name",
            "code",
            "threshold",
            "indeterminate_band",
            "urgency",
        },
        {"absent_prompts", "present_prompts", "probe"},
    )
    if "probe" in t:
        extra = sorted({"absent_prompts", "present_prompts"} & set(t))
        if extra:
            raise ctx.fail(f"{k}.{extra[0]}", "a probe finding has no prompts (the probe replaces them)")
    else:
        for name in ("absent_prompts", "present_prompts"):
            if name not in t:
                raise ctx.fail(f"{k}.{name}", 'missing key (or give probe = "path")')
    key = ctx.string(t["key"], f"{k}.key")
    if not _KEY_RE.match(key):
        raise ctx.fail(f"{k}.key", f"{key!r} must match {_KEY_RE.pattern}")
    code = t["code"]
    if not isinstance(code, list) or len(code) != 3:
        raise ctx.fail(f"{k}.code", "must be [code value, coding scheme designator, code meaning]")
    code_t = tuple(ctx.string(c, f"{k}.code[{j}]") for j, c in enumerate(code))
    if len(code_t[0]) > 16 and code_t[1] != "URN":  # DICOM Code Value (SH) is at most 16 chars
        raise ctx.fail(f"{k}.code[0]", "code value longer than 16 characters")
    if len(code_t[2]) > 64:
        raise ctx.fail(f"{k}.code[2]", "code meaning longer than 64 characters")
    threshold = ctx.prob(t["threshold"], f"{k}.threshold")
    band = t["indeterminate_band"]
    if not isinstance(band, list) or len(band) != 2:
        raise ctx.fail(f"{k}.indeterminate_band", "must be [low, high]")
    low = ctx.prob(band[0], f"{k}.indeterminate_band[0]")
    high = ctx.prob(band[1], f"{k}.indeterminate_band[1]")
    if not low <= threshold <= high:
        raise ctx.fail(f"{k}.indeterminate_band", f"must satisfy low <= threshold <= high ({low}, {threshold}, {high})")
    urgency = ctx.string(t["urgency"], f"{k}.urgency")
    if urgency not in get_args(Urgency):
        raise ctx.fail(f"{k}.urgency", f"must be one of {', '.join(get_args(Urgency))}")
    probe = None
    if "probe" in t:
        from node.probes.probe import ProbeError, load_probe

        where = Path(ctx.string(t["probe"], f"{k}.probe"))
        try:
            probe = load_probe(where if where.is_absolute() else Path(ctx.file).parent / where)
        except ProbeError as exc:
            raise ctx.fail(f"{k}.probe", str(exc)) from None
    return FindingSpec(
        key=key,
        display_name=ctx.string(t["display_name"], f"{k}.display_name"),
        code=code_t,  # type: ignore[arg-type]
        absent_prompts=() if probe else ctx.strings(t["absent_prompts"], f"{k}.absent_prompts", nonempty_list=True),
        present_prompts=() if probe else ctx.strings(t["present_prompts"], f"{k}.present_prompts", nonempty_list=True),
        probe=probe,
        threshold=threshold,
        indeterminate_band=(low, high),
        urgency=urgency,  # type: ignore[arg-type]
    )


def parse_profile(data: bytes, source: str | Path = "<profile>") -> TriageProfile:
    """Parse and validate profile bytes (``source`` only names the file in errors)."""
    ctx = _Ctx(Path(source))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(f"{ctx.file}: not UTF-8: {exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"{ctx.file}: invalid TOML: {exc}") from None
    t = ctx.table(doc, "", {"name", "description", "selection", "domain", "preprocessing", "findings"}, {"calibration"})
    name = ctx.string(t["name"], "name")
    if not _NAME_RE.match(name):
        raise ctx.fail("name", f"{name!r} must match {_NAME_RE.pattern}")
    findings_raw = t["findings"]
    if not isinstance(findings_raw, list) or not findings_raw:
        raise ctx.fail("findings", "must be a non-empty array of tables ([[findings]])")
    findings = tuple(_finding(ctx, f, i) for i, f in enumerate(findings_raw))
    seen: set[str] = set()
    for i, f in enumerate(findings):
        if f.key in seen:
            raise ctx.fail(f"findings[{i}].key", f"duplicate key {f.key!r}")
        seen.add(f.key)
    preprocessing = _preprocessing(ctx, t["preprocessing"])
    for i, f in enumerate(findings):
        if f.probe is not None and f.probe.preprocessing_version != preprocessing.method:
            raise ctx.fail(
                f"findings[{i}].probe",
                f"{f.probe.path}: probe trained on preprocessing "
                f"{f.probe.preprocessing_version}, but the profile uses {preprocessing.method}: "
                "train it again (triage-node probe train)",
            )
    return TriageProfile(
        name=name,
        version=profile_version(data),
        description=ctx.string(t["description"], "description"),
        selection=_selection(ctx, t["selection"]),
        domain=_domain(ctx, t["domain"]),
        preprocessing=preprocessing,
        findings=findings,
        calibration=_calibration(ctx, t["calibration"], seen) if "calibration" in t else None,
    )


def load_profile(path: Path) -> TriageProfile:
    """Load one profile file strictly; any problem raises :class:`ProfileError` naming file and key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return parse_profile(data, path)


def load_profiles(directory: Path) -> dict[str, TriageProfile]:
    """Load every ``*.toml`` in ``directory`` (sorted by file name), keyed by profile name.

    Two files declaring the same ``name`` are an error, as is a missing directory.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ProfileError(f"{directory}: not a directory")
    profiles: dict[str, TriageProfile] = {}
    origin: dict[str, Path] = {}
    for path in sorted(directory.glob("*.toml")):
        profile = load_profile(path)
        if profile.name in profiles:
            raise ProfileError(f"{path}: name: {profile.name!r} already defined in {origin[profile.name]}")
        profiles[profile.name] = profile
        origin[profile.name] = path
    return profiles
