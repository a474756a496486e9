"""Loading MedSigLIP and turning prompts and preprocessed images into L2-normalised embeddings.

The model is loaded with ``AutoModel`` / ``AutoProcessor`` from a local folder or a hub id, as
the ``[model]`` table of the config says (:class:`node.config.ModelSection`, passed as it is: no
mirror of it to drift). Any problem while loading -- no network in offline mode, a gated repo
without a token, a corrupt or incomplete checkpoint, no CUDA device -- raises
:class:`ModelUnavailable` with one clear sentence, so the node can start and answer every study
with a "no AI assessment (model unavailable)" SR instead of crashing.

Run time, per DESIGN.md "Triage: the model and the math":

- text: the processor with ``padding="max_length", max_length=64, truncation=True`` (the text
  tower pools the last token); only ``input_ids`` reach the model (MedSigLIP was trained without
  an attention mask). The text tower stays in float32: it runs once per profile.
- images: ``preprocess.to_model_input`` already made ``size x size x 3`` uint8 pixels. They go to
  the device as uint8 (a quarter of the bytes of float32), are normalised there by
  ``preprocess.normalise`` (``x / 255 * 2 - 1``, the processor's rescale + normalise with
  mean = std = 0.5) and cast to
  the vision tower's dtype (bfloat16 on CUDA by default). The processor's own image resize is never
  used at run time.
- ``embed_images`` works in batches of ``batch_size``; when CUDA runs out of memory it halves
  the batch and retries, down to one image.

The weights are identified by the SHA-256 of their files (:func:`weights_sha256`), cached per
(path, size, mtime) in a small JSON file so a 3.5 GB checkpoint is hashed once, not at every
start.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from node.config import ModelSection
from node.triage.hf_quiet import quiet_transformers
from node.triage.model_api import ModelIdentity
from node.triage.tiny_model import TEST_MODEL_MARKER
from node.triage.weights import WEIGHTS_CACHE_FILE, _hub_snapshot, weights_sha256

if TYPE_CHECKING:
    from transformers import SiglipModel  # imported where loaded: transformers is slow to import

__all__ = [
    "TEXT_MAX_LENGTH",
    "WEIGHTS_CACHE_FILE",
    "LoadedModel",
    "ModelIdentity",
    "ModelUnavailable",
    "load_model",
    "pixels_on_device",
    "weights_sha256",
]

log = logging.getLogger(__name__)

#: MedSigLIP's text context: 64 tokens, padded to the full length (last-token pooling).
TEXT_MAX_LENGTH = 64

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_HEX40 = re.compile(r"^[0-9a-f]{40}$")


class ModelUnavailable(RuntimeError):
    """The model could not be loaded or started; the message says why in one sentence."""


# --------------------------------------------------------------------------------------------
# the loaded model


def _pooled(out: Any) -> torch.Tensor:
    """transformers 5 returns BaseModelOutputWithPooling from get_*_features, 4.x a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected feature output {type(out).__name__}")
    return pooled


