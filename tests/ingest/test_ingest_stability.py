"""Stability: a study quiet for quiet_seconds becomes a queued job; late instances re-open it;
the clock lives in the database, so a restart during the quiet period still yields the job."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy import update

from node.db.models import TriageJob
from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE
from tests.support.index import audit_entries, index_snapshot
from tests.support.polling import wait_until


def _study(node) -> dict:  # type: ignore[no-untyped-def]
    studies = index_snapshot(node.db)["studies"]
    assert len(studies) == 1
    return next(iter(studies.values()))


def _jobs(node) -> list[dict]:  # type: ignore[no-untyped-def]
    return sorted(index_snapshot(node.db)["jobs"], key=lambda j: j["id"])


def _send(node, paths) -> None:  # type: ignore[no-untyped-def]
    results = send(paths, Destination(NODE_AE, "127.0.0.1", node.listener.port), calling_ae="PYSCU")
    assert [r.status for r in results] == [0] * len(paths)


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def test_job_queued_after_quiet_period(db_url, tmp_path, make_settings, node_factory, dicom_factory) -> None:
    quiet = 2.0
    node = node_factory(
        make_settings(tmp_path, database={"url": db_url}, stability={"quiet_seconds": quiet, "tick_seconds": 0.2})
    )
    series = dicom_factory.ct_series(5, size=64)
    _send(node, series)
    sent_at = time.monotonic()
    study = _study(node)
    if time.monotonic() - sent_at < quiet * 0.75:  # still inside the quiet period (a loaded machine may be slower)
        assert study["stability_state"] == "receiving"
        assert _jobs(node) == []

    jobs = wait_until(lambda: _jobs(node), 20, what="a queued job")
    assert time.monotonic() - sent_at >= quiet * 0.5  # not right away (the exact bound is checked below)
    assert len(jobs) == 1
    job = jobs[0]
    assert job["state"] == "queued"
    assert job["study_instance_uid"] == study["study_instance_uid"]
    assert job["instance_count"] == 5
    assert (_aware(job["queued_at"]) - _aware(study["last_arrival_at"])).total_seconds() >= quiet
    assert _study(node)["stability_state"] == "stable"
    # the audit line follows the job's commit (the timer writes it after the transaction)
    queued_lines = wait_until(
        lambda: [e for e in audit_entries(node.settings.audit.path) if e["outcome_desc"] == "triage job queued"],
        10,
        what="the 'triage job queued' audit line",
    )
    assert [o["id"] for e in queued_lines for o in e["objects"]] == [study["study_instance_uid"]]
    # and no further job while nothing arrives: one more stability pass (what the timer runs,
    # now rather than after a guessed sleep) queues nothing
    node.tick()
    assert len(_jobs(node)) == 1


def test_late_instance_reopens_the_study_and_leads_to_a_second_job(
    db_url, tmp_path, make_settings, node_factory, dicom_factory
) -> None:
    node = node_factory(
        make_settings(tmp_path, database={"url": db_url}, stability={"quiet_seconds": 1.0, "tick_seconds": 0.2})
    )
    first = dicom_factory.ct_series(3, size=64)
    import pydicom

    ref = pydicom.dcmread(first[0], stop_before_pixels=True)
    _send(node, first)
    jobs = wait_until(lambda: _jobs(node), 20, what="the first job")
    assert [j["instance_count"] for j in jobs] == [3]

    # The worker has finished the first job (as the triage worker would mark it).
    with node.db.session() as session, session.begin():
        session.execute(update(TriageJob).where(TriageJob.id == jobs[0]["id"]).values(state="done"))

    late = dicom_factory.ct_series(
        1,
        size=64,
        out_dir="late",
        patient=dicom_factory.patient_of(first[0]),
        study_uid=ref.StudyInstanceUID,
        series_uid=ref.SeriesInstanceUID,
        start=4,
    )
    _send(node, late)
    study = _study(node)
    assert study["instance_count"] == 4
    assert study["stability_state"] == "receiving" or len(_jobs(node)) == 2  # re-opened (unless already re-queued)
    jobs = wait_until(lambda: len(_jobs(node)) == 2 and _jobs(node), 20, what="a second job")
    assert [j["state"] for j in jobs] == ["done", "queued"]
    assert jobs[1]["instance_count"] == 4
    assert jobs[1]["study_instance_uid"] == ref.StudyInstanceUID
    assert _study(node)["stability_state"] == "stable"


def test_late_instance_while_job_still_queued_updates_that_job(
    db_url, tmp_path, make_settings, node_factory, dicom_factory
) -> None:
    """A job nobody has started yet already covers late instances: no second queued job."""
    node = node_factory(
        make_settings(tmp_path, database={"url": db_url}, stability={"quiet_seconds": 1.0, "tick_seconds": 0.2})
    )
    first = dicom_factory.ct_series(2, size=64)
    import pydicom

    ref = pydicom.dcmread(first[0], stop_before_pixels=True)
    _send(node, first)
    wait_until(lambda: _jobs(node), 20, what="the first job")
    _send(
        node,
        dicom_factory.ct_series(
            2,
            size=64,
            out_dir="late",
            study_uid=ref.StudyInstanceUID,
            patient=dicom_factory.patient_of(first[0]),
            series_uid=ref.SeriesInstanceUID,
            start=3,
        ),
    )
    wait_until(
        lambda: _study(node)["stability_state"] == "stable" and _study(node)["instance_count"] == 4,
        20,
        what="the study to be stable again",
    )
    jobs = wait_until(lambda: [j for j in _jobs(node) if j["instance_count"] == 4], 10, what="job updated")
    assert len(_jobs(node)) == 1 and jobs[0]["state"] == "queued"


def test_restart_during_quiet_period_queues_the_job_at_start(
    db_url, tmp_path, make_settings, node_factory, dicom_factory
) -> None:
    quiet = 2.0
    settings = make_settings(
        tmp_path, database={"url": db_url}, stability={"quiet_seconds": quiet, "tick_seconds": 0.2}
    )
    node = node_factory(settings)
    _send(node, dicom_factory.ct_series(4, size=64))
    node.stop()  # inside the quiet period
    stopped_at = time.monotonic()
    study = _study(node)
    assert study["stability_state"] == "receiving"
    assert _jobs(node) == []

    # wait (while down) until the quiet period has surely ended
    wait_until(lambda: time.monotonic() - stopped_at > quiet + 0.5, quiet + 5, "the quiet period to end", interval=0.1)
    again = node_factory(settings)
    jobs = _jobs(again)  # queued by start() itself, before any timer tick
    assert len(jobs) == 1, "the job was not queued at start-up"
    assert jobs[0]["state"] == "queued" and jobs[0]["instance_count"] == 4
    assert jobs[0]["study_instance_uid"] == study["study_instance_uid"]
    assert _study(again)["stability_state"] == "stable"
