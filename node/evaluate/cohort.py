"""Turn labelled studies into scores with the live triage math: the worker's selection
(node.triage.select), the kept embeddings of the eligible images, and ``policy.decide`` -- the very
function that decides a live study -- so an evaluated score is the score the SR states.

Studies that do not get finding scores are counted by reason, never dropped silently:
``not-in-index`` (labels.csv names a study the node does not hold), ``no-eligible-image`` (the
profile accepts no image, or none could be preprocessed), ``out-of-domain`` (decide's domain
check), ``embedding-missing`` (with ``--no-embed``: the study is named in missing_embeddings.csv).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from node.embeddings.facts import HeaderFacts
from node.embeddings.store import StoredEmbedding
from node.triage.policy import NoAssistReason, PromptEmbeddings, StudyDecision, decide
from node.triage.profiles import TriageProfile

__all__ = ["CohortStudy", "ScoredCohort", "ScoredStudy", "score_cohort"]


@dataclass
class CohortStudy:
    study_uid: str
    labels: dict[str, float]  # finding key -> 1, 0 or nan
    extra: dict[str, str]  # --by columns
    embeddings: list[StoredEmbedding] = field(default_factory=list)  # eligible images, in worker order
    reason: str | None = None  # set when the study cannot be scored before decide (see module doc)


@dataclass
class ScoredStudy:
    study_uid: str
    labels: dict[str, float]
    extra: dict[str, str]
    scores: dict[str, float]  # finding key -> study score (max over evaluated images)
    facts: HeaderFacts  # of the first evaluated image
    decision: StudyDecision


@dataclass
class ScoredCohort:
    studies: list[ScoredStudy]
    not_eligible: Counter


def score_cohort(
    cohort: Sequence[CohortStudy], profile: TriageProfile, prompts: PromptEmbeddings, logit_scale: float
) -> ScoredCohort:
    scored: list[ScoredStudy] = []
    not_eligible: Counter = Counter()
    for study in cohort:
        if study.reason is not None:
            not_eligible[study.reason] += 1
            continue
        if not study.embeddings:
            not_eligible[str(NoAssistReason.NO_ELIGIBLE_IMAGE)] += 1
            continue
        vectors = torch.from_numpy(np.stack([e.vector for e in study.embeddings]))
        decision = decide(vectors, profile, prompts, logit_scale)
        if not decision.findings:
            not_eligible[str(decision.reason)] += 1
            continue
        scored.append(
            ScoredStudy(
                study_uid=study.study_uid,
                labels=study.labels,
                extra=study.extra,
                scores={f.key: f.score for f in decision.findings},
                facts=study.embeddings[decision.evaluated[0]].facts,
                decision=decision,
            )
        )
    return ScoredCohort(scored, not_eligible)
