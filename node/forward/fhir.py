"""FHIR (R5, the default of ``fhir.resources``): a transaction Bundle with a DiagnosticReport, one
Observation per finding and the Device (this node), PUT under ids derived from the SR.

Why PUT with derived ids: the outbox resends after a timeout; a resend then updates the same
resources instead of creating duplicates. The Bundle is built with the ``fhir.resources`` models
(validated on construction) from the stored SR read back with dicom_sr, POSTed to the configured
base URL with a bearer token; any 2xx answer counts as delivered.

Observation: status preliminary, code = the finding's code, valueCodeableConcept = the model's
state (never "normal": "not detected by the model"), a component with the score and a
referenceRange whose low is the threshold (value: the SR's SNOMED CT state code), method = model id, revision, weights hash, profile and
preprocessing versions, device = this node, derivedFrom = the SR (as an ImagingStudy identifier).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
import uuid
from datetime import UTC, datetime
from typing import Any

import pydicom
from fhir.resources.bundle import Bundle

from dicom_sr import PRIORITY_HIGH, PRIORITY_NOT_RAISED_TEXT, TriageResult, read_triage_sr
from node import __version__
from node.config import FhirDestination
from node.forward.hl7 import STATE_CODE, study_facts

LOCAL_SYSTEM = "urn:triage-node:codes"
SCHEME_SYSTEM = {
    "SCT": "http://snomed.info/sct",
    "LN": "http://loinc.org",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "RADLEX": "http://radlex.org",
}
NAMESPACE = uuid.UUID("6f1e7f6c-5c1f-4f0b-9a53-8c8f0d7f2b11")


class FhirError(RuntimeError):
    """The FHIR server did not accept the Bundle."""


def _id(*parts: str) -> str:
    return str(uuid.uuid5(NAMESPACE, "|".join(parts)))


def _coding(value: str, scheme: str, meaning: str) -> dict[str, Any]:
    return {"system": SCHEME_SYSTEM.get(scheme, f"urn:dicom:coding-scheme:{scheme}"), "code": value, "display": meaning}


def build_bundle(result: TriageResult, sr: pydicom.Dataset) -> Bundle:
    facts = study_facts(sr)
    alg = result.algorithm
    now = datetime.now(UTC).isoformat(timespec="seconds")
    subject = {
        "identifier": {
            "value": facts.patient_id or "unknown",
            **({"system": f"urn:issuer:{facts.issuer}"} if facts.issuer else {}),
        }
    }
    study = {"identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{facts.study_uid}"}, "type": "ImagingStudy"}
    method = {
        "text": f"{alg.name} {alg.version}; model {alg.model_id} revision {alg.model_revision}, weights sha256 "
        f"{alg.weights_sha256}; profile {alg.profile_name} {alg.profile_version}; preprocessing "
        f"{alg.preprocessing_version}" + ("; TEST MODEL, scores are noise" if alg.is_test_model else "")
    }
    device_id = _id("device", alg.model_id, alg.weights_sha256, alg.profile_version)
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id,
        "displayName": f"triage-node {__version__}",
        "manufacturer": "triage-node",
        "modelNumber": alg.model_id,
        "version": [
            {"value": alg.model_revision, "type": {"text": "model revision"}},
            {"value": alg.profile_version, "type": {"text": f"profile {alg.profile_name}"}},
        ],
        "note": [{"text": "Research use only. Not a medical device."}],
    }
    observations: list[dict[str, Any]] = []
    for f in result.findings if result.assist else ():  # no-assist: no finding Observation (scores stay in the SR)
        value, scheme, meaning = STATE_CODE[f.state]
        text = "Not detected by the model" if meaning == "Not detected" else meaning
        observations.append(
            {
                "resourceType": "Observation",
                "id": _id("obs", facts.sr_uid, f.finding.scheme, f.finding.value),
                "status": "preliminary",
                "category": [
                    {
                        "coding": [
                            {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "imaging"}
                        ]
                    }
                ],
                "code": {
                    "coding": [_coding(f.finding.value, f.finding.scheme, f.finding.meaning)],
                    "text": f.finding.meaning,
                },
                "subject": subject,
                "effectiveDateTime": now,
                "issued": now,
                "valueCodeableConcept": {"coding": [_coding(value, scheme, meaning)], "text": text},
                "component": [
                    {
                        "code": {"coding": [{"system": LOCAL_SYSTEM, "code": "score", "display": "Model score"}]},
                        "valueQuantity": {"value": round(f.score, 4), "unit": "probability"},
                        "referenceRange": [
                            {
                                "low": {"value": round(f.threshold, 4), "unit": "probability"},
                                "text": "threshold: at or above it the finding is present",
                            }
                        ],
                    }
                ],
                "method": method,
                "device": {"reference": f"Device/{device_id}"},
                "note": [
                    {
                        "text": "Research use only. A finding 'not detected by the model' does not mean normal."
                        + (" Urgent finding." if f.urgent else "")
                    }
                ],
            }
        )
    # MEDIUM means "not raised": the order's own priority (STAT, LOW) stands, so it is not called
    # the worklist priority.
    stated = "Worklist priority HIGH" if result.priority == PRIORITY_HIGH else PRIORITY_NOT_RAISED_TEXT
    if result.assist:
        conclusion = f"AI triage: {stated}."
    else:
        reason = result.no_assist_text or result.no_assist_reason.meaning  # type: ignore[union-attr]
        if not reason.lower().startswith("no ai assessment"):
            reason = f"No AI assessment: {reason}"
        conclusion = f"{reason.rstrip('.')}. {stated}."
    if alg.is_test_model:
        conclusion += " TEST MODEL: random weights, the scores are noise and mean nothing."
    report_id = _id("report", facts.sr_uid)
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "id": report_id,
        "status": "preliminary",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{facts.sr_uid}"}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "RAD"}]}],
        "code": {
            "coding": [{"system": LOCAL_SYSTEM, "code": "ai-triage", "display": "AI triage"}],
            "text": f"AI triage ({alg.profile_name})",
        },
        "subject": subject,
        "effectiveDateTime": now,
        "issued": now,
        "result": [{"reference": f"Observation/{o['id']}"} for o in observations],
        "study": [study],
        "conclusion": conclusion + " Research use only, not for diagnostic use.",
    }
    if facts.accession:
        report["basedOn"] = [
            {
                "identifier": {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "ACSN"}]},
                    "value": facts.accession,
                },
                "type": "ServiceRequest",
            }
        ]
    report = {k: v for k, v in report.items() if v != []}
    entries = [
        {
            "fullUrl": f"urn:uuid:{r['id']}",
            "resource": r,
            "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"},
        }
        for r in (device, *observations, report)
    ]
    return Bundle.model_validate({"resourceType": "Bundle", "type": "transaction", "entry": entries})


def bundle_for(sr_path: str) -> Bundle:
    sr = pydicom.dcmread(sr_path)
    return build_bundle(read_triage_sr(sr), sr)


def _token(dest: FhirDestination) -> str | None:
    if dest.token:
        return dest.token
    if dest.token_env:
        token = os.environ.get(dest.token_env)
        if not token:  # say so, rather than send no token and read the server's 401
            raise FhirError(
                f"the bearer token variable {dest.token_env} (token_env) is not set in the node's environment"
            )
        return token
    return None


def post_bundle(dest: FhirDestination, bundle: Bundle) -> int:
    """POST the transaction Bundle to the base URL; the HTTP status, or FhirError."""
    body = bundle.model_dump_json(exclude_none=True).encode("utf-8")
    headers = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
    token = _token(dest)
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(dest.url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=dest.timeout_seconds) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        # Only the OperationOutcome's issue codes: its free text may quote patient data, and this
        # message reaches the operational log.
        codes = ""
        try:
            issues = json.loads(exc.read(100_000).decode("utf-8", errors="replace")).get("issue", [])
            codes = ", ".join(f"{i.get('severity', '?')}/{i.get('code', '?')}" for i in issues[:5])
        except (ValueError, AttributeError):
            pass
        raise FhirError(f"HTTP {exc.code}" + (f" ({codes})" if codes else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        raise FhirError(f"{type(exc).__name__}: {str(getattr(exc, 'reason', exc))[:300]}") from None


__all__ = ["FhirError", "build_bundle", "bundle_for", "post_bundle"]
