"""Image-level results in the SR, and the request it answers: what viewers and PACS need to show it.

Why: the study-level groups (TID 1501, no geometry) say everything, but viewers draw only what is
tied to an image. OHIF 3.13 hydrates only measurement groups that carry a SCOORD (a group without
one even stops its SR loading, which ``scripts/ohif_serve.py``'s app config works around), so each
image that a finding cites also gets a TID 1410 group whose Image Region is the whole image
outline (the model looks at the whole image; it does not localise), listing per finding its
state on that image (qualitative evaluation, named by the finding) and its score as a percentage
NUM named after the finding, so OHIF labels the image "Pneumothorax: 81.23 %" line by line,
present findings first. Its tracking identifier names the priority and the present findings (and
starts with a TEST MODEL warning when the weights are a random test model's).

Also the Referenced Request Sequence (0040,A370) from the study's accession number and request
attributes, when the study has them (IHE AIR: the result names the order it answers).
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from highdicom.sr import (
    AlgorithmIdentification,
    CodedConcept,
    ImageRegion,
    PlanarROIMeasurementsAndQualitativeEvaluations,
    QualitativeEvaluation,
    SourceImageForRegion,
    TrackingIdentifier,
)
from highdicom.sr.enum import GraphicTypeValues
from pydicom import Dataset
from pydicom.uid import UID

from . import codes
from .result import FindingResult, FindingState, TriageResult

PERCENT = CodedConcept(value="%", scheme_designator="UCUM", meaning="Percent")
#: SOP classes whose images have a pixel grid to outline (not SR, PDF, ...)
_NO_PIXELS = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.104.")


def _uid(*parts: str) -> UID:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["triage-node-image-level", *parts])


def _outline(ds: Dataset) -> np.ndarray | None:
    """The whole image as a closed polyline in pixel coordinates (column, row), or None without a grid."""
    rows, cols = ds.get("Rows"), ds.get("Columns")
    if not rows or not cols or str(ds.SOPClassUID).startswith(_NO_PIXELS):
        return None
    r, c = float(rows), float(cols)
    return np.array([[0.0, 0.0], [c, 0.0], [c, r], [0.0, r], [0.0, 0.0]])


_ORDER = {FindingState.PRESENT: 0, FindingState.INDETERMINATE: 1, FindingState.NOT_DETECTED: 2}


def _concept(finding: FindingResult) -> CodedConcept:
    return CodedConcept(
        value=finding.finding.value, scheme_designator=finding.finding.scheme, meaning=finding.finding.meaning
    )


def _label(result: TriageResult, findings: Sequence[FindingResult]) -> str:
    present = [f.finding.meaning for f in findings if f.state is FindingState.PRESENT]
    if not result.assist:
        reason = result.no_assist_reason
        text = f"No AI assessment ({reason.meaning})" if reason else "No AI assessment"
    else:
        text = f"AI triage {result.priority}: " + (
            ", ".join(present) + " present" if present else "nothing above threshold"
        )
    if result.algorithm.is_test_model:
        # The label is what a viewer draws on the image: a random model's numbers must not reach
        # the screen without the warning the SR's series description and text already carry.
        text = "TEST MODEL, scores are noise. " + text
    return text if len(text) <= 64 else text[:61] + "..."


def _group(
    result: TriageResult,
    findings: Sequence[FindingResult],
    image: Dataset,
    outline: np.ndarray,
    algorithm_id: AlgorithmIdentification,
    sop_instance_uid: str,
) -> PlanarROIMeasurementsAndQualitativeEvaluations:
    region = ImageRegion(
        graphic_type=GraphicTypeValues.POLYLINE,
        graphic_data=outline,
        source_image=SourceImageForRegion(
            referenced_sop_class_uid=image.SOPClassUID, referenced_sop_instance_uid=image.SOPInstanceUID
        ),
    )
    ordered = sorted(findings, key=lambda f: (_ORDER[f.state], -f.score))
    # Viewers draw these groups as labels on the image. A no-assist result offers no assessment,
    # so its label says so and carries no per-finding numbers or states there (they stay in the
    # study-level finding groups, for the audit of the decision: rule 6 / issue 7).
    shown = ordered if result.assist else []
    return PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=_uid(sop_instance_uid, str(image.SOPInstanceUID)), identifier=_label(result, ordered)
        ),
        referenced_region=region,
        finding_type=codes.AI_ASSESSMENT,
        algorithm_id=algorithm_id,
        measurements=[hd.sr.Measurement(name=_concept(f), value=round(f.score * 100.0, 2), unit=PERCENT) for f in shown]
        or None,
        qualitative_evaluations=[
            QualitativeEvaluation(name=_concept(f), value=codes.STATE_CODES[f.state]) for f in shown
        ]
        or None,
    )


def image_level_groups(
    result: TriageResult, evidence: Sequence[Dataset], algorithm_id: AlgorithmIdentification, sop_instance_uid: str
) -> list[PlanarROIMeasurementsAndQualitativeEvaluations]:
    """Per image that a finding cites (and that has a pixel grid), one whole-image TID 1410 group with,
    per finding citing it, its score (NUM, percent) and its state (qualitative evaluation); present
    findings first, so a viewer's label starts with what raised the priority."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in evidence}
    cited: dict[str, list[FindingResult]] = {}
    for finding in result.findings:
        for ref in finding.source_images:
            cited.setdefault(ref.sop_instance_uid, []).append(finding)
    groups = []
    for uid, findings in cited.items():
        image = by_uid.get(uid)
        if image is None:
            continue
        outline = _outline(image)
        if outline is not None:
            groups.append(_group(result, findings, image, outline, algorithm_id, sop_instance_uid))
    return groups


def referenced_request(study_context: Dataset) -> list[Dataset]:
    """Referenced Request Sequence items (SR Document General Module, type 1C: when the SR answers a
    request): one per Request Attributes item of the image, else one from its accession number."""
    requests = list(study_context.get("RequestAttributesSequence", []) or [])
    accession = str(study_context.get("AccessionNumber", "") or "")
    if not requests and not accession:
        return []
    items = []
    for source in requests or [Dataset()]:
        item = Dataset()
        item.StudyInstanceUID = study_context.StudyInstanceUID
        item.ReferencedStudySequence = []
        item.AccessionNumber = accession
        for number in ("PlacerOrderNumberImagingServiceRequest", "FillerOrderNumberImagingServiceRequest"):
            setattr(item, number, str(study_context.get(number, "") or source.get(number, "") or ""))
        item.RequestedProcedureID = str(source.get("RequestedProcedureID", "") or "")
        item.RequestedProcedureDescription = str(
            source.get("RequestedProcedureDescription", "") or study_context.get("StudyDescription", "") or ""
        )
        item.RequestedProcedureCodeSequence = list(source.get("RequestedProcedureCodeSequence", []) or [])
        items.append(item)
    return items


__all__ = ["image_level_groups", "referenced_request"]
