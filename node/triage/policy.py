"""Zero-shot scores and the priority decision: pure functions over embeddings (DESIGN rules 5-6).

Per finding f of a profile, with image embedding x and the L2-normalised class means a (absent
prompts) and p (present prompts)::

    p_f(x) = softmax(logit_scale * [x.a, x.p])[1]

A finding with a linear probe (``probe = "path"`` in the profile, issue 9) is scored by the probe
instead: ``p_f(x) = sigmoid(w . standardise(x / |x|) + b)`` (node/probes/probe.py). Either way
:func:`image_scores` is the one per-image scoring function, for live triage and evaluation alike.
A study's score for f is the maximum over its evaluated images. The domain check is the same
computation with the profile's in-domain / out-of-domain prompts, per image: images whose
in-domain probability is below ``domain.min_score`` are not evaluated.

Decision (``decide``):

- no image -> no assist, ``no-eligible-image``;
- non-finite embeddings -> no assist, ``model-error``;
- no image passes the domain check -> no assist, ``out-of-domain``;
- per finding: ``low <= score <= high`` (the indeterminate band) -> indeterminate; else
  ``score >= threshold`` -> present; else not detected ("not detected by the model", never
  "absent" or "normal");
- an urgent finding present -> priority HIGH (assist);
- else an urgent finding indeterminate -> no assist, ``urgent-finding-indeterminate``;
- else MEDIUM (assist). The model only ever raises priority: never LOW.

A no-assist decision always carries priority MEDIUM (the default), whatever was computed.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

import torch

from dicom_sr import PRIORITY_HIGH, PRIORITY_MEDIUM, FindingState

if TYPE_CHECKING:  # pragma: no cover
    from node.triage.model_api import Model
    from node.triage.profiles import FindingSpec, TriageProfile

__all__ = [
    "REASON_TEXT",
    "FindingScore",
    "NoAssistReason",
    "PromptEmbeddings",
    "StudyDecision",
    "class_mean",
    "clear_prompt_cache",
    "decide",
    "domain_probabilities",
    "embed_profile",
    "finding_probabilities",
    "image_scores",
    "no_assist",
    "two_class_probability",
]


class NoAssistReason(StrEnum):
    MODEL_UNAVAILABLE = "model-unavailable"
    MODEL_ERROR = "model-error"
    MODEL_TIMEOUT = "model-timeout"
    NO_ELIGIBLE_IMAGE = "no-eligible-image"
    OUT_OF_DOMAIN = "out-of-domain"
    URGENT_INDETERMINATE = "urgent-finding-indeterminate"


#: One sentence per reason, for the SR's text content, the UPS and logs.
REASON_TEXT: dict[NoAssistReason, str] = {
    NoAssistReason.MODEL_UNAVAILABLE: "No AI assessment: the AI model is not loaded.",
    NoAssistReason.MODEL_ERROR: "No AI assessment: the AI model failed while processing this study.",
    NoAssistReason.MODEL_TIMEOUT: "No AI assessment: the AI model did not answer in time.",
    NoAssistReason.NO_ELIGIBLE_IMAGE: (
        "No AI assessment: no image in this study matches the triage profile "
        "(modality, view, body part or patient age)."
    ),
    NoAssistReason.OUT_OF_DOMAIN: (
        "No AI assessment: the images do not look like the kind of image the triage profile is made for."
    ),
    NoAssistReason.URGENT_INDETERMINATE: (
        "No AI assessment: the score of an urgent finding is in its indeterminate band, so the model cannot tell."
    ),
}


@dataclass(frozen=True)
class PromptEmbeddings:
    """Class means of a profile's prompts for one model (each (D,), L2-normalised, float32, CPU)."""

    findings: Mapping[str, tuple[torch.Tensor, torch.Tensor]]  # key -> (absent_mean, present_mean)
    domain: tuple[torch.Tensor, torch.Tensor]  # (in_mean, out_mean)
    profile_version: str = ""
    model_sha256: str = ""


@dataclass(frozen=True)
class FindingScore:
    key: str
    score: float  # max over the evaluated images of p_f
    state: FindingState
    best_image: int  # index (into the image embeddings given to decide) of the image with the max score


