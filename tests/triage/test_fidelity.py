"""The batched, cached pipeline scores exactly what a plain transformers computation scores.

Pipeline: DICOM -> preprocess.to_model_input -> LoadedModel.embed_images (batches of 3 over 7
images) -> embed_profile (cached class means) -> policy.
Reference: a separately loaded SiglipModel, ``processor(text=..., padding="max_length",
max_length=64)`` + ``model(**inputs)`` with the same normalised pixel values, and the zero-shot
formula on the model's own normalised embeddings and ``logit_scale.exp()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from transformers import AutoModel, AutoProcessor

from node.config import ModelSection
from node.triage.model import LoadedModel, load_model
from node.triage.policy import decide, domain_probabilities, embed_profile, finding_probabilities
from node.triage.preprocess import normalise, to_model_input
from node.triage.profiles import load_profile

PROFILE_PATH = Path(__file__).resolve().parents[2] / "config" / "profiles" / "cxr.toml"


def _dataset(arr: np.ndarray, pi: str = "MONOCHROME2", **tags) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.Modality = "DX"
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    ds.PhotometricInterpretation = pi
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated if arr.dtype.itemsize == 1 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for k, v in tags.items():
        setattr(ds, k, v)
    ds.PixelData = np.ascontiguousarray(arr).tobytes()
    return ds


def _studies(size: int) -> np.ndarray:
    """Seven varied images (sizes, aspect ratios, windows, MONOCHROME1, RGB) as model input."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:300, 0:260]
    ramp = ((yy * 7 + xx * 3) % 4096).astype(np.uint16)
    datasets = [
        _dataset(rng.integers(0, 4096, (300, 260), dtype=np.uint16), WindowCenter=2048, WindowWidth=4096),
        _dataset(ramp, WindowCenter=1500, WindowWidth=1000),
        _dataset(ramp.T.copy(), "MONOCHROME1", WindowCenter=2000, WindowWidth=3000),
        _dataset(rng.integers(0, 4096, (120, 200), dtype=np.uint16)),  # min-max, no window
        _dataset(rng.integers(0, 256, (90, 90, 3), dtype=np.uint8), "RGB"),
        _dataset(
            (ramp[:200, :200] // 16).astype(np.uint16),
            RescaleSlope=2,
            RescaleIntercept=-100,
            WindowCenter=100,
            WindowWidth=400,
        ),
        _dataset(np.full((64, 80), 1000, dtype=np.uint16), WindowCenter=900, WindowWidth=400),
    ]
    out = [to_model_input(ds, size=size)[0] for ds in datasets]
    return np.stack(out)


@pytest.fixture(scope="module")
def pipeline_model(tiny_model_dir: Path) -> LoadedModel:
    return load_model(ModelSection(path=str(tiny_model_dir), device="cpu", batch_size=3))


def test_pipeline_matches_plain_reference(pipeline_model: LoadedModel, tiny_model_dir: Path):
    prof = load_profile(PROFILE_PATH)
    size = pipeline_model.image_size
    images = _studies(size)
    assert images.shape == (7, size, size, 3) and images.dtype == np.uint8

    # ---- the pipeline: batches of 3 over 7 images, cached prompt class means
    emb = pipeline_model.embed_images(images)
    prompts = embed_profile(pipeline_model, prof)
    assert embed_profile(pipeline_model, prof) is prompts
    scale = pipeline_model.logit_scale
    got = finding_probabilities(emb, prompts, scale)
    got_domain = domain_probabilities(emb, prompts, scale)
    decision = decide(emb, prof, prompts, scale)

    # ---- the reference: a fresh model, the processor's text path, model(**inputs)
    ref_model = AutoModel.from_pretrained(str(tiny_model_dir), attn_implementation="eager").eval()
    processor = AutoProcessor.from_pretrained(str(tiny_model_dir))
    pixel_values = normalise(images)

    def class_probs(negative: tuple[str, ...], positive: tuple[str, ...]) -> torch.Tensor:
        texts = list(negative) + list(positive)
        inputs = processor(text=texts, padding="max_length", max_length=64, return_tensors="pt")
        inputs["pixel_values"] = pixel_values
        with torch.no_grad():
            out = ref_model(**inputs)
            t = out.text_embeds  # normalised by the model
            neg = t[: len(negative)].mean(0)
            pos = t[len(negative) :].mean(0)
            means = torch.stack([neg / neg.norm(), pos / pos.norm()])
            logits = ref_model.logit_scale.exp() * out.image_embeds @ means.T
            return logits.softmax(dim=-1)[:, 1]

    ref_domain = class_probs(prof.domain.out_of_domain_prompts, prof.domain.in_domain_prompts)
    torch.testing.assert_close(got_domain.float(), ref_domain, atol=1e-5, rtol=0)
    assert decision.domain_scores == pytest.approx(ref_domain.tolist(), abs=1e-5)

    evaluated = [i for i, v in enumerate(ref_domain.tolist()) if v >= prof.domain.min_score]
    assert list(decision.evaluated) == evaluated
    by_key = {f.key: f for f in decision.findings}
    for f in prof.findings:
        ref = class_probs(f.absent_prompts, f.present_prompts)
        torch.testing.assert_close(got[f.key].float(), ref, atol=1e-5, rtol=0, msg=f.key)
        if evaluated:
            assert by_key[f.key].score == pytest.approx(float(ref[evaluated].max()), abs=1e-5)
    # the scores are not all alike (the comparison would be weak otherwise)
    allp = torch.stack([got[k] for k in got])
    assert float(allp.max() - allp.min()) > 0.05
