"""node.query.match on both index back-ends (SQLite and, marked postgres, PostgreSQL): the
matching rules of PS3.4 C.2.2.2 as SQL, without the network (instances ingested directly)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filereader import read_file_meta_info

from node.query import InvalidQuery, find, instances_for_retrieve


def ingest(node, paths: list[Path]) -> None:  # type: ignore[no-untyped-def]
    for path in paths:
        meta = read_file_meta_info(path)
        raw = path.read_bytes()
        offset = 132 + 12 + int(meta.FileMetaInformationGroupLength)
        outcome = node.ingestor.store(meta, raw[offset:], calling_ae="TEST")
        assert outcome.ok, outcome.reason


def uids(session, level: str, **criteria) -> list[str]:  # type: ignore[no-untyped-def]
    key = {
        "PATIENT": "PatientID",
        "STUDY": "StudyInstanceUID",
        "SERIES": "SeriesInstanceUID",
        "IMAGE": "SOPInstanceUID",
    }[level]
    return sorted(m.values[key] for m in find(session, level, criteria))


def test_matching_rules(db_url, tmp_path, make_settings, node_factory, dicom_factory) -> None:  # type: ignore[no-untyped-def]
    node = node_factory(make_settings(tmp_path, database={"url": db_url}))
    ct = dicom_factory.ct_series(3, size=32)
    mr = dicom_factory.mr_small(4, size=16)
    ingest(node, ct + mr)
    ct0, mr0 = dcmread(ct[0], stop_before_pixels=True), dcmread(mr[0], stop_before_pixels=True)
    with node.db.session() as s:
        assert uids(s, "STUDY") == sorted([ct0.StudyInstanceUID, mr0.StudyInstanceUID])
        # single value, wildcards (* and ?), and SQL metacharacters taken literally
        assert uids(s, "STUDY", PatientID=ct0.PatientID) == [ct0.StudyInstanceUID]
        assert uids(s, "STUDY", PatientName="TEST^PATIENT*") == uids(s, "STUDY")
        assert uids(s, "STUDY", PatientID="?" + ct0.PatientID[1:]) == [ct0.StudyInstanceUID]
        assert uids(s, "STUDY", PatientID="PAT%") == [] and uids(s, "STUDY", PatientID="PAT_____") == []
        # date ranges and prefix-inclusive time ranges (study time 093000)
        date = str(ct0.StudyDate)
        for rng in (f"{date}-", f"-{date}", f"{date}-{date}", date):
            assert len(uids(s, "STUDY", StudyDate=rng)) == 2, rng
        assert uids(s, "STUDY", StudyDate="19000101-19000102") == []
        assert len(uids(s, "STUDY", StudyTime="0930")) == 2
        assert len(uids(s, "STUDY", StudyTime="0900-0930")) == 2
        assert uids(s, "STUDY", StudyTime="1000-") == []
        with pytest.raises(InvalidQuery):
            uids(s, "STUDY", StudyDate="-")
        # UID lists and ModalitiesInStudy (any of)
        assert uids(s, "STUDY", StudyInstanceUID=f"{ct0.StudyInstanceUID}\\1.2.3") == [ct0.StudyInstanceUID]
        assert uids(s, "STUDY", ModalitiesInStudy="MR\\XA") == [mr0.StudyInstanceUID]
        assert len(uids(s, "STUDY", ModalitiesInStudy="CT\\MR")) == 2
        # series and image levels, counts, limit/offset
        series = list(find(s, "SERIES", {"StudyInstanceUID": mr0.StudyInstanceUID}))
        assert len(series) == 2 and {m.values["NumberOfSeriesRelatedInstances"] for m in series} == {2}
        assert len(uids(s, "IMAGE", StudyInstanceUID=ct0.StudyInstanceUID)) == 3
        assert len(uids(s, "IMAGE", SeriesNumber="1", Modality="MR")) == 2
        assert len(list(find(s, "IMAGE", {}, limit=2, offset=6))) == 1
        (study,) = find(s, "STUDY", {"StudyInstanceUID": ct0.StudyInstanceUID})
        assert study.values["NumberOfStudyRelatedInstances"] == 3
        assert study.values["ModalitiesInStudy"] == ["CT"]
        (pat,) = find(s, "PATIENT", {"PatientID": mr0.PatientID})
        assert pat.values["NumberOfPatientRelatedInstances"] == 4
        # retrieval needs the level's unique key
        assert len(instances_for_retrieve(s, "STUDY", {"StudyInstanceUID": mr0.StudyInstanceUID})) == 4
        with pytest.raises(InvalidQuery):
            instances_for_retrieve(s, "SERIES", {"StudyInstanceUID": mr0.StudyInstanceUID})