@dataclass(frozen=True)
class StudyDecision:
    assist: bool
    priority: str  # "HIGH" | "MEDIUM" only
    reason: NoAssistReason | None  # None exactly when assist is True
    findings: tuple[FindingScore, ...]  # in profile order; also kept on no-assist for the audit
    domain_scores: tuple[float, ...]  # in-domain probability per image
    evaluated: tuple[int, ...]  # indices of the images that passed the domain check


# --------------------------------------------------------------------------------------------
# prompt embeddings


def class_mean(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean of L2-normalised prompt embeddings (M, D), renormalised -> (D,) float32."""
    e = embeddings.detach().float().cpu()
    e = e / e.norm(dim=-1, keepdim=True)
    m = e.mean(dim=0)
    return m / m.norm()


def _prompt_key(profile: TriageProfile) -> tuple:
    return (
        profile.domain.in_domain_prompts,
        profile.domain.out_of_domain_prompts,
        tuple((f.key, f.absent_prompts, f.present_prompts) for f in profile.findings if f.probe is None),
    )


_CACHE_SIZE = 32
_cache: OrderedDict[tuple, PromptEmbeddings] = OrderedDict()
_cache_lock = threading.Lock()


def clear_prompt_cache() -> None:
    with _cache_lock:
        _cache.clear()


def embed_profile(model: Model, profile: TriageProfile) -> PromptEmbeddings:
    """Embed all prompts of ``profile`` once (one text forward) and average them per class.

    Cached by (model identity, profile version, the prompts themselves), so calling it for every
    job costs a dictionary lookup.
    """
    key = (model.identity, profile.version, _prompt_key(profile))
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit

    groups: list[tuple[str, ...]] = [profile.domain.in_domain_prompts, profile.domain.out_of_domain_prompts]
    prompt_findings = [f for f in profile.findings if f.probe is None]  # probe findings have no prompts
    for f in prompt_findings:
        groups += [f.absent_prompts, f.present_prompts]
    flat = [p for g in groups for p in g]
    emb = model.embed_texts(flat)
    means: list[torch.Tensor] = []
    start = 0
    for g in groups:
        means.append(class_mean(emb[start : start + len(g)]))
        start += len(g)
    result = PromptEmbeddings(
        findings={f.key: (means[2 + 2 * i], means[3 + 2 * i]) for i, f in enumerate(prompt_findings)},
        domain=(means[0], means[1]),
        profile_version=profile.version,
        model_sha256=model.identity.weights_sha256,
    )
    with _cache_lock:
        _cache[key] = result
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return result


# --------------------------------------------------------------------------------------------
# scores


def two_class_probability(
    x: torch.Tensor, negative: torch.Tensor, positive: torch.Tensor, logit_scale: float
) -> torch.Tensor:
    """softmax(logit_scale * [x.negative, x.positive])[1] per row of x (N, D) -> (N,) float64."""
    x = x.detach().to(torch.float64).cpu()
    logits = torch.stack([x @ negative.to(torch.float64), x @ positive.to(torch.float64)], dim=-1)
    return torch.softmax(float(logit_scale) * logits, dim=-1)[:, 1]


def _normalised(image_embeddings: torch.Tensor) -> torch.Tensor:
    x = image_embeddings.detach().to(torch.float64).cpu()
    if x.ndim != 2:
        raise ValueError(f"image embeddings must be (N, D), got {tuple(x.shape)}")
    return x / x.norm(dim=-1, keepdim=True)


def domain_probabilities(image_embeddings: torch.Tensor, prompts: PromptEmbeddings, logit_scale: float) -> torch.Tensor:
    """In-domain probability per image, (N,) float64."""
    in_mean, out_mean = prompts.domain
    return two_class_probability(_normalised(image_embeddings), out_mean, in_mean, logit_scale)


def finding_probabilities(
    image_embeddings: torch.Tensor, prompts: PromptEmbeddings, logit_scale: float
) -> dict[str, torch.Tensor]:
    """p_f per image for every finding: key -> (N,) float64."""
    x = _normalised(image_embeddings)
    return {k: two_class_probability(x, a, p, logit_scale) for k, (a, p) in prompts.findings.items()}


def image_scores(x: torch.Tensor, finding: FindingSpec, prompts: PromptEmbeddings, logit_scale: float) -> torch.Tensor:
    """p_f per image (rows of the normalised ``x``) for one finding: its probe, else its prompts -> (N,) float64."""
    if finding.probe is not None:
        return torch.from_numpy(finding.probe.probabilities(x.numpy()))
    a, p = prompts.findings[finding.key]
    return two_class_probability(x, a, p, logit_scale)


def _state(score: float, threshold: float, band: tuple[float, float]) -> FindingState:
    low, high = band
    if low <= score <= high:
        return FindingState.INDETERMINATE
    if score >= threshold:
        return FindingState.PRESENT
    return FindingState.NOT_DETECTED


def no_assist(reason: NoAssistReason) -> StudyDecision:
    """A "no AI assessment" decision: priority stays at the default MEDIUM."""
    return StudyDecision(
        assist=False,
        priority=PRIORITY_MEDIUM,
        reason=NoAssistReason(reason),
        findings=(),
        domain_scores=(),
        evaluated=(),
    )


def decide(
    image_embeddings: torch.Tensor, profile: TriageProfile, prompts: PromptEmbeddings, logit_scale: float
) -> StudyDecision:
    """Score a study's images (N, D) against ``profile`` and decide its priority.

    ``image_embeddings`` are the study's eligible images (rows are renormalised here; for
    :meth:`LoadedModel.embed_images` output that changes nothing). ``prompts`` must come from
    :func:`embed_profile` for this profile and the same model.
    """
    if image_embeddings is None or image_embeddings.shape[0] == 0:
        return no_assist(NoAssistReason.NO_ELIGIBLE_IMAGE)
    if prompts.profile_version and prompts.profile_version != profile.version:
        raise ValueError(f"prompt embeddings are for profile version {prompts.profile_version}, not {profile.version}")
    missing = [f.key for f in profile.findings if f.probe is None and f.key not in prompts.findings]
    if missing:
        raise ValueError(f"prompt embeddings lack findings {missing}")
    if not torch.isfinite(image_embeddings).all() or not math.isfinite(float(logit_scale)):
        return no_assist(NoAssistReason.MODEL_ERROR)

    x = _normalised(image_embeddings)
    if not torch.isfinite(x).all():  # an all-zero embedding
        return no_assist(NoAssistReason.MODEL_ERROR)

    in_mean, out_mean = prompts.domain
    dom = two_class_probability(x, out_mean, in_mean, logit_scale)
    domain_scores = tuple(float(v) for v in dom)
    evaluated = tuple(i for i, v in enumerate(domain_scores) if v >= profile.domain.min_score)
    if not evaluated:
        return StudyDecision(
            assist=False,
            priority=PRIORITY_MEDIUM,
            reason=NoAssistReason.OUT_OF_DOMAIN,
            findings=(),
            domain_scores=domain_scores,
            evaluated=(),
        )

    xe = x[list(evaluated)]
    scores: list[FindingScore] = []
    for f in profile.findings:
        probs = image_scores(xe, f, prompts, logit_scale)
        j = int(torch.argmax(probs))
        score = float(probs[j])
        scores.append(
            FindingScore(
                key=f.key, score=score, state=_state(score, f.threshold, f.indeterminate_band), best_image=evaluated[j]
            )
        )
    findings = tuple(scores)
    urgent = [s for s, f in zip(findings, profile.findings) if f.urgency == "high"]

    if any(s.state is FindingState.PRESENT for s in urgent):
        # A confidently detected urgent finding raises the priority even if another urgent
        # finding is indeterminate: raising is the direction rule 5 allows.
        return StudyDecision(True, PRIORITY_HIGH, None, findings, domain_scores, evaluated)
    if any(s.state is FindingState.INDETERMINATE for s in urgent):
        return StudyDecision(
            False, PRIORITY_MEDIUM, NoAssistReason.URGENT_INDETERMINATE, findings, domain_scores, evaluated
        )
    return StudyDecision(True, PRIORITY_MEDIUM, None, findings, domain_scores, evaluated)
