"""Model loading and embedding, on a tiny random SigLIP checkpoint (real transformers code)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from node.config import ModelSection
from node.triage.model import (
    TEXT_MAX_LENGTH,
    WEIGHTS_CACHE_FILE,
    LoadedModel,
    ModelUnavailable,
    load_model,
    weights_sha256,
)
from node.triage.tiny_model import TEST_MODEL_MARKER, TINY_MODEL_ID, build_tiny_siglip
from tests.support.model import TINY_IMAGE_SIZE


def _images(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3), dtype=np.uint8)


# --------------------------------------------------------------------------- loading


def test_load_from_local_folder(tiny_model: LoadedModel, tiny_model_dir: Path):
    ident = tiny_model.identity
    assert ident.model_id == TINY_MODEL_ID
    assert ident.revision == "local"
    assert ident.image_size == TINY_IMAGE_SIZE
    assert ident.device == "cpu"
    assert ident.dtype == "float32"  # auto on CPU
    assert ident.is_test_model is True
    assert ident.weights_sha256 == hashlib.sha256((tiny_model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert tiny_model.logit_scale == pytest.approx(100.0, rel=1e-5)  # exp() applied
    assert tiny_model.model.training is False


def test_tiny_model_is_reproducible(tiny_model_dir: Path, tmp_path: Path):
    again = build_tiny_siglip(tmp_path / "again", image_size=TINY_IMAGE_SIZE, seed=0)
    assert weights_sha256(again) == weights_sha256(tiny_model_dir)
    other = build_tiny_siglip(tmp_path / "other", image_size=TINY_IMAGE_SIZE, seed=1)
    assert weights_sha256(other) != weights_sha256(tiny_model_dir)


def test_without_marker_is_not_a_test_model(tiny_model_copy: Path):
    (tiny_model_copy / TEST_MODEL_MARKER).unlink()
    m = load_model(ModelSection(path=str(tiny_model_copy), id="google/medsiglip-448", revision="v1"))
    assert m.identity.is_test_model is False
    assert m.identity.model_id == "google/medsiglip-448"
    assert m.identity.revision == "v1"


def test_offline_hub_id_not_cached_is_unavailable_quickly(monkeypatch, tmp_path: Path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = f"triage-node-tests/not-cached-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    with pytest.raises(ModelUnavailable) as err:
        load_model(ModelSection(id=repo, offline=True))
    assert time.monotonic() - t0 < 30
    msg = str(err.value)
    assert repo in msg and "offline" in msg
    assert "\n" not in msg and "Traceback" not in msg
    assert err.value.__cause__ is None  # one sentence, no chained traceback


def test_missing_folder_is_unavailable(tmp_path: Path):
    with pytest.raises(ModelUnavailable, match="not a folder"):
        load_model(ModelSection(path=str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelUnavailable, match="config.json"):
        load_model(ModelSection(path=str(tmp_path / "empty")))


def test_garbage_weights_are_unavailable(tiny_model_copy: Path):
    (tiny_model_copy / "model.safetensors").write_bytes(os.urandom(4096))
    with pytest.raises(ModelUnavailable) as err:
        load_model(ModelSection(path=str(tiny_model_copy)))
    assert str(tiny_model_copy) in str(err.value)


def test_incomplete_weights_are_unavailable(tiny_model_copy: Path):
    """A checkpoint that lacks tensors must not silently run with random ones."""
    path = tiny_model_copy / "model.safetensors"
    tensors = load_file(path)
    dropped = next(k for k in tensors if "vision_model.head" in k)
    del tensors[dropped]
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ModelUnavailable, match="incomplete"):
        load_model(ModelSection(path=str(tiny_model_copy)))


def test_cuda_requested_without_cuda_is_unavailable(tiny_model_dir: Path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ModelUnavailable, match="CUDA"):
        load_model(ModelSection(path=str(tiny_model_dir), device="cuda"))


# --------------------------------------------------------------------------- weights hash


def test_weights_hash_stable_and_cached(tiny_model_copy: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    weights = tiny_model_copy / "model.safetensors"
    real = hashlib.sha256(weights.read_bytes()).hexdigest()

    first = weights_sha256(tiny_model_copy, cache)
    assert first == real
    data = json.loads((cache / WEIGHTS_CACHE_FILE).read_text())
    (entry,) = data.values()
    assert entry["sha256"] == real and entry["files"] == ["model.safetensors"]

    # The second call answers from the cache file without reading the weights: plant a value.
    key = next(iter(data))
    data[key]["sha256"] = "f" * 64
    (cache / WEIGHTS_CACHE_FILE).write_text(json.dumps(data))
    assert weights_sha256(tiny_model_copy, cache) == "f" * 64

    # Loading twice gives the same identity hash (from the cache).
    a = load_model(ModelSection(path=str(tiny_model_copy)), cache_dir=cache)
    b = load_model(ModelSection(path=str(tiny_model_copy)), cache_dir=cache)
    assert a.identity.weights_sha256 == b.identity.weights_sha256 == "f" * 64

    # A changed file (new mtime) is hashed again.
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert weights_sha256(tiny_model_copy, cache) == real


# --------------------------------------------------------------------------- text


def test_embed_texts_pads_to_64_tokens(tiny_model: LoadedModel):
    long_prompt = " ".join(["pleural effusion"] * 100)
    enc = tiny_model.processor(
        text=["a chest x-ray", long_prompt],
        padding="max_length",
        max_length=TEXT_MAX_LENGTH,
        truncation=True,
        return_tensors="pt",
    )
    assert tuple(enc["input_ids"].shape) == (2, 64)
    assert "attention_mask" not in enc  # MedSigLIP's tokenizer gives none; the model was trained without
    ids = tiny_model.tokenize(["a chest x-ray", long_prompt])
    assert tuple(ids.shape) == (2, 64)
    pad = tiny_model.processor.tokenizer.pad_token_id
    assert int(ids[0, -1]) == pad  # short prompt padded to the end

    emb = tiny_model.embed_texts(["a chest x-ray", long_prompt])
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert tuple(emb.shape) == (2, tiny_model.embedding_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))

    # The padding matters (last-token pooling): without it the embedding differs.
    with torch.no_grad():
        unpadded = tiny_model.processor(text=["a chest x-ray"], return_tensors="pt")["input_ids"]
        assert unpadded.shape[1] < 64
        out = tiny_model.model.get_text_features(input_ids=unpadded)
        raw = out if isinstance(out, torch.Tensor) else out.pooler_output
        raw = raw / raw.norm(dim=-1, keepdim=True)
    assert not torch.allclose(raw[0], emb[0], atol=1e-3)


def test_embed_texts_rejects_empty(tiny_model: LoadedModel):
    with pytest.raises(ValueError):
        tiny_model.embed_texts([])
    with pytest.raises(ValueError):
        tiny_model.embed_texts(["  "])


# --------------------------------------------------------------------------- images


def test_embed_images_normalised(tiny_model: LoadedModel):
    imgs = _images(5)
    emb = tiny_model.embed_images(imgs)
    assert emb.dtype == torch.float32 and emb.device.type == "cpu"
    assert tuple(emb.shape) == (5, tiny_model.embedding_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(5))
    # batch composition does not change an image's embedding
    torch.testing.assert_close(tiny_model.embed_images(imgs[2:3])[0], emb[2], atol=1e-5, rtol=0)
    assert tiny_model.embed_images(imgs[:0]).shape == (0, tiny_model.embedding_dim)


def test_embed_images_rejects_wrong_input(tiny_model: LoadedModel):
    with pytest.raises(ValueError):
        tiny_model.embed_images(_images(1).astype(np.float32))
    with pytest.raises(ValueError):
        tiny_model.embed_images(np.zeros((1, 32, 32, 3), dtype=np.uint8))
    with pytest.raises(ValueError):
        tiny_model.embed_images(np.zeros((TINY_IMAGE_SIZE, TINY_IMAGE_SIZE, 3), dtype=np.uint8))


def test_oom_halves_the_batch(tiny_model_dir: Path):
    m = load_model(ModelSection(path=str(tiny_model_dir), batch_size=8))
    imgs = _images(7, seed=3)
    expected = m.embed_images(imgs)
    seen: list[int] = []
    limit = 2

    def fake_oom(module, args, kwargs):
        n = (kwargs.get("pixel_values") if "pixel_values" in kwargs else args[0]).shape[0]
        seen.append(n)
        if n > limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (injected, batch {n})")

    handle = m.model.vision_model.register_forward_pre_hook(fake_oom, with_kwargs=True)
    try:
        got = m.embed_images(imgs)
        assert seen[:3] == [7, 4, 2]  # 8 -> 4 -> 2, then stays at 2
        assert max(seen[3:]) <= limit
        assert m.oom_retries == 2
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)

        limit = 0  # even one image fails: the error propagates
        with pytest.raises(torch.cuda.OutOfMemoryError):
            m.embed_images(imgs[:3])
    finally:
        handle.remove()
