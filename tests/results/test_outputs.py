"""Where results show up (issue 14): the summary card and its PDF in the study and in a PACS
(Orthanc), an HL7 ORU^R01 to a RIS over MLLP (a real listener process, with an outage), and a FHIR
transaction Bundle to a FHIR server (a real HTTP process that validates with fhir.resources).

A chest study goes into an in-process node (tiny random model) with storescu, as a modality sends it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicom_sr import read_triage_sr, run_dciodvfy
from dicom_sr.codes import STATE_CODES
from tests.support.ci import needs_tools
from tests.support.config import node_config
from tests.support.orthanc import WAIT_S, forwarding_node, outbox_rows, send_chest_study, sr_uid
from tests.support.polling import wait_until
from tests.support.ports import free_port

HERE = Path(__file__).resolve().parent
pytestmark = [pytest.mark.dcmtk, needs_tools("storescu", "dcmdump", "dciodvfy")]
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
PDF_STORAGE = "1.2.840.10008.5.1.4.1.1.104.1"


def _instances_of_class(node: Any, study_uid: str, sop_class: str) -> list[tuple[str, Path]]:
    from sqlalchemy import select

    from node.db.models import Instance, Series, Study

    with node.db.session() as session:
        rows = session.execute(
            select(Instance.sop_instance_uid, Instance.path)
            .join(Series, Instance.series_pk == Series.id)
            .join(Study, Series.study_pk == Study.id)
            .where(Study.study_instance_uid == study_uid, Instance.sop_class_uid == sop_class)
        ).all()
    return [(uid, Path(node.settings.storage.path) / rel) for uid, rel in rows]


class Peer:
    """A helper process (MLLP listener or FHIR endpoint) started and stopped by PID."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.args, self.log = args, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, *self.args], stdout=subprocess.PIPE, stderr=self.log.open("ab"))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "listening" once the socket is bound
        assert line.strip() == b"listening", self.log.read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for p in made:
        p.stop()


# --------------------------------------------------------------------------- summary card and PDF
@needs_tools("Orthanc")
def test_card_and_pdf_are_stored_forwarded_and_valid(
    tmp_path: Path, tiny_model_dir: Path, orthanc_factory, node_factory
) -> None:  # type: ignore[no-untyped-def]
    orthanc = orthanc_factory()
    orthanc.start()
    cfg = forwarding_node(tmp_path / "node", tiny_model_dir, orthanc, send=["sr", "sc", "pdf"])
    node = node_factory(cfg)
    study_uid, image_uids = send_chest_study(tmp_path / "src", cfg.port, "CARD-1")
    sr = sr_uid(node, study_uid)

    ((sc_uid, sc_path),) = _instances_of_class(node, study_uid, SC_STORAGE)
    ((pdf_uid, pdf_path),) = _instances_of_class(node, study_uid, PDF_STORAGE)
    for uid in (sr, sc_uid, pdf_uid):
        wait_until(lambda uid=uid: orthanc.has_instance(uid), WAIT_S, f"{uid} in Orthanc")
    assert not orthanc.has_instance(image_uids[0]), "the study's image was not asked for"
    kinds = sorted(r.kind for r in outbox_rows(node, study_uid))
    assert kinds == ["pdf", "sc", "sr"]

    # readable by dcmdump, SC valid for dciodvfy; same study and patient as the image
    for path, needle in ((sc_path, "SecondaryCaptureImageStorage"), (pdf_path, "EncapsulatedPDFStorage")):
        dump = subprocess.run(["dcmdump", str(path)], capture_output=True, text=True, timeout=60, check=False)
        assert dump.returncode == 0 and needle in dump.stdout, dump.stdout[-2000:] + dump.stderr
    for path in (sc_path, pdf_path):
        report = run_dciodvfy(path)
        assert report.ok, (path.name, report.errors)
    sc = pydicom.dcmread(sc_path)
    assert (sc.StudyInstanceUID, sc.PatientID, sc.Modality) == (study_uid, "CARD-1", "OT")
    assert (
        sc.SeriesInstanceUID
        != pydicom.dcmread(
            _instances_of_class(node, study_uid, "1.2.840.10008.5.1.4.1.1.88.34")[0][1]
        ).SeriesInstanceUID
    )
    pixels = sc.pixel_array
    assert pixels.shape[1:] == (1024, 3) and pixels.shape[0] >= 768
    from PIL import Image

    if os.environ.get("UPDATE_DOCS_SCREENSHOTS") == "1":  # the README's picture of the card
        Image.fromarray(pixels).save(Path(__file__).resolve().parents[2] / "docs" / "summary-card.png")
    assert (pixels[10:50, 10:200, 0] > 150).mean() > 0.5, "the red research-use banner is missing"
    assert pixels[80:400, 1024 - 344 : 1024 - 24].std() > 5, "the evaluated image thumbnail is blank"
    pdf = pydicom.dcmread(pdf_path)
    assert pdf.MIMETypeOfEncapsulatedDocument == "application/pdf"
    assert bytes(pdf.EncapsulatedDocument).startswith(b"%PDF")
    assert orthanc.instance_tags(pdf_uid)["MIMETypeOfEncapsulatedDocument"] == "application/pdf"


