"""HL7 v2.5 to a RIS over MLLP: an ORU^R01 per SR and, optionally, an ORM^O01 priority update.

Why: the reading worklist usually lives in the RIS, which hears about results and priorities by
HL7 (as dcm4chee sends SR content, IHE RAD-128). The messages are built with hl7apy from the
stored SR read back with dicom_sr (so what the RIS hears is exactly what the SR says), sent over
MLLP (0x0B message 0x1C 0x0D), and count as delivered only on an ACK with MSA-1 AA or CA. The
message control ID is the outbox row's id, so a resend after a lost ACK carries the same ID and a
receiver can drop the duplicate.

ORU^R01 content: PID from the study, ORC-1 RE, OBR-3 = accession number (filler order number in
IHE scheduled workflow), OBR-25 P (preliminary); per finding an OBX CWE (its state, the SR's SNOMED
CT code: Present / Not detected / Indeterminate, never "normal") and an OBX NM
(its score, OBX-7 the threshold) sharing OBX-4; an OBX with the AI's priority (HIGH or MEDIUM; OBR-27
priority S only when it is HIGH: MEDIUM means "not raised", never a lower order priority); with no
assist, an OBX with the reason; an OBX with the SR's SOP Instance UID; ZDS with the Study
Instance UID (IHE); an NTE "research use only".
ORM^O01 (``priority_update``, only for HIGH: the model never lowers a priority): ORC-1 XO with
ORC-7 and OBR-27 priority S (stat).
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime

import pydicom
from hl7apy.core import Message
from hl7apy.parser import parse_message

from dicom_sr import PRIORITY_HIGH, PRIORITY_MEDIUM, TriageResult, read_triage_sr
from dicom_sr.codes import STATE_CODES
from node.config import Hl7Destination

VERSION = "2.5"
START, END = b"\x0b", b"\x1c\x0d"
#: the finding states as the SR codes them (SNOMED CT), so that every output says the same
STATE_CODE = {
    state: (concept.value, concept.scheme_designator, concept.meaning) for state, concept in STATE_CODES.items()
}
HL7_PRIORITY = {PRIORITY_HIGH: "S", PRIORITY_MEDIUM: "R"}
LOCAL = "99TRIAGE"


class Hl7Error(RuntimeError):
    """The RIS did not accept the message (no ACK, or an ACK that is not AA/CA)."""


@dataclass(frozen=True)
class StudyFacts:
    """What the messages say about the patient and the order, from the SR's header."""

    patient_id: str
    issuer: str
    patient_name: str
    birth_date: str
    sex: str
    accession: str
    study_uid: str
    sr_uid: str


def _clean(text: str) -> str:
    """Free text safe inside an HL7 field (the delimiters | ^ ~ \\ & and line breaks become spaces)."""
    return "".join(" " if c in "|^~\\&\r\n" else c for c in str(text)).strip()


def study_facts(sr: pydicom.Dataset) -> StudyFacts:
    name = str(sr.get("PatientName", "") or "")
    return StudyFacts(
        patient_id=_clean(sr.get("PatientID", "") or ""),
        issuer=_clean(sr.get("IssuerOfPatientID", "") or ""),
        patient_name="^".join(_clean(p) for p in name.split("^")[:5]),
        birth_date=str(sr.get("PatientBirthDate", "") or ""),
        sex=str(sr.get("PatientSex", "") or ""),
        accession=_clean(sr.get("AccessionNumber", "") or ""),
        study_uid=str(sr.StudyInstanceUID),
        sr_uid=str(sr.SOPInstanceUID),
    )


def _msh(msg: Message, dest: Hl7Destination, message_type: str, control_id: str) -> None:
    msg.msh.msh_3 = _clean(dest.sending_application)
    msg.msh.msh_4 = _clean(dest.sending_facility)
    msg.msh.msh_5 = _clean(dest.receiving_application)
    msg.msh.msh_6 = _clean(dest.receiving_facility)
    msg.msh.msh_7 = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    msg.msh.msh_9 = message_type
    msg.msh.msh_10 = control_id
    msg.msh.msh_11 = "P"


def _pid(segment, facts: StudyFacts) -> None:
    segment.pid_3 = f"{facts.patient_id}^^^{facts.issuer}" if facts.issuer else facts.patient_id
    segment.pid_5 = facts.patient_name
    if facts.birth_date:
        segment.pid_7 = facts.birth_date
    if facts.sex:
        segment.pid_8 = facts.sex


