"""C-FIND matching (PS3.4 C.2.2.2) translated to SQL over the index.

The entry point for any front end is :func:`find`: a query level (PATIENT / STUDY / SERIES /
IMAGE), a dict ``keyword -> value`` of matching keys (``""``/``None`` = universal match, i.e.
"return this key") and a cap. It yields :class:`Match` objects whose ``values`` hold every
supported key of the level and the levels above, so DIMSE (``response_dataset``) and QIDO-RS
can both project what was asked for.

Matching supported (per attribute kind):
  single value          exact (strings, UIDs, numbers)
  wildcard * and ?      SQL LIKE with '!' as escape character (literal %, _ and ! escaped)
  ranges (DA, TM)       "A-B", "A-", "-B" (empty values never match a range)
  UID lists             "uid1\\uid2" -> IN (...)
  ModalitiesInStudy     any of the listed modalities present in one of the study's series

Matching is relational (keys of any level above the query level may be given, for Patient
Root as for Study Root). Keys below the query level are not matched, and returned empty.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset
from sqlalchemy import ColumnElement, and_, exists, func, or_, select
from sqlalchemy.orm import Session, aliased

from node.db.models import Instance, Patient, Series, Study

LEVELS = ("PATIENT", "STUDY", "SERIES", "IMAGE")
STUDY_ROOT = "STUDY"
PATIENT_ROOT = "PATIENT"
RESPONSE_CHARSET = "ISO_IR 192"  # index strings are Python str: answer in UTF-8
ESCAPE = "!"


class InvalidQuery(ValueError):
    """The identifier cannot be matched (bad level, bad range, bad number): C-FIND 0xA900/0xC000."""


@dataclass(frozen=True)
class _Key:
    level: str
    column: Any  # a SQLAlchemy column, or None for computed keys
    kind: str  # str | uid | date | time | int | modalities | computed


_KEYS: dict[str, _Key] = {
    # PATIENT
    "PatientID": _Key("PATIENT", Patient.patient_id, "str"),
    "IssuerOfPatientID": _Key("PATIENT", Patient.issuer, "str"),
    "PatientName": _Key("PATIENT", Patient.name, "str"),
    "PatientBirthDate": _Key("PATIENT", Patient.birth_date, "date"),
    "PatientSex": _Key("PATIENT", Patient.sex, "str"),
    "NumberOfPatientRelatedStudies": _Key("PATIENT", None, "computed"),
    "NumberOfPatientRelatedSeries": _Key("PATIENT", None, "computed"),
    "NumberOfPatientRelatedInstances": _Key("PATIENT", None, "computed"),
    # STUDY
    "StudyInstanceUID": _Key("STUDY", Study.study_instance_uid, "uid"),
    "StudyDate": _Key("STUDY", Study.study_date, "date"),
    "StudyTime": _Key("STUDY", Study.study_time, "time"),
    "AccessionNumber": _Key("STUDY", Study.accession_number, "str"),
    "StudyID": _Key("STUDY", Study.study_id, "str"),
    "StudyDescription": _Key("STUDY", Study.description, "str"),
    "ReferringPhysicianName": _Key("STUDY", Study.referring_physician, "str"),
    "ModalitiesInStudy": _Key("STUDY", Study.modalities, "modalities"),
    "NumberOfStudyRelatedSeries": _Key("STUDY", None, "computed"),
    "NumberOfStudyRelatedInstances": _Key("STUDY", Study.instance_count, "computed"),
    # SERIES
    "SeriesInstanceUID": _Key("SERIES", Series.series_instance_uid, "uid"),
    "Modality": _Key("SERIES", Series.modality, "str"),
    "SeriesNumber": _Key("SERIES", Series.series_number, "int"),
    "SeriesDescription": _Key("SERIES", Series.description, "str"),
    "BodyPartExamined": _Key("SERIES", Series.body_part, "str"),
    "NumberOfSeriesRelatedInstances": _Key("SERIES", None, "computed"),
    # IMAGE
    "SOPInstanceUID": _Key("IMAGE", Instance.sop_instance_uid, "uid"),
    "SOPClassUID": _Key("IMAGE", Instance.sop_class_uid, "uid"),
    "InstanceNumber": _Key("IMAGE", Instance.instance_number, "int"),
}
UNIQUE_KEY = {
    "PATIENT": "PatientID",
    "STUDY": "StudyInstanceUID",
    "SERIES": "SeriesInstanceUID",
    "IMAGE": "SOPInstanceUID",
}
SUPPORTED_KEYS = frozenset(_KEYS)


@dataclass
class Match:
    level: str
    values: dict[str, Any]  # keyword -> str | int | list[str] | None, every key of the level and above
    instance_path: str | None = None  # IMAGE level: file path relative to storage
    transfer_syntax_uid: str | None = None


def _level_index(level: str) -> int:
    try:
        return LEVELS.index(level)
    except ValueError:
        raise InvalidQuery(f"unsupported QueryRetrieveLevel {level!r}") from None


# ------------------------------------------------------------------ value -> SQL condition
def _like_pattern(value: str) -> str:
    out = []
    for ch in value:
        if ch in (ESCAPE, "%", "_"):
            out.append(ESCAPE + ch)
        elif ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        else:
            out.append(ch)
    return "".join(out)


def _string_condition(column: Any, value: str) -> ColumnElement[bool]:
    if "*" in value or "?" in value:
        if value.strip("*") == "":
            return column.is_not(None)  # "*" alone: universal
        return column.like(_like_pattern(value), escape=ESCAPE)
    return column == value


def _upto(column: Any, high: str) -> ColumnElement[bool]:
    """``column <= high``, prefix-inclusive ("1200" includes "120059.5"); no collation tricks, so
    PostgreSQL with a locale collation answers like SQLite."""
    return or_(column <= high, column.like(_like_pattern(high) + "%", escape=ESCAPE))


def _range_condition(column: Any, value: str, kind: str) -> ColumnElement[bool]:
    """DA/TM single value or range; empty values never match a range."""
    value = value.replace(":", "")  # tolerate ACR-NEMA style times
    if "-" not in value:
        if kind == "time":
            return or_(column == value, column.like(_like_pattern(value) + "%", escape=ESCAPE))
        return _string_condition(column, value)
    low, _, high = value.partition("-")
    low, high = low.strip(), high.strip()
    if not low and not high:
        raise InvalidQuery(f"empty range {value!r}")
    for part in (low, high):
        if part and not part.replace(".", "").isdigit():
            raise InvalidQuery(f"bad {kind} range {value!r}")
    conds = [column != ""]
    if low:
        conds.append(column >= low)
    if high:
        conds.append(_upto(column, high))
    return and_(*conds)


def _condition(keyword: str, key: _Key, value: Any) -> ColumnElement[bool] | None:
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        values = [str(v) for v in value if str(v) != ""]
    else:
        text = str(value)
        values = [v for v in text.split("\\")] if key.kind in ("uid", "modalities") else [text]
        values = [v for v in values if v != ""]
    if not values:
        return None  # universal match
    col = key.column
    if key.kind == "computed":
        return None  # return key only
    if key.kind == "uid":
        return col.in_(values) if len(values) > 1 else col == values[0]
    if key.kind == "modalities":  # any of the listed modalities in one of the study's series
        # An aliased Series: at SERIES or IMAGE level the outer query selects from Series too, and
        # auto-correlation would leave the sub-query without a FROM clause (a 500 found by fuzzing).
        other = aliased(Series)
        parts = [
            other.modality.like(_like_pattern(mod), escape=ESCAPE)
            if ("*" in mod or "?" in mod)
            else other.modality == mod
            for mod in values
        ]
        return exists().where(other.study_pk == Study.id, or_(*parts))
    if key.kind == "int":
        try:
            ints = [int(v) for v in values]
        except ValueError:
            raise InvalidQuery(f"{keyword}: {values!r} is not a number") from None
        return col.in_(ints) if len(ints) > 1 else col == ints[0]
    if key.kind in ("date", "time"):
        return _range_condition(col, values[0], key.kind)
    return _string_condition(col, values[0])


# ------------------------------------------------------------------ the query
def _base_select(level: str):
    if level == "PATIENT":
        return select(Patient)
    if level == "STUDY":
        return select(Study, Patient).join(Patient, Study.patient_pk == Patient.id)
    if level == "SERIES":
        return (
            select(Series, Study, Patient)
            .join(Study, Series.study_pk == Study.id)
            .join(Patient, Study.patient_pk == Patient.id)
        )
    return (
        select(Instance, Series, Study, Patient)
        .join(Series, Instance.series_pk == Series.id)
        .join(Study, Series.study_pk == Study.id)
        .join(Patient, Study.patient_pk == Patient.id)
    )


def _where(level: str, criteria: Mapping[str, Any]) -> list[ColumnElement[bool]]:
    depth = _level_index(level)
    conds = []
    for keyword, value in criteria.items():
        key = _KEYS.get(keyword)
        if key is None or LEVELS.index(key.level) > depth:
            continue  # unsupported, or below the query level: not matched
        cond = _condition(keyword, key, value)
        if cond is not None:
            conds.append(cond)
    return conds


def _order(level: str) -> list[Any]:
    return {
        "PATIENT": [Patient.id],
        "STUDY": [Study.id],
        "SERIES": [Series.study_pk, Series.id],
        "IMAGE": [Instance.series_pk, Instance.id],
    }[level]


def _values(level: str, row: Any) -> dict[str, Any]:
    objs: dict[type, Any] = {type(o): o for o in row}
    vals: dict[str, Any] = {}
    for keyword, key in _KEYS.items():
        if key.column is None or key.kind == "computed":
            continue
        owner = key.column.class_
        if owner in objs:
            value = getattr(objs[owner], key.column.key)
            if key.kind == "modalities":
                value = [m for m in (value or "").split("\\") if m]
            vals[keyword] = value
    study = objs.get(Study)
    if study is not None:
        vals["NumberOfStudyRelatedInstances"] = study.instance_count
    return vals


def find(
    session: Session,
    level: str,
    criteria: Mapping[str, Any],
    *,
    limit: int | None = 1000,
    offset: int = 0,
    counts: bool = True,
    batch: int = 500,
) -> Iterator[Match]:
    """Stream the matches of ``criteria`` at ``level`` (at most ``limit``; None = no cap).

    ``counts`` adds the Number Of ... Related ... keys (one small aggregate per match).
    """
    level = level.upper()
    _level_index(level)
    stmt = _base_select(level).where(*_where(level, criteria)).order_by(*_order(level))
    if offset:
        stmt = stmt.offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    result = session.execute(stmt.execution_options(yield_per=batch))
    for row in result:
        values = _values(level, row)
        if counts:
            _add_counts(session, level, row, values)
        m = Match(level, values)
        if level == "IMAGE":
            inst = row[0]
            m.instance_path, m.transfer_syntax_uid = inst.path, inst.transfer_syntax_uid
        yield m


def _add_counts(session: Session, level: str, row: Any, values: dict[str, Any]) -> None:
    objs: dict[type, Any] = {type(o): o for o in row}
    if level == "PATIENT":
        p = objs[Patient]
        values["NumberOfPatientRelatedStudies"] = session.scalar(
            select(func.count(Study.id)).where(Study.patient_pk == p.id)
        )
        values["NumberOfPatientRelatedSeries"] = session.scalar(
            select(func.count(Series.id)).join(Study, Series.study_pk == Study.id).where(Study.patient_pk == p.id)
        )
        values["NumberOfPatientRelatedInstances"] = session.scalar(
            select(func.coalesce(func.sum(Study.instance_count), 0)).where(Study.patient_pk == p.id)
        )
    elif level == "STUDY":
        values["NumberOfStudyRelatedSeries"] = session.scalar(
            select(func.count(Series.id)).where(Series.study_pk == objs[Study].id)
        )
    elif level == "SERIES":
        values["NumberOfSeriesRelatedInstances"] = session.scalar(
            select(func.count(Instance.id)).where(Instance.series_pk == objs[Series].id)
        )


def instances_for_retrieve(
    session: Session, level: str, criteria: Mapping[str, Any], *, limit: int = 65535
) -> list[Match]:
    """C-GET / C-MOVE / WADO: every instance under the matches of ``criteria`` at ``level``.

    Retrieval needs the unique key of the level (a UID list is fine); without it, InvalidQuery.
    """
    level = level.upper()
    _level_index(level)
    unique = UNIQUE_KEY[level]
    if not criteria.get(unique):
        raise InvalidQuery(f"a {level} level retrieve needs {unique}")
    stmt = _base_select("IMAGE").where(
        *_where(level, {k: v for k, v in criteria.items() if k in _KEYS and _KEYS[k].kind != "computed"})
    )
    stmt = stmt.order_by(*_order("IMAGE")).limit(limit)
    out = []
    for row in session.execute(stmt):
        inst = row[0]
        out.append(Match("IMAGE", _values("IMAGE", row), inst.path, inst.transfer_syntax_uid))
    return out


# ------------------------------------------------------------------ DIMSE identifiers
def identifier_criteria(identifier: Dataset) -> dict[str, Any]:
    """keyword -> value (str, or list for multi-valued elements) of a C-FIND identifier."""
    criteria: dict[str, Any] = {}
    for elem in identifier:
        kw = elem.keyword
        if not kw or kw in ("QueryRetrieveLevel", "SpecificCharacterSet") or elem.VR == "SQ":
            continue
        value = elem.value
        if value is None or value == "":
            criteria[kw] = ""
        elif elem.VM > 1:
            criteria[kw] = [str(v) for v in value]
        else:
            criteria[kw] = str(value)
    return criteria


def response_dataset(match: Match, identifier: Dataset, *, retrieve_ae: str | None = None) -> Dataset:
    """The C-FIND response: the identifier's keys filled from the match, plus the unique keys."""
    ds = Dataset()
    ds.SpecificCharacterSet = RESPONSE_CHARSET
    ds.QueryRetrieveLevel = match.level
    depth = LEVELS.index(match.level)
    for lvl in LEVELS[1 if match.level != "PATIENT" else 0 : depth + 1]:
        kw = UNIQUE_KEY[lvl]
        setattr(ds, kw, match.values.get(kw) or "")
    for elem in identifier:
        kw = elem.keyword
        if not kw or kw in ("QueryRetrieveLevel", "SpecificCharacterSet") or kw in ds:
            continue
        if kw in match.values:
            value = match.values[kw]
            setattr(ds, kw, value)
        else:
            ds.add(_empty_like(elem))  # unsupported or below level: returned empty
    if retrieve_ae:
        ds.RetrieveAETitle = retrieve_ae
    return ds