# --------------------------------------------------------------------------- HL7 over MLLP
def test_hl7_oru_reaches_the_ris_once_after_an_outage(
    tmp_path: Path, tiny_model_dir: Path, node_factory, peers: list[Peer]
) -> None:  # type: ignore[no-untyped-def]
    from hl7apy.parser import parse_message

    port = free_port()
    received = tmp_path / "ris.jsonl"
    listener = Peer([str(HERE / "peers" / "mllp_listener.py"), str(port), str(received)], tmp_path / "ris.log")
    peers.append(listener)
    cfg = node_config(
        tmp_path / "node",
        tiny_model_dir,
        forwarding={
            "initial_backoff_seconds": 0.3,
            "max_backoff_seconds": 0.6,
            "max_age_seconds": 600,
            "poll_seconds": 0.2,
            "timeout_seconds": 5,
        },
        hl7=[{"host": "127.0.0.1", "port": port, "receiving_application": "RIS", "timeout_seconds": 5}],
    )
    node = node_factory(cfg)
    study_uid, _ = send_chest_study(tmp_path / "src", cfg.port, "HL7-1")
    sr = sr_uid(node, study_uid)

    # the RIS is down: the message waits in the outbox with the reason
    row = wait_until(
        lambda: next((r for r in outbox_rows(node, study_uid) if r.kind == "hl7-oru" and r.attempts >= 2), None),
        WAIT_S,
        "failed HL7 attempts while the RIS is down",
    )
    assert row.state == "pending" and "Connection refused" in row.last_error, row.last_error
    listener.start()
    wait_until(lambda: all(r.state == "sent" for r in outbox_rows(node, study_uid)), WAIT_S, "the ORU ACKed")
    lines = received.read_text().splitlines()
    assert len(lines) == 1, f"delivered {len(lines)} times"
    message = json.loads(lines[0])
    assert message["control_id"] == f"TN{row.id}"

    er7 = message["er7"]
    parsed = parse_message(er7.split("\rNTE")[0], find_groups=False)
    assert parsed.msh.msh_9.value == "ORU^R01^ORU_R01"
    assert parsed.pid.pid_3.value.split("^")[0] == "HL7-1"
    obx = [seg for seg in er7.split("\r") if seg.startswith("OBX|")]
    fields = [seg.split("|") for seg in obx]
    result = read_triage_sr(
        pydicom.dcmread(_instances_of_class(node, study_uid, "1.2.840.10008.5.1.4.1.1.88.34")[0][1])
    )
    assert result.findings, "a chest study gets findings"
    for n, finding in enumerate(result.findings, start=1):
        state_obx = next(f for f in fields if f[2] == "CWE" and f[4] == str(n))
        score_obx = next(f for f in fields if f[2] == "NM" and f[4] == str(n))
        assert state_obx[3].split("^")[0] == finding.finding.value
        state = STATE_CODES[finding.state]
        assert state_obx[5] == f"{state.value}^{state.meaning}^{state.scheme_designator}"
        assert abs(float(score_obx[5]) - finding.score) < 1e-4
        assert score_obx[7] == f">={finding.threshold:.4f}" and state_obx[11] == "P"
    values = {f[3].split("^")[0]: f[5] for f in fields if f[2] == "ST"}
    assert values["PRIORITY"] == result.priority and values["SRUID"] == sr
    obr = next(seg.split("|") for seg in er7.split("\r") if seg.startswith("OBR|"))
    assert obr[27] == ("^^^^^S" if result.priority == "HIGH" else ""), obr  # a raise, or no priority stated
    assert f"ZDS|{study_uid}^^Application^DICOM" in er7
    assert "Research use only" in er7


