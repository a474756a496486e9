"""The zero-shot math and the priority decision, on hand-made embeddings with known dot products."""

from __future__ import annotations

import math

import pytest
import torch

from dicom_sr import PRIORITY_HIGH, PRIORITY_MEDIUM, FindingState
from node.triage.model import LoadedModel
from node.triage.policy import (
    REASON_TEXT,
    NoAssistReason,
    PromptEmbeddings,
    class_mean,
    decide,
    domain_probabilities,
    embed_profile,
    finding_probabilities,
    no_assist,
)
from node.triage.profiles import (
    DomainCheck,
    FindingSpec,
    PreprocessDefaults,
    SelectionCriteria,
    TriageProfile,
)

SCALE = 10.0
D = 8
E = torch.eye(D)
# Orthonormal class means: domain in/out on axes 0/1, finding "ptx" absent/present on 2/3,
# finding "eff" absent/present on 4/5.
IN, OUT, PTX_A, PTX_P, EFF_A, EFF_P = (E[i] for i in range(6))


def finding(key: str, *, urgency: str = "routine", threshold: float = 0.5, band=(0.4, 0.6)) -> FindingSpec:
    return FindingSpec(
        key=key,
        display_name=key.title(),
        code=("0", "99TEST", key),
        absent_prompts=(f"no {key}",),
        present_prompts=(f"{key} present", f"there is {key}"),
        threshold=threshold,
        indeterminate_band=band,
        urgency=urgency,  # type: ignore[arg-type]
    )


def profile(*findings: FindingSpec, min_score: float = 0.5, version: str = "sha256:test") -> TriageProfile:
    return TriageProfile(
        name="test",
        version=version,
        description="test profile",
        selection=SelectionCriteria(("DX",), (), (), (), None, None, ()),
        domain=DomainCheck(("a chest x-ray",), ("a photograph",), min_score),
        preprocessing=PreprocessDefaults(None, None, "middle"),
        findings=findings,
    )


PROMPTS = PromptEmbeddings(
    findings={"ptx": (PTX_A, PTX_P), "eff": (EFF_A, EFF_P)}, domain=(IN, OUT), profile_version="sha256:test"
)


def sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def image(*, domain: float = 0.99, ptx: float = 0.1, eff: float = 0.1) -> torch.Tensor:
    """A unit vector whose 2-way softmax probabilities (at SCALE) are the given values.

    sigmoid(SCALE * (x.p - x.a)) = prob  <=>  x.p - x.a = logit(prob) / SCALE; put the difference on
    one axis, keep the vector short, then add a filler axis (6) to make it unit length.
    """
    x = torch.zeros(D, dtype=torch.float64)
    for (neg, pos), prob in (((1, 0), domain), ((2, 3), ptx), ((4, 5), eff)):
        d = logit(prob) / SCALE
        if d >= 0:
            x[pos] = d
        else:
            x[neg] = -d
    assert float(x.norm()) < 1
    x[6] = math.sqrt(1 - float(x.norm()) ** 2)
    return x.float()


def stack(*xs: torch.Tensor) -> torch.Tensor:
    return torch.stack(list(xs))


# --------------------------------------------------------------------------- probabilities


def test_probabilities_follow_the_formula():
    x = torch.nn.functional.normalize(torch.tensor([[0.3, -0.1, 0.2, 0.5, -0.4, 0.1, 0.6, 0.2]]), dim=-1)
    probs = finding_probabilities(x, PROMPTS, SCALE)
    a, p = float(x[0] @ PTX_A), float(x[0] @ PTX_P)
    expected = math.exp(SCALE * p) / (math.exp(SCALE * a) + math.exp(SCALE * p))
    assert float(probs["ptx"][0]) == pytest.approx(expected, abs=1e-7)
    assert float(probs["eff"][0]) == pytest.approx(sigmoid(SCALE * float(x[0] @ (EFF_P - EFF_A))), abs=1e-7)
    dom = domain_probabilities(x, PROMPTS, SCALE)
    assert float(dom[0]) == pytest.approx(sigmoid(SCALE * float(x[0] @ (IN - OUT))), abs=1e-7)


def test_hand_made_image_has_requested_probabilities():
    x = stack(image(domain=0.9, ptx=0.75, eff=0.2))
    probs = finding_probabilities(x, PROMPTS, SCALE)
    assert float(probs["ptx"][0]) == pytest.approx(0.75, abs=1e-6)
    assert float(probs["eff"][0]) == pytest.approx(0.2, abs=1e-6)
    assert float(domain_probabilities(x, PROMPTS, SCALE)[0]) == pytest.approx(0.9, abs=1e-6)


def test_class_mean_is_normalised_mean_of_normalised():
    e = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    m = class_mean(e)
    torch.testing.assert_close(m, torch.tensor([1.0, 1.0]) / math.sqrt(2))


