"""Durable forwarding to a real PACS (issue 4, item 1): Orthanc (Debian's `Orthanc` binary),
started by these tests on free loopback ports with its own config, is the [[forward]]
destination of an in-process node that receives chest studies from DCMTK's storescu.

- send = "sr": the study's SR ends in Orthanc without any manual step; export audited (110106);
- Orthanc stopped: the SR waits in the outbox (pending, attempts >= 1, listed by
  `triage-node outbox --json`) and arrives once Orthanc is back;
- past max age: a dead letter, listed, requeued by `outbox --retry ID`, then delivered;
- send = "both": the study's images travel too; enqueueing again adds nothing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.ci import needs_tools
from tests.support.orthanc import (
    WAIT_S,
    export_events,
    forwarding_node,
    outbox_cli,
    outbox_json,
    outbox_rows,
    send_chest_study,
    sr_uid,
)
from tests.support.polling import wait_until

pytestmark = [pytest.mark.dcmtk, needs_tools("Orthanc", "storescu")]


# --------------------------------------------------------------------------- tests
def test_sr_reaches_orthanc_without_manual_step(
    tmp_path: Path, tiny_model_dir: Path, orthanc_factory, node_factory
) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()
    orthanc.start()
    cfg = forwarding_node(tmp_path / "node", tiny_model_dir, orthanc, send="sr")
    node = node_factory(cfg)
    study_uid, image_uids = send_chest_study(tmp_path / "src", cfg.port, "FWD-SR")
    sr = sr_uid(node, study_uid)

    wait_until(lambda: orthanc.has_instance(sr), WAIT_S, "the SR in Orthanc")
    tags = orthanc.instance_tags(sr)
    assert tags["Modality"] == "SR" and tags["StudyInstanceUID"] == study_uid
    assert not orthanc.has_instance(image_uids[0]), "send = sr forwarded the image too"
    rows = wait_until(lambda: [r for r in outbox_rows(node, study_uid) if r.state == "sent"], WAIT_S, "row sent")
    assert [(r.kind, r.sop_instance_uid, r.attempts) for r in outbox_rows(node, study_uid)] == [("sr", sr, 1)]
    assert rows[0].destination == f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"

    events = wait_until(lambda: export_events(cfg), 10, "an export audit event")
    event = events[-1]
    assert event["outcome"] == 0
    assert any(p["user_id"] == "ORTHANC" and p["role"] == "destination" for p in event["participants"])
    (obj,) = [o for o in event["objects"] if o["id"] == study_uid]
    assert obj["type"] == "study" and obj["details"]["instances"] == 1
    assert outbox_json(cfg) == []  # nothing pending, nothing dead


def test_sr_waits_in_outbox_while_orthanc_is_down(
    tmp_path: Path, tiny_model_dir: Path, orthanc_factory, node_factory
) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()  # configured, not started: its DICOM port refuses connections
    cfg = forwarding_node(
        tmp_path / "node", tiny_model_dir, orthanc, send="sr", initial_backoff_seconds=0.3, max_backoff_seconds=1.0
    )
    node = node_factory(cfg)
    study_uid, _ = send_chest_study(tmp_path / "src", cfg.port, "FWD-DOWN")
    sr = sr_uid(node, study_uid)

    wait_until(lambda: any(r.attempts >= 1 for r in outbox_rows(node, study_uid)), WAIT_S, "a failed attempt")
    listed = [i for i in outbox_json(cfg) if i["sop_instance_uid"] == sr]
    assert len(listed) == 1, listed
    item = listed[0]
    assert item["state"] == "pending" and item["attempts"] >= 1
    assert item["destination"] == f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"
    assert item["last_error"] and item["next_attempt_at"]
    assert set(item) >= {"id", "destination", "sop_instance_uid", "state", "attempts", "last_error", "next_attempt_at"}

    orthanc.start()
    wait_until(lambda: orthanc.has_instance(sr), WAIT_S, "the SR in Orthanc after it came back")
    wait_until(lambda: outbox_rows(node, study_uid)[0].state == "sent", WAIT_S, "the row marked sent")
    assert outbox_json(cfg) == []
    failed = [e for e in export_events(cfg) if e["outcome"] != 0]
    assert failed, "failed attempts are audited too"


def test_dead_letter_is_listed_and_retried(tmp_path: Path, tiny_model_dir: Path, orthanc_factory, node_factory) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()
    cfg = forwarding_node(
        tmp_path / "node",
        tiny_model_dir,
        orthanc,
        send="sr",
        initial_backoff_seconds=0.1,
        max_backoff_seconds=0.2,
        max_age_seconds=1.0,
    )
    node = node_factory(cfg)
    study_uid, _ = send_chest_study(tmp_path / "src", cfg.port, "FWD-DEAD")
    sr = sr_uid(node, study_uid)

    wait_until(lambda: outbox_rows(node, study_uid)[0].state == "dead", WAIT_S, "a dead letter")
    (item,) = [i for i in outbox_json(cfg) if i["sop_instance_uid"] == sr]
    assert item["state"] == "dead" and item["attempts"] >= 2 and item["last_error"]
    assert item["next_attempt_at"] is None
    text = outbox_cli(cfg).stdout
    assert "dead" in text and sr in text

    orthanc.start()
    # a full forwarder round now that Orthanc answers: one that would send a dead letter sends it here
    node.forwarder.run_once()
    assert not orthanc.has_instance(sr), "a dead letter was sent without being requeued"
    out = outbox_cli(cfg, "--retry", str(item["id"]))
    assert "requeued 1" in out.stdout
    wait_until(lambda: orthanc.has_instance(sr), WAIT_S, "the requeued SR in Orthanc")
    wait_until(lambda: outbox_rows(node, study_uid)[0].state == "sent", WAIT_S, "the row marked sent")
    assert outbox_json(cfg) == []
    from node import metrics

    dead = metrics.REGISTRY.get_sample_value(
        "triage_node_forward_dead_letters_total", {"destination": item["destination"]}
    )
    assert dead and dead >= 1


def test_send_both_forwards_the_images_too(tmp_path: Path, tiny_model_dir: Path, orthanc_factory, node_factory) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()
    orthanc.start()
    cfg = forwarding_node(tmp_path / "node", tiny_model_dir, orthanc, send="both")
    node = node_factory(cfg)
    study_uid, image_uids = send_chest_study(tmp_path / "src", cfg.port, "FWD-BOTH", images=2)
    sr = sr_uid(node, study_uid)

    for uid in [*image_uids, sr]:
        wait_until(lambda uid=uid: orthanc.has_instance(uid), WAIT_S, f"instance {uid} in Orthanc")
    rows = wait_until(
        lambda: (lambda rs: rs if rs and all(r.state == "sent" for r in rs) else None)(outbox_rows(node, study_uid)),
        WAIT_S,
        "every row sent",
    )
    assert sorted((r.kind, r.sop_instance_uid) for r in rows) == sorted(
        [("instance", u) for u in image_uids] + [("sr", sr)]
    )

    from node.forward.outbox import enqueue_study

    with node.db.write() as session:
        assert enqueue_study(session, node.settings.forward, study_uid=study_uid, sr_sop_instance_uid=sr) == 0
    event = next(e for e in reversed(export_events(cfg)) if any(o["id"] == study_uid for o in e["objects"]))
    assert event["outcome"] == 0