def test_a_refused_hl7_message_becomes_a_dead_letter(
    tmp_path: Path, tiny_model_dir: Path, node_factory, peers: list[Peer]
) -> None:  # type: ignore[no-untyped-def]
    """A RIS answering AE is not a delivery: retried, then a dead letter naming the ACK code."""
    port = free_port()
    received = tmp_path / "ris.jsonl"
    listener = Peer([str(HERE / "peers" / "mllp_listener.py"), str(port), str(received), "AE"], tmp_path / "ris.log")
    peers.append(listener)
    listener.start()
    cfg = node_config(
        tmp_path / "node",
        tiny_model_dir,
        forwarding={
            "initial_backoff_seconds": 0.2,
            "max_backoff_seconds": 0.4,
            "max_age_seconds": 3,
            "poll_seconds": 0.2,
            "timeout_seconds": 5,
        },
        hl7=[{"host": "127.0.0.1", "port": port}],
    )
    node = node_factory(cfg)
    study_uid, _ = send_chest_study(tmp_path / "src", cfg.port, "HL7-AE")
    sr_uid(node, study_uid)
    row = wait_until(
        lambda: next((r for r in outbox_rows(node, study_uid) if r.state == "dead"), None),
        WAIT_S,
        "the refused ORU as a dead letter",
    )
    assert row.kind == "hl7-oru" and row.attempts >= 1
    assert "answered AE" in row.last_error and "refused for the test" not in row.last_error
    assert len(received.read_text().splitlines()) == row.attempts  # each attempt reached the RIS


def test_hl7_priority_update_only_raises(tmp_path: Path) -> None:
    """The ORM^O01 order change says stat for HIGH; an SR that did not raise the priority queues none."""
    from hl7apy.parser import parse_message

    from dicom_sr import AlgorithmInfo, Code, FindingResult, ImageRef, TriageResult
    from node.config import Hl7Destination
    from node.forward.hl7 import StudyFacts, build_priority_update

    image = ImageRef("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4", "1.2.3")
    alg = AlgorithmInfo("n", "1", "m", "r", "0" * 64, "cxr", "sha256:1", "tn-pre-1", "d", is_test_model=True)
    high = TriageResult(
        True,
        "HIGH",
        None,
        None,
        (FindingResult(Code("36118008", "SCT", "Pneumothorax"), "present", 0.9, 0.5, True, (image,)),),
        (image,),
        alg,
    )
    facts = StudyFacts("P1", "", "Doe^Jo", "", "", "ACC9", "1.2.3", "1.2.3.9")
    er7 = build_priority_update(high, facts, Hl7Destination(host="127.0.0.1", port=2575), "TN7")
    msg = parse_message(er7.split("\rZDS")[0], find_groups=False)
    assert msg.msh.msh_9.value == "ORM^O01^ORM_O01"
    assert msg.orc.orc_1.value == "XO" and msg.orc.orc_7.value.endswith("^S") and msg.orc.orc_3.value == "ACC9"

    from sqlalchemy import select

    from node.db.engine import Database
    from node.db.models import OutboxItem
    from node.forward.outbox import enqueue_study

    db = Database(f"sqlite:///{tmp_path / 'index.db'}")
    try:
        dests = (Hl7Destination(host="127.0.0.1", port=2575, priority_update=True),)
        for n, raises in enumerate((True, False)):  # this SR raised the priority / it did not (or kept a raise)
            with db.write() as session:
                enqueue_study(
                    session,
                    (),
                    study_uid=f"1.2.{n}",
                    sr_sop_instance_uid=f"1.2.{n}.9",
                    sr_path="x.dcm",
                    hl7=dests,
                    raises_priority=raises,
                )
        with db.session() as session:
            kinds = {(r.study_instance_uid, r.kind) for r in session.execute(select(OutboxItem)).scalars()}
        assert kinds == {("1.2.0", "hl7-oru"), ("1.2.0", "hl7-priority"), ("1.2.1", "hl7-oru")}
    finally:
        db.dispose()