# --------------------------------------------------------------------------- states


@pytest.mark.parametrize(
    ("score", "state"),
    [
        (0.9, FindingState.PRESENT),
        (0.61, FindingState.PRESENT),
        (0.6, FindingState.INDETERMINATE),  # band is inclusive
        (0.5, FindingState.INDETERMINATE),
        (0.4, FindingState.INDETERMINATE),
        (0.39, FindingState.NOT_DETECTED),
        (0.05, FindingState.NOT_DETECTED),
    ],
)
def test_states_by_threshold_and_band(score: float, state: FindingState):
    prof = profile(finding("ptx"), finding("eff"))
    dec = decide(stack(image(ptx=score)), prof, PROMPTS, SCALE)
    ptx = dec.findings[0]
    assert ptx.key == "ptx" and ptx.state is state
    assert ptx.score == pytest.approx(score, abs=1e-6)


def test_threshold_without_band():
    prof = profile(finding("ptx", threshold=0.7, band=(0.7, 0.7)), finding("eff"))
    assert decide(stack(image(ptx=0.72)), prof, PROMPTS, SCALE).findings[0].state is FindingState.PRESENT
    assert decide(stack(image(ptx=0.68)), prof, PROMPTS, SCALE).findings[0].state is FindingState.NOT_DETECTED


def test_study_score_is_max_over_evaluated_images():
    prof = profile(finding("ptx"), finding("eff"))
    imgs = stack(
        image(domain=0.1, ptx=0.99),  # out of domain: ignored even though it scores highest
        image(ptx=0.2, eff=0.8),
        image(ptx=0.7, eff=0.3),
    )
    dec = decide(imgs, prof, PROMPTS, SCALE)
    assert dec.evaluated == (1, 2)
    assert dec.domain_scores[0] == pytest.approx(0.1, abs=1e-6)
    ptx, eff = dec.findings
    assert ptx.score == pytest.approx(0.7, abs=1e-6) and ptx.best_image == 2
    assert eff.score == pytest.approx(0.8, abs=1e-6) and eff.best_image == 1


# --------------------------------------------------------------------------- priority


def test_high_only_for_urgent_present():
    prof = profile(finding("ptx", urgency="high"), finding("eff"))
    dec = decide(stack(image(ptx=0.9)), prof, PROMPTS, SCALE)
    assert dec.assist and dec.priority == PRIORITY_HIGH and dec.reason is None

    dec = decide(stack(image(ptx=0.1, eff=0.95)), prof, PROMPTS, SCALE)  # routine finding present
    assert dec.assist and dec.priority == PRIORITY_MEDIUM and dec.reason is None
    assert dec.findings[1].state is FindingState.PRESENT

    dec = decide(stack(image(ptx=0.1, eff=0.1)), prof, PROMPTS, SCALE)  # nothing detected
    assert dec.assist and dec.priority == PRIORITY_MEDIUM
    assert all(f.state is FindingState.NOT_DETECTED for f in dec.findings)


def test_urgent_indeterminate_is_no_assist():
    prof = profile(finding("ptx", urgency="high"), finding("eff"))
    dec = decide(stack(image(ptx=0.5, eff=0.95)), prof, PROMPTS, SCALE)
    assert not dec.assist
    assert dec.reason is NoAssistReason.URGENT_INDETERMINATE
    assert dec.priority == PRIORITY_MEDIUM
    assert dec.findings[0].state is FindingState.INDETERMINATE  # kept for the audit trail


def test_routine_indeterminate_still_assists():
    prof = profile(finding("ptx", urgency="high"), finding("eff"))
    dec = decide(stack(image(ptx=0.1, eff=0.5)), prof, PROMPTS, SCALE)
    assert dec.assist and dec.priority == PRIORITY_MEDIUM
    assert dec.findings[1].state is FindingState.INDETERMINATE


def test_urgent_present_wins_over_other_urgent_indeterminate():
    prof = profile(finding("ptx", urgency="high"), finding("eff", urgency="high"))
    dec = decide(stack(image(ptx=0.9, eff=0.5)), prof, PROMPTS, SCALE)
    assert dec.assist and dec.priority == PRIORITY_HIGH


def test_out_of_domain_is_no_assist():
    prof = profile(finding("ptx", urgency="high"), finding("eff"), min_score=0.5)
    dec = decide(stack(image(domain=0.3, ptx=0.99), image(domain=0.45, ptx=0.99)), prof, PROMPTS, SCALE)
    assert not dec.assist and dec.reason is NoAssistReason.OUT_OF_DOMAIN
    assert dec.priority == PRIORITY_MEDIUM
    assert dec.evaluated == () and dec.findings == ()
    assert dec.domain_scores == pytest.approx((0.3, 0.45), abs=1e-6)


