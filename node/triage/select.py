"""Which images of a study a triage profile accepts; every other instance skipped with a reason.

Works on header datasets (no pixel values are read). Checks run in this order and the first
failing one is the recorded reason (stable short codes, used in SRs and metrics):

=========================  ==================================================================
``own-sr``                 an SR of this node (node/own_instances.py: our own output)
``not-an-image``           a non-image SOP class (SR, KO, PR, encapsulated documents, raw data,
                           waveforms, RT plans/structures, ...), Modality SR/KO/PR/DOC/..., no
                           Rows/Columns, or no Pixel Data element (see ``require_pixel_data``)
``modality``               Modality not in the profile
``sop-class``              SOP Class UID not in the profile (when the profile lists any)
``photometric``            PhotometricInterpretation not in the profile (when it lists any)
``body-part``              BodyPartExamined present and not in the profile
``body-part-unknown``      BodyPartExamined missing/empty and the profile does not list ``""``
``view-position``          ViewPosition present and not in the profile (e.g. LL, RL, LAT for cxr)
``view-position-unknown``  ViewPosition missing/empty and the profile does not list ``""``
``patient-age``            age outside [min_age_years, max_age_years] (both bounds inclusive)
``patient-age-unknown``    the profile has an age bound and no age can be worked out
``duplicate``              otherwise acceptable, but its SOP Instance UID was already accepted
=========================  ==================================================================

Code strings are compared after stripping spaces and upper-casing.

Age rules: PatientAge (0010,1010) ``nnnD|W|M|Y`` first (D/365.25, W*7/365.25, M/12, Y); else
PatientBirthDate against the first of StudyDate, SeriesDate, AcquisitionDate, ContentDate, as
completed years plus the elapsed fraction of the current year of life (a birthday on 29 February
counts on 28 February in common years). A malformed or negative age counts as unknown. When the
profile has an age bound and the age is unknown, the image is skipped (``patient-age-unknown``):
a child's radiograph must not be triaged by an adult profile because a tag was left empty.

Pixel data: by default an instance without a Pixel Data element (PixelData, FloatPixelData or
DoubleFloatPixelData) is ``not-an-image``. Callers that read headers with
``stop_before_pixels=True`` pass ``require_pixel_data=False`` (then Rows/Columns decide); reading
with ``defer_size`` keeps the element present without loading it.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from node.own_instances import is_own_sr
from node.triage.profiles import TriageProfile

__all__ = ["NON_IMAGE_MODALITIES", "Selection", "Skipped", "patient_age_years", "select_images"]


@dataclass(frozen=True)
class Skipped:
    sop_instance_uid: str
    reason: str  # stable short code, see the module docstring


@dataclass(frozen=True)
class Selection:
    accepted: tuple[Dataset, ...]
    skipped: tuple[Skipped, ...]


#: Modalities whose instances never carry an image for the model.
NON_IMAGE_MODALITIES = frozenset(
    {"SR", "KO", "PR", "DOC", "REG", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "ECG", "HD", "AU", "PLAN", "FID"}
)

# SOP Class UIDs of non-image objects: exact UIDs and prefixes.
_NON_IMAGE_EXACT = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66",  # raw data
        "1.2.840.10008.5.1.4.1.1.67",  # real world value mapping
    }
)
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, KO (88.59), CAD SR, dose SR ...
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA/STL/OBJ/MTL
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.481.",  # RT objects (RT Image, .481.1, is kept: modality filters it)
    "1.2.840.10008.5.1.4.1.1.66.",  # registrations, fiducials, segmentations, tractography
    "1.2.840.10008.5.1.4.1.1.68.",  # surface scans
    "1.2.840.10008.5.1.4.1.1.82.",  # measurement/tractography results
    "1.2.840.10008.5.1.4.1.1.200.",  # protocols
)
_RT_IMAGE = "1.2.840.10008.5.1.4.1.1.481.1"

_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_AGE_RE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
_DATE_RE = re.compile(r"^\s*(\d{4})(\d{2})(\d{2})\s*$")


def _cs(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__len__") and len(value):
        value = value[0]  # multi-valued: first value
    return str(value).strip().upper()


def _is_non_image_class(uid: str) -> bool:
    if uid in _NON_IMAGE_EXACT:
        return True
    if uid == _RT_IMAGE:
        return False
    return uid.startswith(_NON_IMAGE_PREFIXES)


def _parse_date(value: object) -> _dt.date | None:
    if value is None:
        return None
    m = _DATE_RE.match(str(value))
    if not m:
        return None
    try:
        return _dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        return None


def _birthday(birth: _dt.date, year: int) -> _dt.date:
    try:
        return birth.replace(year=year)
    except ValueError:  # 29 February in a common year
        return _dt.date(year, 2, 28)


def patient_age_years(ds: Dataset) -> float | None:
    """The patient's age in years at the time of the study, or None when unknown (see module doc)."""
    age = ds.get("PatientAge")
    if age:
        m = _AGE_RE.match(str(age).upper())
        if m:
            n, unit = int(m[1]), m[2]
            return {"D": n / 365.25, "W": n * 7 / 365.25, "M": n / 12, "Y": float(n)}[unit]
    birth = _parse_date(ds.get("PatientBirthDate"))
    if birth is None:
        return None
    when = None
    for keyword in ("StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        when = _parse_date(ds.get(keyword))
        if when is not None:
            break
    if when is None or when < birth:
        return None
    years = when.year - birth.year
    last = _birthday(birth, when.year)
    if last > when:
        years -= 1
        last = _birthday(birth, when.year - 1)
    nxt = _birthday(birth, last.year + 1)
    return years + (when - last).days / (nxt - last).days


def _reason(ds: Dataset, profile: TriageProfile, require_pixel_data: bool) -> str | None:
    sel = profile.selection
    modality = _cs(ds, "Modality")
    sop_class = str(ds.get("SOPClassUID", "") or "").strip()
    if is_own_sr(ds):
        return "own-sr"
    if modality in NON_IMAGE_MODALITIES or _is_non_image_class(sop_class):
        return "not-an-image"
    if "Rows" not in ds or "Columns" not in ds or not ds.get("Rows") or not ds.get("Columns"):
        return "not-an-image"
    if require_pixel_data and not any(k in ds for k in _PIXEL_KEYWORDS):
        return "not-an-image"
    if modality not in sel.modalities:
        return "modality"
    if sel.sop_class_uids and sop_class not in sel.sop_class_uids:
        return "sop-class"
    if sel.photometric_interpretations and _cs(ds, "PhotometricInterpretation") not in sel.photometric_interpretations:
        return "photometric"
    if sel.body_parts:
        part = _cs(ds, "BodyPartExamined")
        if part not in sel.body_parts:
            return "body-part" if part else "body-part-unknown"
    if sel.view_positions:
        view = _cs(ds, "ViewPosition")
        if view not in sel.view_positions:
            return "view-position" if view else "view-position-unknown"
    if sel.min_age_years is not None or sel.max_age_years is not None:
        age = patient_age_years(ds)
        if age is None:
            return "patient-age-unknown"
        if sel.min_age_years is not None and age < sel.min_age_years:
            return "patient-age"
        if sel.max_age_years is not None and age > sel.max_age_years:
            return "patient-age"
    return None


def select_images(
    datasets: Sequence[Dataset],
    profile: TriageProfile,
    *,
    require_pixel_data: bool = True,
) -> Selection:
    """Split a study's instances into the images ``profile`` accepts and the skipped rest.

    Order is kept. Each skipped instance carries one reason code (module docstring).
    """
    accepted: list[Dataset] = []
    skipped: list[Skipped] = []
    seen: set[str] = set()
    for ds in datasets:
        uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        reason = _reason(ds, profile, require_pixel_data)
        if reason is None and uid:
            if uid in seen:
                reason = "duplicate"
            else:
                seen.add(uid)
        if reason is None:
            accepted.append(ds)
        else:
            skipped.append(Skipped(uid, reason))
    return Selection(tuple(accepted), tuple(skipped))