def _l2(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(p=2, dim=-1, keepdim=True)


def pixels_on_device(batch_uint8: np.ndarray | torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(N, H, W, 3) uint8 on the host -> (N, 3, H, W) in [-1, 1], ``dtype``, on ``device``.

    The bytes travel as uint8 (pinned, asynchronous on CUDA); ``preprocess.normalise`` then runs
    on the device.
    """
    from node.triage.preprocess import normalise

    t = torch.from_numpy(np.ascontiguousarray(batch_uint8)) if isinstance(batch_uint8, np.ndarray) else batch_uint8
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return normalise(t, dtype=dtype)


class LoadedModel:
    """A SigLIP-family model ready to embed prompts and preprocessed images.

    ``model`` needs ``get_image_features(pixel_values=...)`` and (for :meth:`embed_texts`)
    ``get_text_features(input_ids=...)``; ``processor`` turns text into ``input_ids``.
    Thread-safe: one forward at a time.
    """

    def __init__(
        self,
        model: SiglipModel,
        processor: Any,
        identity: ModelIdentity,
        settings: ModelSection,
        *,
        logit_scale: float,
        logit_bias: float = 0.0,
    ):
        self.model = model
        self.processor = processor
        self.identity = identity
        self.settings = settings
        self.logit_scale = float(logit_scale)  # exp() already applied
        self.logit_bias = float(logit_bias)  # not used by the 2-way softmax (it cancels)
        self.device = torch.device(identity.device)
        self.dtype = _DTYPES[identity.dtype]
        self.batch_size = max(1, int(settings.batch_size))
        self._lock = threading.Lock()
        self.oom_retries = 0  # how often a batch was halved after CUDA OOM (for metrics)

    @property
    def image_size(self) -> int:
        return self.identity.image_size

    # ---- text

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        """input_ids (M, 64): padded to the full 64 tokens, truncated beyond."""
        enc = self.processor(
            text=list(prompts),
            padding="max_length",
            max_length=TEXT_MAX_LENGTH,
            truncation=True,
            return_tensors="pt",
        )
        return enc["input_ids"]

    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(M, D) L2-normalised float32 CPU embeddings of ``prompts``."""
        prompts = list(prompts)
        if not prompts:
            raise ValueError("no prompts to embed")
        if not all(isinstance(p, str) and p.strip() for p in prompts):
            raise ValueError("prompts must be non-empty strings")
        input_ids = self.tokenize(prompts)
        outs = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(prompts), 64):
                ids = input_ids[start : start + 64].to(self.device)
                feats = _pooled(self.model.get_text_features(input_ids=ids))
                outs.append(_l2(feats).cpu())
        return torch.cat(outs)

    # ---- images

    def _forward_images(self, chunk_uint8: np.ndarray) -> torch.Tensor:
        """One forward of the vision tower: (n, S, S, 3) uint8 -> (n, D) float32, normalised, on the device."""
        px = pixels_on_device(chunk_uint8, self.device, self.dtype)
        feats = _pooled(self.model.get_image_features(pixel_values=px))
        return _l2(feats)

    def embed_images(self, batch_uint8: np.ndarray) -> torch.Tensor:
        """(N, S, S, 3) uint8 (from ``preprocess``) -> (N, D) L2-normalised float32 CPU embeddings.

        Runs in batches of ``settings.batch_size``; on ``torch.cuda.OutOfMemoryError`` the batch
        is halved and the same images retried, down to one image (then the error propagates).
        """
        if isinstance(batch_uint8, torch.Tensor):
            batch_uint8 = batch_uint8.cpu().numpy()
        arr = np.asarray(batch_uint8)
        s = self.image_size
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (s, s, 3):
            raise ValueError(f"expected a uint8 array of shape (N, {s}, {s}, 3), got {arr.dtype} {arr.shape}")
        n = arr.shape[0]
        if n == 0:
            return torch.empty((0, self.embedding_dim), dtype=torch.float32)
        outs: list[torch.Tensor] = []
        bs = self.batch_size
        start = 0
        with self._lock, torch.inference_mode():
            while start < n:
                chunk = arr[start : start + bs]
                oom = False
                try:
                    outs.append(self._forward_images(chunk))
                except torch.cuda.OutOfMemoryError:
                    if bs <= 1:
                        raise
                    oom = True
                if oom:  # outside the except block, so the failed batch's tensors are freed
                    bs = max(1, bs // 2)
                    self.oom_retries += 1
                    log.warning("CUDA out of memory: retrying with batch size %d", bs)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                start += len(chunk)
            # one device -> host copy (and synchronisation) per call, not per batch
            return torch.cat(outs).cpu()

    @property
    def embedding_dim(self) -> int:
        cfg = self.model.config
        vision = getattr(cfg, "vision_config", cfg)  # a dual encoder's vision tower, else the model's own
        return int(vision.hidden_size)

    def __repr__(self) -> str:
        i = self.identity
        return f"<LoadedModel {i.model_id}@{i.revision} {i.device}/{i.dtype} sha256={i.weights_sha256[:12]}>"


# --------------------------------------------------------------------------------------------
# loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    return line if len(line) <= 300 else line[:297] + "..."


def _resolve_device(name: str) -> torch.device:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelUnavailable(f"model.device is {name!r} but no CUDA device is available to PyTorch")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise ModelUnavailable(f"model.device {name!r} is not one of auto, cuda, cuda:N, cpu")


def _resolve_dtype(name: str, device: torch.device) -> str:
    name = (name or "auto").strip().lower()
    if name == "auto":
        return "bfloat16" if device.type == "cuda" else "float32"
    if name not in _DTYPES:
        raise ModelUnavailable(f"model.dtype {name!r} is not one of auto, float32, bfloat16, float16")
    return name


def _dtype_kwarg() -> str:
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def remedies(settings: ModelSection) -> str:
    """What a newcomer can do when the model cannot be had (one sentence, in every such message)."""
    return (
        f"Remedies: export {settings.hf_token_env} with a Hugging Face token that has accepted the "
        f"{settings.id} terms (and let this machine reach the hub); or download the checkpoint elsewhere, "
        "copy the folder here and set model.path to it with model.offline = true; or run "
        "`triage-node demo` to see the whole path with a random test model. Until then every study gets "
        "a 'no AI assessment' SR."
    )


def _require_hub(settings: ModelSection, timeout_s: float = 5.0) -> None:
    """Fail fast when the hub endpoint does not answer a TCP connect within ``timeout_s``."""
    import socket
    from urllib.parse import urlsplit

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parts = urlsplit(endpoint)
    host = parts.hostname or "huggingface.co"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        raise ModelUnavailable(
            f"model {settings.id!r} is not in the local cache and the Hugging Face hub ({endpoint}) cannot be "
            f"reached from this machine ({type(exc).__name__}: {exc}). {remedies(settings)}"
        ) from None


def _explain(source: str, settings: ModelSection, exc: BaseException) -> str:
    text = _first_line(exc)
    low = str(exc).lower()
    if any(s in low for s in ("401", "403", "gated", "access to model", "restricted", "authenticated")):
        return (
            f"model {source!r} needs a Hugging Face token with access: accept the model's terms on the hub and "
            f"set ${settings.hf_token_env} ({text})"
        )
    offline = settings.offline or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    # A local model.path never comes from the hub cache: a broken folder is not a missing download.
    if offline and not settings.path:
        return (
            f"model {source!r} is not in the local Hugging Face cache and offline mode is on: download it first "
            f"(hf download {source}) or set model.path to a local folder ({text})"
        )
    return f"cannot load model {source!r}: {type(exc).__name__}: {text}. {remedies(settings)}"


def load_model(settings: ModelSection, *, cache_dir: str | Path | None = None) -> LoadedModel:
    """Load, place and warm up the model. Raises :class:`ModelUnavailable` on any failure.

    ``cache_dir`` (e.g. ``<data_dir>/cache``) keeps the weights hash between starts.
    """
    try:
        return _load(settings, cache_dir)
    except ModelUnavailable:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise ModelUnavailable(f"not enough GPU memory to load the model: {_first_line(exc)}") from None
    except Exception as exc:
        raise ModelUnavailable(f"model start-up failed: {type(exc).__name__}: {_first_line(exc)}") from None


def _load(settings: ModelSection, cache_dir: str | Path | None) -> LoadedModel:
    try:
        from transformers import AutoModel, AutoProcessor
    except Exception as exc:
        raise ModelUnavailable(f"transformers cannot be imported: {_first_line(exc)}") from None

    device = _resolve_device(settings.device)
    dtype_name = _resolve_dtype(settings.dtype, device)

    if settings.path:
        folder = Path(settings.path).expanduser()
        if not folder.is_dir():
            raise ModelUnavailable(f"model.path {str(folder)!r} is not a folder")
        if not (folder / "config.json").is_file():
            raise ModelUnavailable(f"model.path {str(folder)!r} has no config.json (not a checkpoint folder)")
        source = str(folder)
        common: dict[str, Any] = {"local_files_only": True}
    else:
        folder = None
        source = settings.id
        token = os.environ.get(settings.hf_token_env) or None
        # A checkpoint already in the local cache loads without the network (no HEAD requests
        # that retry for half a minute when the hub cannot be reached); otherwise fail within
        # seconds, naming the remedies, when the hub is out of reach.
        local_only = bool(settings.offline) or _hub_snapshot(settings.id, settings.revision) is not None
        if not local_only:
            _require_hub(settings)
        common = {"revision": settings.revision, "token": token, "local_files_only": local_only}

    try:
        with quiet_transformers():
            model, info = AutoModel.from_pretrained(
                source,
                attn_implementation="sdpa",
                output_loading_info=True,
                **{_dtype_kwarg(): torch.float32},
                **common,
            )
            processor = AutoProcessor.from_pretrained(source, **common)
    except ModelUnavailable:
        raise
    except Exception as exc:
        raise ModelUnavailable(_explain(source, settings, exc)) from None

    for attr in ("get_image_features", "get_text_features", "logit_scale"):
        if not hasattr(model, attr):
            raise ModelUnavailable(
                f"model {source!r} is a {type(model).__name__}, not a SigLIP image-text model (no {attr})"
            )
    missing = sorted(info.get("missing_keys") or ())
    mismatched = list(info.get("mismatched_keys") or ())
    if missing or mismatched:
        bad = (missing + [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in mismatched])[:3]
        raise ModelUnavailable(
            f"checkpoint {source!r} is incomplete: {len(missing)} weights missing and {len(mismatched)} of the "
            f"wrong shape (e.g. {', '.join(bad)}); it would run with random weights"
        )

    if folder is None:
        folder = _hub_snapshot(settings.id, settings.revision)
        if folder is None:
            raise ModelUnavailable(f"model {source!r} loaded but its files cannot be found in the hub cache")
    try:
        sha = weights_sha256(folder, cache_dir)
    except OSError as exc:
        raise ModelUnavailable(f"cannot hash the weights of {source!r}: {_first_line(exc)}") from None

    marker = folder / TEST_MODEL_MARKER
    is_test = marker.is_file()
    if is_test:
        try:
            model_id = str(json.loads(marker.read_text(encoding="utf-8")).get("model_id") or settings.id)
        except (OSError, ValueError):
            model_id = "triage-node/test-model"
    else:
        model_id = settings.id
    if settings.path:
        revision = settings.revision or "local"
    else:
        commit = getattr(model.config, "_commit_hash", None)
        if not (isinstance(commit, str) and _HEX40.match(commit)):
            commit = folder.name if _HEX40.match(folder.name) else None
        revision = commit or settings.revision or "main"

    vision_cfg = getattr(model.config, "vision_config", model.config)
    image_size = int(vision_cfg.image_size)  # the model's own input size: preprocessing follows it

    with torch.no_grad():
        logit_scale = float(model.logit_scale.detach().float().exp().item())
        bias = getattr(model, "logit_bias", None)
        logit_bias = float(bias.detach().float().item()) if bias is not None else 0.0

    model.eval()
    model.requires_grad_(False)
    # The vision tower runs in the chosen dtype (cast before the move: half the bytes to copy);
    # the text tower (once per profile) and the two scalars stay float32.
    vision = getattr(model, "vision_model", None)
    if vision is not None:
        vision.to(_DTYPES[dtype_name])
    elif dtype_name != "float32":
        model.to(_DTYPES[dtype_name])
    model.to(device)

    identity = ModelIdentity(
        model_id=model_id,
        revision=revision,
        weights_sha256=sha,
        image_size=image_size,
        device=str(device),
        dtype=dtype_name,
        is_test_model=is_test,
    )
    loaded = LoadedModel(model, processor, identity, settings, logit_scale=logit_scale, logit_bias=logit_bias)

    # Warm-up: one prompt and one black image through the same code paths as at run time.
    try:
        t = loaded.embed_texts(["a chest x-ray"])
        v = loaded.embed_images(np.zeros((1, image_size, image_size, 3), dtype=np.uint8))
    except Exception as exc:
        raise ModelUnavailable(
            f"model {source!r} failed its warm-up forward: {type(exc).__name__}: {_first_line(exc)}"
        ) from None
    if not (torch.isfinite(t).all() and torch.isfinite(v).all()):
        raise ModelUnavailable(f"model {source!r} produced non-finite embeddings in its warm-up forward")
    if t.shape[1] != v.shape[1]:
        raise ModelUnavailable(
            f"model {source!r}: text and image embeddings differ in size ({t.shape[1]} vs {v.shape[1]})"
        )
    log.info("model loaded: %r", loaded)
    return loaded