def test_domain_min_score_is_inclusive():
    prof = profile(finding("ptx"), finding("eff"), min_score=0.5)
    x = torch.nn.functional.normalize(torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0]]), dim=-1)
    assert decide(x, prof, PROMPTS, SCALE).evaluated == (0,)  # in-domain probability exactly 0.5


def test_no_image_and_bad_embeddings():
    prof = profile(finding("ptx"), finding("eff"))
    dec = decide(torch.empty((0, D)), prof, PROMPTS, SCALE)
    assert not dec.assist and dec.reason is NoAssistReason.NO_ELIGIBLE_IMAGE and dec.priority == PRIORITY_MEDIUM
    bad = stack(image(ptx=0.9))
    bad[0, 0] = float("nan")
    assert decide(bad, prof, PROMPTS, SCALE).reason is NoAssistReason.MODEL_ERROR
    assert decide(torch.zeros((1, D)), prof, PROMPTS, SCALE).reason is NoAssistReason.MODEL_ERROR


def test_prompts_must_match_the_profile():
    with pytest.raises(ValueError, match="version"):
        decide(stack(image()), profile(finding("ptx"), finding("eff"), version="sha256:other"), PROMPTS, SCALE)
    with pytest.raises(ValueError, match="lack"):
        decide(stack(image()), profile(finding("ptx"), finding("cardiomegaly")), PROMPTS, SCALE)


def test_no_assist_reasons():
    for reason in NoAssistReason:
        dec = no_assist(reason)
        assert not dec.assist and dec.reason is reason and dec.priority == PRIORITY_MEDIUM
        assert REASON_TEXT[reason].startswith("No AI assessment")
    assert NoAssistReason.URGENT_INDETERMINATE.value == "urgent-finding-indeterminate"
    assert FindingState.NOT_DETECTED.value == "not_detected"


def test_never_low_never_normal_for_random_inputs():
    gen = torch.Generator().manual_seed(1234)
    profiles = [
        profile(finding("ptx", urgency="high"), finding("eff")),
        profile(finding("ptx", urgency="high"), finding("eff", urgency="high"), min_score=0.3),
        profile(finding("ptx", threshold=0.8, band=(0.7, 0.9)), finding("eff", band=(0.5, 0.5)), min_score=0.0),
    ]
    seen_high = seen_no_assist = 0
    for i in range(600):
        n = int(torch.randint(0, 5, (1,), generator=gen))
        x = torch.randn((n, D), generator=gen)
        prof = profiles[i % len(profiles)]
        scale = float(torch.empty(1).uniform_(1.0, 120.0, generator=gen))
        dec = decide(x, prof, PROMPTS, scale)
        assert dec.priority in (PRIORITY_HIGH, PRIORITY_MEDIUM)
        assert (dec.reason is None) == dec.assist
        for f in dec.findings:
            assert f.state in (FindingState.PRESENT, FindingState.NOT_DETECTED, FindingState.INDETERMINATE)
            assert 0.0 <= f.score <= 1.0
            assert f.best_image in dec.evaluated
        if dec.priority == PRIORITY_HIGH:
            seen_high += 1
            assert dec.assist
            urgent = {s.key for s in prof.findings if s.urgency == "high"}
            assert any(f.key in urgent and f.state is FindingState.PRESENT for f in dec.findings)
        if not dec.assist:
            seen_no_assist += 1
            assert dec.priority == PRIORITY_MEDIUM
    assert seen_high and seen_no_assist


# --------------------------------------------------------------------------- with the tiny model


def test_embed_profile_class_means_and_cache(tiny_model: LoadedModel):
    prof = profile(finding("ptx", urgency="high"), finding("eff"), version="sha256:tiny-1")
    pe = embed_profile(tiny_model, prof)
    assert embed_profile(tiny_model, prof) is pe  # cached
    assert pe.profile_version == prof.version
    assert pe.model_sha256 == tiny_model.identity.weights_sha256
    absent, present = pe.findings["eff"]
    torch.testing.assert_close(present, class_mean(tiny_model.embed_texts(["eff present", "there is eff"])))
    torch.testing.assert_close(absent, tiny_model.embed_texts(["no eff"])[0])
    in_mean, out_mean = pe.domain
    torch.testing.assert_close(in_mean, tiny_model.embed_texts(["a chest x-ray"])[0])
    for v in (absent, present, in_mean, out_mean):
        assert v.shape == (tiny_model.embedding_dim,)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-6)

    # other prompts under the same version string are not confused with the cached ones
    other = profile(finding("ptx", urgency="high"), finding("cardiomegaly"), version="sha256:tiny-1")
    assert set(embed_profile(tiny_model, other).findings) == {"ptx", "cardiomegaly"}