def _empty_like(elem: Any) -> Any:
    from pydicom.dataelem import DataElement

    return DataElement(elem.tag, elem.VR, [] if elem.VR == "SQ" else None)


def to_dataset(match: Match, include: set[str] | None = None) -> Dataset:
    """Every known value of a match (or only ``include``) as a Dataset, e.g. for QIDO-RS JSON."""
    ds = Dataset()
    ds.SpecificCharacterSet = RESPONSE_CHARSET
    for kw, value in match.values.items():
        if include is None or kw in include or kw == UNIQUE_KEY[match.level]:
            setattr(ds, kw, value if value is not None else None)
    return ds


def find_identifier(
    session: Session,
    identifier: Dataset,
    *,
    root: str = STUDY_ROOT,
    limit: int | None = 1000,
    retrieve_ae: str | None = None,
) -> Iterator[Dataset]:
    """C-FIND in one call: validate the level for the information model, match, build responses."""
    level = str(identifier.get("QueryRetrieveLevel", "") or "").upper()
    _level_index(level)
    if root == STUDY_ROOT and level == "PATIENT":
        raise InvalidQuery("PATIENT level is not part of the Study Root information model")
    criteria = identifier_criteria(identifier)
    for match in find(session, level, criteria, limit=limit):
        yield response_dataset(match, identifier, retrieve_ae=retrieve_ae)