def build_oru(result: TriageResult, facts: StudyFacts, dest: Hl7Destination, control_id: str) -> str:
    msg = Message("ORU_R01", version=VERSION)
    _msh(msg, dest, "ORU^R01^ORU_R01", control_id)
    patient_result = msg.add_group("ORU_R01_PATIENT_RESULT")
    _pid(patient_result.add_group("ORU_R01_PATIENT").add_segment("PID"), facts)
    order = patient_result.add_group("ORU_R01_ORDER_OBSERVATION")
    order.add_segment("ORC").orc_1 = "RE"
    obr = order.add_segment("OBR")
    obr.obr_1 = "1"
    obr.obr_3 = facts.accession
    obr.obr_4 = f"AITRIAGE^AI triage {_clean(result.algorithm.profile_name)}^{LOCAL}"
    obr.obr_25 = "P"
    if result.priority == PRIORITY_HIGH:
        # only a raise is stated: a routine priority here could read as lowering a STAT order
        obr.obr_27 = f"^^^^^{HL7_PRIORITY[result.priority]}"
    set_id = 0

    def obx(value_type: str, code: str, value: str, sub_id: str = "", ref_range: str = "") -> None:
        nonlocal set_id
        set_id += 1
        seg = order.add_group("ORU_R01_OBSERVATION").add_segment("OBX")
        seg.obx_1, seg.obx_2, seg.obx_3 = str(set_id), value_type, code
        if sub_id:
            seg.obx_4 = sub_id
        seg.obx_5 = value
        if ref_range:
            seg.obx_7 = ref_range
        seg.obx_11 = "P"

    # A no-assist result offers no assessment: no per-finding OBX a RIS could show as one (the
    # computed scores stay in the SR, named below by its UID, for the audit of the decision).
    for n, f in enumerate(result.findings if result.assist else (), start=1):
        code = f"{_clean(f.finding.value)}^{_clean(f.finding.meaning)}^{_clean(f.finding.scheme)}"
        value, scheme, meaning = STATE_CODE[f.state]
        obx("CWE", code, f"{value}^{meaning}^{scheme}", str(n))
        obx("NM", code, f"{f.score:.4f}", str(n), f">={f.threshold:.4f}")
    obx("ST", f"PRIORITY^AI triage priority (raises only)^{LOCAL}", result.priority)
    if not result.assist:
        reason = result.no_assist_text or (result.no_assist_reason.meaning if result.no_assist_reason else "")
        obx("ST", f"NOASSIST^No AI assessment^{LOCAL}", _clean(reason))
    obx("ST", f"SRUID^DICOM SR SOP Instance UID^{LOCAL}", facts.sr_uid)
    alg = result.algorithm
    note = (
        f"Research use only, not for diagnostic use. Model {alg.model_id} {alg.model_revision}, "
        f"profile {alg.profile_name} {alg.profile_version}."
    )
    if alg.is_test_model:
        note += " TEST MODEL: the scores are noise."
    text = msg.to_er7() + f"\rNTE|1||{_clean(note)}\rZDS|{facts.study_uid}^^Application^DICOM"
    return text


def build_priority_update(result: TriageResult, facts: StudyFacts, dest: Hl7Destination, control_id: str) -> str:
    msg = Message("ORM_O01", version=VERSION)
    _msh(msg, dest, "ORM^O01^ORM_O01", control_id)
    _pid(msg.add_group("ORM_O01_PATIENT").add_segment("PID"), facts)
    order = msg.add_group("ORM_O01_ORDER")
    orc = order.add_segment("ORC")
    orc.orc_1 = "XO"
    orc.orc_3 = facts.accession
    orc.orc_7 = f"^^^^^{HL7_PRIORITY[result.priority]}"
    detail = order.add_group("ORM_O01_ORDER_DETAIL")
    obr = detail.add_segment("OBR")
    obr.obr_1 = "1"
    obr.obr_3 = facts.accession
    obr.obr_4 = f"AITRIAGE^AI triage {_clean(result.algorithm.profile_name)}^{LOCAL}"
    obr.obr_27 = f"^^^^^{HL7_PRIORITY[result.priority]}"
    return msg.to_er7() + f"\rZDS|{facts.study_uid}^^Application^DICOM"


def message_for(kind: str, sr_path: str, dest: Hl7Destination, control_id: str) -> str:
    """The ER7 text of the outbox row's message, built from the stored SR."""
    sr = pydicom.dcmread(sr_path)
    result = read_triage_sr(sr)
    facts = study_facts(sr)
    if kind == "hl7-priority":
        return build_priority_update(result, facts, dest, control_id)
    return build_oru(result, facts, dest, control_id)


def send_mllp(dest: Hl7Destination, message: str, *, control_id: str) -> None:
    """Send one message, wait for its ACK; raise Hl7Error unless it is AA or CA for our control ID."""
    frame = START + message.encode("utf-8") + END
    with socket.create_connection((dest.host, dest.port), timeout=dest.timeout_seconds) as sock:
        sock.settimeout(dest.timeout_seconds)
        sock.sendall(frame)
        buf = b""
        while END not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise Hl7Error("the connection closed before an ACK arrived")
            buf += chunk
            if len(buf) > 1_000_000:
                raise Hl7Error("no MLLP end block within 1 MB of answer")
    text = buf[buf.find(START) + 1 : buf.find(END)].decode("utf-8", errors="replace")
    check_ack(text, control_id)


def check_ack(text: str, control_id: str) -> None:
    try:
        ack = parse_message(text.replace("\n", "\r").strip("\r"), find_groups=False)
        msa = ack.msa
        code, acked = msa.msa_1.value, msa.msa_2.value
    except Exception as exc:
        raise Hl7Error(f"the answer is not an HL7 ACK: {type(exc).__name__}: {str(exc)[:200]}") from None
    if acked != control_id:
        raise Hl7Error(f"the ACK is for message {acked!r}, not {control_id!r}")
    if code not in ("AA", "CA"):
        # MSA-3's free text is left out: it may quote the message (patient data) and this error
        # reaches the operational log.
        raise Hl7Error(f"the RIS answered {code} (not accepted) for message {control_id}")


__all__ = ["Hl7Error", "build_oru", "build_priority_update", "check_ack", "message_for", "send_mllp", "study_facts"]
