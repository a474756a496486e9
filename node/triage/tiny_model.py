"""A tiny, random SigLIP checkpoint built on the spot (no downloads), and the real MedSigLIP shapes.

``build_tiny_siglip(folder)`` writes a complete Hugging Face checkpoint folder -- ``config.json``,
``model.safetensors``, a SentencePiece tokenizer (``spiece.model``, trained here on a small
built-in corpus), the image processor and the processor config -- that loads through the same
``node.triage.model.load_model(ModelSection(path=folder))`` code path as google/medsiglip-448.
The folder also carries :data:`TEST_MODEL_MARKER`, so the loaded model reports
``identity.is_test_model = True`` and SRs / the demo can say that its scores are meaningless.

It serves the test suite and ``triage-node demo``. Its weights are random: it exercises the
plumbing, never medicine.

``medsiglip_448_config()`` gives a ``SiglipConfig`` with MedSigLIP-448's shapes (So400m/14 at
448 px, see reference/medsiglip.md section 1) for benchmarks with random weights.
"""

from __future__ import annotations

import io
import json
import math
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: Name of the marker file that flags a folder as a random test model (contents: JSON).
TEST_MODEL_MARKER = "triage_node_test_model.json"

#: The ``model_id`` a tiny test model reports.
TINY_MODEL_ID = "triage-node/tiny-random-siglip"

# Text the tokenizer is trained on: the CheXpert prompt set of MedSigLIP's published zero-shot
# evaluation (MedGemma report, Table A4), the domain prompts of the shipped profiles, some
# dermatology words and plain English. A missing word is still tokenised (by characters).
_CORPUS = """
no atelectasis. no acute cardiopulmonary process. adjacent atelectasis. bibasilar atelectasis.
there is atelectasis. heart size is normal. cardiac size is within normal limits.
cardiothoracic ratio within normal limits. normal study. no evidence of cardiomegaly.
mild cardiomegaly. moderate cardiomegaly. severe cardiomegaly. enlarged cardiac silhouette.
no focal consolidation. alveolar consolidation. densely consolidated. lobe consolidation.
airspace consolidation. bibasilar consolidations. suggestive of consolidation.
no pulmonary edema. mild pulmonary edema. moderate pulmonary edema. severe pulmonary edema.
cardiomediastinal silhouette is normal. widened cardiomediastinum. rib fractures. rib fracture.
lytic lesion. cavitary lesion. parenchymal lesion. no focal opacity. lung volumes are normal.
normal lung volumes. lungs are clear. no evidence of airspace consolidation. no infiltrate.
no airspace opacity. pulmonary parenchyma is clear. bilateral opacities. basal opacity.
opacification is present. bibasilar opacities. increased opacification. consolidative opacity.
parenchymal opacities. airspace opacification cannot be excluded. there is airspace opacification.
no evidence of pleural effusion. left pleural effusion. right pleural effusion.
bilateral pleural effusions. blunting of costophrenic angle. pleural thickening.
suggestive of pneumonia. no pneumothorax. apical pneumothorax. large pneumothorax.
monitoring and support devices. ng tube. et tube. catheter. pic line.
a chest x-ray. a chest radiograph. a frontal chest radiograph. a lateral chest x-ray.
a photograph of skin. a ct scan. an mri scan. a knee x-ray. a hand x-ray. an abdominal x-ray.
a histopathology slide. a fundus photograph. a photograph. a document.
a photo of an arm with no rash. a photo of an arm with a rash. a photo of a leg with a rash.
a dermatology photograph of a skin lesion. benign nevus. melanoma. basal cell carcinoma.
squamous cell carcinoma. eczema. psoriasis. acne. a clinical photograph of the skin.
the quick brown fox jumps over the lazy dog. this is an image of a patient. the image shows
a finding that is present or absent. there is no evidence of disease. the study is normal.
findings are consistent with. left right upper lower lobe lung heart chest abdomen bone.
"""


def _corpus_sentences(extra_texts: Iterable[str]) -> list[str]:
    text = _CORPUS + "\n" + "\n".join(extra_texts)
    parts = [p.strip().lower() for p in re.split(r"[.\n]", text)]
    sentences = [p for p in parts if p]
    # Repeat so the trainer sees enough sentences; the order is fixed, so training is deterministic.
    return sentences * 4


