"""What the triage worker needs from a model, as a small Protocol.

Why a Protocol: the worker's control flow (batching across studies, deadlines, errors, the
answer for each job) does not depend on MedSigLIP itself. ``LoadedModel`` (node/triage/model.py)
is the one production implementation; the worker's unit tests use a fake that implements the
same few members, so they test the worker, not torch. Importing this module loads no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

__all__ = ["Model", "ModelIdentity"]


@dataclass(frozen=True)
class ModelIdentity:
    """What an SR needs to name the model exactly (DESIGN rule 7)."""

    model_id: str
    revision: str
    weights_sha256: str
    image_size: int
    device: str
    dtype: str
    is_test_model: bool


class Model(Protocol):
    """An image-text embedding model ready to score studies.

    - ``identity``: names the weights (id, revision, SHA-256) and the input size for the SR;
    - ``image_size``: the side of the square uint8 images ``embed_images`` takes (preprocessing
      makes them at this size);
    - ``logit_scale``: the temperature of the two-class softmax (exp() already applied);
    - ``embed_texts``: prompts -> (M, D) L2-normalised float32 CPU embeddings (the profile's
      prompt set, once per model and profile version: ``policy.embed_profile``);
    - ``embed_images``: (N, S, S, 3) uint8 -> (N, D) L2-normalised float32 CPU embeddings. It may
      block or raise; the worker bounds it with ``model.timeout_seconds``.
    """

    @property
    def identity(self) -> ModelIdentity: ...

    @property
    def image_size(self) -> int: ...

    @property
    def logit_scale(self) -> float: ...

    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor: ...

    def embed_images(self, batch_uint8: np.ndarray) -> torch.Tensor: ...