# --------------------------------------------------------------------------- FHIR
def test_fhir_diagnostic_report_reaches_the_server(
    tmp_path: Path, tiny_model_dir: Path, node_factory, peers: list[Peer]
) -> None:  # type: ignore[no-untyped-def]
    from fhir.resources.bundle import Bundle

    port = free_port()
    received = tmp_path / "fhir.jsonl"
    server = Peer([str(HERE / "peers" / "fhir_endpoint.py"), str(port), "s3cret", str(received)], tmp_path / "fhir.log")
    peers.append(server)
    server.start()
    cfg = node_config(
        tmp_path / "node",
        tiny_model_dir,
        forwarding={
            "initial_backoff_seconds": 0.3,
            "max_backoff_seconds": 0.6,
            "max_age_seconds": 600,
            "poll_seconds": 0.2,
            "timeout_seconds": 5,
        },
        fhir=[
            {"url": f"http://127.0.0.1:{port}/fhir", "token": "s3cret"},
            {"url": f"http://127.0.0.1:{port}/wrong-token", "token": "nope"},
            {"url": f"http://127.0.0.1:{port}/unset-token", "token_env": "TRIAGE_TEST_UNSET_FHIR_TOKEN"},
        ],
    )
    node = node_factory(cfg)
    study_uid, _ = send_chest_study(tmp_path / "src", cfg.port, "FHIR-1")
    sr = sr_uid(node, study_uid)

    def by_url() -> dict[str, Any]:
        return {r.destination: r for r in outbox_rows(node, study_uid)}

    wait_until(
        lambda: (
            by_url().get(f"fhir:http://127.0.0.1:{port}/fhir", None) is not None
            and by_url()[f"fhir:http://127.0.0.1:{port}/fhir"].state == "sent"
        ),
        WAIT_S,
        "the Bundle accepted",
    )
    refused = wait_until(
        lambda: (lambda r: r if r.attempts >= 1 else None)(by_url()[f"fhir:http://127.0.0.1:{port}/wrong-token"]),
        WAIT_S,
        "the wrong token refused",
    )
    assert refused.state == "pending" and "HTTP 401" in refused.last_error
    unset = wait_until(
        lambda: (lambda r: r if r.attempts >= 1 else None)(by_url()[f"fhir:http://127.0.0.1:{port}/unset-token"]),
        WAIT_S,
        "the Bundle held back for want of its token",
    )
    assert unset.state == "pending" and "TRIAGE_TEST_UNSET_FHIR_TOKEN" in unset.last_error, unset.last_error

    (line,) = received.read_text().splitlines()
    bundle = Bundle.model_validate_json(line)
    resources = [e.resource for e in bundle.entry]
    (report,) = [r for r in resources if r.__resource_type__ == "DiagnosticReport"]
    observations = [r for r in resources if r.__resource_type__ == "Observation"]
    (device,) = [r for r in resources if r.__resource_type__ == "Device"]
    result = read_triage_sr(
        pydicom.dcmread(_instances_of_class(node, study_uid, "1.2.840.10008.5.1.4.1.1.88.34")[0][1])
    )
    assert report.status == "preliminary" and report.identifier[0].value == f"urn:oid:{sr}"
    assert len(observations) == len(result.findings) == len(report.result)
    for obs, finding in zip(observations, result.findings):
        assert obs.status == "preliminary"
        assert obs.code.coding[0].code == finding.finding.value
        state = STATE_CODES[finding.state]
        assert (obs.valueCodeableConcept.coding[0].system, obs.valueCodeableConcept.coding[0].code) == (
            "http://snomed.info/sct",
            state.value,
        )
        assert abs(float(obs.component[0].valueQuantity.value) - round(finding.score, 4)) < 1e-9
        assert result.algorithm.model_id in obs.method.text and result.algorithm.profile_version in obs.method.text
        assert obs.device.reference == f"Device/{device.id}"
    assert report.subject.identifier.value == "FHIR-1"
    assert "TEST MODEL" in report.conclusion  # the tiny random model's scores are noise, and it says so