def _train_sentencepiece(extra_texts: Iterable[str], vocab_size: int) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus_sentences(extra_texts)),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,  # a small corpus may support fewer pieces: take what it gives
        character_coverage=1.0,
        # SigLIP's ids: <pad>=0, </s>=1 (also the padding token of SiglipTokenizer), <unk>=2.
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def _image_processor(image_size: int):
    kwargs: dict[str, Any] = dict(  # for one of two processor classes, by transformers version
        do_resize=True,
        size={"height": image_size, "width": image_size},
        resample=3,  # PIL bicubic, as in MedSigLIP's preprocessor_config.json
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    try:  # transformers 5: the PIL backend (the torchvision one needs torchvision)
        from transformers import SiglipImageProcessorPil

        return SiglipImageProcessorPil(**kwargs)
    except ImportError:  # transformers 4.x
        from transformers import SiglipImageProcessor

        return SiglipImageProcessor(**kwargs)


def tiny_siglip_config(*, image_size: int = 64, vocab_size: int = 256, hidden: int = 32, layers: int = 2):
    """A SiglipConfig small enough to run in milliseconds on one CPU core."""
    from transformers import SiglipConfig

    patch = 8 if image_size % 8 == 0 else 1
    common = dict(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
    )
    return SiglipConfig(
        text_config=dict(
            common,
            vocab_size=vocab_size,
            max_position_embeddings=64,
            projection_size=hidden,
            pad_token_id=1,  # "</s>", as in SiglipTokenizer
            eos_token_id=1,
            bos_token_id=None,
        ),
        vision_config=dict(common, image_size=image_size, patch_size=patch, num_channels=3),
    )


def build_tiny_siglip(
    folder: Path,
    *,
    image_size: int = 64,
    seed: int = 0,
    extra_texts: Iterable[str] = (),
) -> Path:
    """Write a tiny random SigLIP checkpoint (model, tokenizer, processor, marker) to ``folder``.

    The same ``seed`` and ``extra_texts`` give byte-identical weights, hence the same SHA-256.
    ``extra_texts`` (e.g. a profile's prompts) are added to the tokenizer's training corpus.
    Returns ``folder``.
    """
    from node.triage.hf_quiet import quiet_transformers

    if image_size < 8:
        raise ValueError("image_size must be >= 8")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # errors only: transformers 5 warns about its own default SiglipTextConfig while saving.
    with quiet_transformers(errors_only=True):
        _build(folder, image_size=image_size, seed=seed, extra_texts=list(extra_texts))
    return folder


def _build(folder: Path, *, image_size: int, seed: int, extra_texts: list[str]) -> None:
    import torch
    from transformers import SiglipModel, SiglipProcessor, SiglipTokenizer

    sp_bytes = _train_sentencepiece(extra_texts, vocab_size=256)
    with tempfile.TemporaryDirectory() as tmp:
        sp_path = Path(tmp) / "spiece.model"
        sp_path.write_bytes(sp_bytes)
        # model_input_names=["input_ids"]: like google/medsiglip-448's tokenizer, no attention
        # mask (the text tower was trained without one and pools the last token).
        tokenizer = SiglipTokenizer(str(sp_path), model_max_length=64, model_input_names=["input_ids"])
        processor = SiglipProcessor(image_processor=_image_processor(image_size), tokenizer=tokenizer)
        processor.save_pretrained(folder)

    config = tiny_siglip_config(image_size=image_size, vocab_size=tokenizer.vocab_size)
    rng_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = SiglipModel(config)
        with torch.no_grad():
            # SigLIP-like temperature and bias (the init sets both to 0: exp(0) = 1 is far too flat).
            model.logit_scale.fill_(math.log(100.0))
            model.logit_bias.fill_(-10.0)
    finally:
        torch.random.set_rng_state(rng_state)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)

    marker = {
        "model_id": TINY_MODEL_ID,
        "random_weights": True,
        "seed": seed,
        "image_size": image_size,
        "note": "Random test model built by node.triage.tiny_model; its scores mean nothing.",
    }
    (folder / TEST_MODEL_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")


def medsiglip_448_config():
    """SiglipConfig with google/medsiglip-448's shapes (So400m/14, 448 px, 64 text tokens).

    Derived in reference/medsiglip.md section 1 (it reproduces the checkpoint's size to the byte
    count of the safetensors header). For benchmarks with random weights, not for inference.
    """
    from transformers import SiglipConfig

    common = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16)
    return SiglipConfig(
        text_config=dict(
            common,
            vocab_size=32000,
            max_position_embeddings=64,
            projection_size=1152,
            pad_token_id=1,
            eos_token_id=1,
            bos_token_id=None,
        ),
        vision_config=dict(common, image_size=448, patch_size=14, num_channels=3),
    )


__all__ = [
    "TEST_MODEL_MARKER",
    "TINY_MODEL_ID",
    "build_tiny_siglip",
    "medsiglip_448_config",
    "tiny_siglip_config",
]
