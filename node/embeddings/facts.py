"""The per-image header facts subgroup analysis needs (sex, age, device, site, view).

Copied from the image at embedding time so that an evaluation over thousands of studies reads
them from the database with the vectors, without opening a single DICOM file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from pydicom.dataset import Dataset

from node.triage.select import patient_age_years

__all__ = ["HeaderFacts", "age_band", "header_facts"]


@dataclass(frozen=True)
class HeaderFacts:
    sex: str = ""  # PatientSex: M, F, O or ""
    age_years: float | None = None  # as node.triage.select works it out (PatientAge, else birth date)
    manufacturer: str = ""
    manufacturer_model: str = ""
    station_name: str = ""
    institution_name: str = ""
    modality: str = ""
    view_position: str = ""
    body_part: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _text(ds: Dataset, keyword: str, limit: int) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__len__") and len(value):
        value = value[0]
    return str(value).strip()[:limit]


def header_facts(ds: Dataset) -> HeaderFacts:
    """The facts of one image header; missing tags become "" (or None for the age)."""
    return HeaderFacts(
        sex=_text(ds, "PatientSex", 16).upper(),
        age_years=patient_age_years(ds),
        manufacturer=_text(ds, "Manufacturer", 64),
        manufacturer_model=_text(ds, "ManufacturerModelName", 64),
        station_name=_text(ds, "StationName", 64),
        institution_name=_text(ds, "InstitutionName", 64),
        modality=_text(ds, "Modality", 16).upper(),
        view_position=_text(ds, "ViewPosition", 16).upper(),
        body_part=_text(ds, "BodyPartExamined", 16).upper(),
    )


def age_band(age_years: float | None) -> str:
    """The issue's bands: 18-39, 40-64, 65+ (and <18, unknown)."""
    if age_years is None:
        return "unknown"
    if age_years < 18:
        return "<18"
    if age_years < 40:
        return "18-39"
    if age_years < 65:
        return "40-64"
    return "65+"