def test_a_no_assist_result_offers_no_assessment_in_hl7_or_fhir() -> None:
    """An urgent score in its band gives no assist: the SR keeps every computed score (to audit
    the decision), but the ORU^R01 carries no per-finding OBX and the FHIR Bundle no finding
    Observation, which a RIS would show as an assessment; both say why there is none."""
    import pydicom
    from hl7apy.parser import parse_message

    from dicom_sr import AlgorithmInfo, Code, FindingResult, ImageRef, TriageResult
    from node.config import Hl7Destination
    from node.forward.fhir import build_bundle
    from node.forward.hl7 import StudyFacts, build_oru

    image = ImageRef("1.2.840.10008.5.1.4.1.1.1.1", "1.2.3.4", "1.2.3")
    alg = AlgorithmInfo("n", "1", "m", "r", "0" * 64, "cxr", "sha256:1", "tn-pre-1", "d", is_test_model=True)
    in_band = FindingResult(
        Code("36118008", "SCT", "Pneumothorax"), "indeterminate", 0.55, 0.6, True, (image,), band_low=0.4, band_high=0.6
    )
    reason = Code("URGINDET", "99TRIAGE", "Urgent finding indeterminate")
    result = TriageResult(
        False, "MEDIUM", reason, "No AI assessment: an urgent finding is indeterminate.", (in_band,), (image,), alg
    )

    facts = StudyFacts("P1", "", "Doe^Jo", "", "", "ACC9", "1.2.3", "1.2.3.9")
    er7 = build_oru(result, facts, Hl7Destination(host="127.0.0.1", port=2575), "TN8")
    msg = parse_message(er7.split("\rNTE")[0], find_groups=False)
    observed = [seg.obx_3.value.split("^")[0] for seg in msg.children if seg.name == "OBX"]
    assert observed == ["PRIORITY", "NOASSIST", "SRUID"], observed
    assert "36118008" not in er7 and "0.5500" not in er7
    assert "an urgent finding is indeterminate" in er7
    # MEDIUM is "not raised": no routine priority that could read as lowering a STAT order
    assert msg.obr.obr_27.value == "" and "TEST MODEL" in er7

    sr = pydicom.Dataset()
    sr.PatientID, sr.AccessionNumber, sr.StudyInstanceUID, sr.SOPInstanceUID = "P1", "ACC9", "1.2.3", "1.2.3.9"
    bundle = build_bundle(result, sr).model_dump(mode="json", exclude_none=True)
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert kinds == ["Device", "DiagnosticReport"], kinds
    report = bundle["entry"][-1]["resource"]
    assert "result" not in report
    assert report["conclusion"].startswith("No AI assessment: an urgent finding is indeterminate")
    assert "Priority not raised by the AI" in report["conclusion"] and "MEDIUM" not in report["conclusion"]
    assert "TEST MODEL" in report["conclusion"]  # a random model's result never reads as a clinical one
