"""What a result produces besides the SR, and for whom: the summary card (Secondary Capture) and
its PDF, stored in the study like the SR; and which [[forward]], [[hl7]] and [[fhir]]
destinations get what (queued in the outbox with the worklist update).

Why a module of its own: write.py decides *that* a report exists; this decides *where it is
seen*, which grows with every kind of receiving system.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_sr import FindingState, TriageResult
from dicom_sr.card import THUMB, build_card_pdf, build_card_sc, card_pdf, render_card
from node import __version__
from node.config import FhirDestination, ForwardDestination, Hl7Destination, Settings
from node.oplog import get_logger
from node.own_instances import OWN_MANUFACTURER
from node.store.ingest import Ingestor, encode_own_instance

log = get_logger("results")
CARD_SERIES_NUMBER = 9902
PDF_SERIES_NUMBER = 9903


@dataclass(frozen=True)
class ResultOutputs:
    """Everything a result is sent to or turned into, from the settings."""

    forward: tuple[ForwardDestination, ...] = ()
    summary_card: bool = False
    summary_pdf: bool = False
    hl7: tuple[Hl7Destination, ...] = ()
    fhir: tuple[FhirDestination, ...] = field(default_factory=tuple)

    @classmethod
    def of(cls, settings: Settings) -> ResultOutputs:
        sends = {kind for dest in settings.forward for kind in dest.send}
        return cls(
            forward=tuple(settings.forward),
            summary_card=settings.results.summary_card or "sc" in sends,
            summary_pdf=settings.results.summary_pdf or "pdf" in sends,
            hl7=tuple(settings.hl7),
            fhir=tuple(settings.fhir),
        )


def _thumbnail_source(result: TriageResult, evidence: list[Dataset]) -> Dataset | None:
    """The image that drove the result: the first image cited by a present finding, else the first evaluated."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    for finding in result.findings:
        if finding.state is FindingState.PRESENT:
            for ref in finding.source_images:
                if ref.sop_instance_uid in by_uid:
                    return by_uid[ref.sop_instance_uid]
    return evidence[0] if evidence else None


def _thumbnail(result: TriageResult, evidence: list[Dataset]):
    from node.triage.preprocess import to_model_input

    source = _thumbnail_source(result, evidence)
    if source is None:
        return None
    try:
        pixels, _ = to_model_input(source, size=THUMB)
        return pixels
    except Exception as exc:  # the card is still useful without its picture
        log.warning("card_thumbnail_failed", error=type(exc).__name__, detail=str(exc)[:200])
        return None


def store_summary(
    ingestor: Ingestor,
    outputs: ResultOutputs,
    *,
    result: TriageResult,
    study_context: Dataset,
    evidence: list[Dataset],
    sr_sop_instance_uid: str,
    job_id: int,
    own_ae: str,
) -> dict[str, str]:
    """Build and store the summary card and/or its PDF (as configured) in the result's study.
    UIDs derive from the job, like the SR's, so a retried job stores each once.
    Returns {"sc": uid, "pdf": uid} for what was stored."""
    if not (outputs.summary_card or outputs.summary_pdf):
        return {}
    study_uid = str(study_context.StudyInstanceUID)
    pixels = render_card(result, sr_sop_instance_uid, _thumbnail(result, evidence))
    stored: dict[str, str] = {}
    datasets: list[tuple[str, Dataset]] = []
    if outputs.summary_card:
        uid = generate_uid(entropy_srcs=["triage-node-card", study_uid, str(job_id)])
        datasets.append(
            (
                "sc",
                build_card_sc(
                    result,
                    study_context,
                    pixels,
                    sop_instance_uid=uid,
                    manufacturer=OWN_MANUFACTURER,
                    series_instance_uid=generate_uid(entropy_srcs=["triage-node-card-series", study_uid, str(job_id)]),
                    series_number=CARD_SERIES_NUMBER,
                    software_versions=__version__,
                ),
            )
        )
    if outputs.summary_pdf:
        uid = generate_uid(entropy_srcs=["triage-node-pdf", study_uid, str(job_id)])
        datasets.append(
            (
                "pdf",
                build_card_pdf(
                    card_pdf(pixels),
                    study_context,
                    sop_instance_uid=uid,
                    manufacturer=OWN_MANUFACTURER,
                    series_instance_uid=generate_uid(entropy_srcs=["triage-node-pdf-series", study_uid, str(job_id)]),
                    series_number=PDF_SERIES_NUMBER,
                    software_versions=__version__,
                ),
            )
        )
    for kind, ds in datasets:
        meta, body = encode_own_instance(ds)
        outcome = ingestor.store(meta, body, calling_ae=own_ae, touch_stability=False)
        if not outcome.ok:
            raise RuntimeError(f"could not store the summary {kind}: 0x{outcome.status:04X} {outcome.reason}")
        stored[kind] = str(ds.SOPInstanceUID)
    return stored


__all__ = ["CARD_SERIES_NUMBER", "PDF_SERIES_NUMBER", "ResultOutputs", "store_summary"]
