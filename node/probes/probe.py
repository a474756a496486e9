"""A linear probe: a logistic regression on frozen MedSigLIP image embeddings, in one JSON file.

JSON, not pickle: a probe file is data a profile points at, and loading it must never run code.
It holds everything needed to apply it by hand and to know where it came from::

    p(x) = 1 / (1 + exp(-(((x / |x|) - mean) / scale) . coef - intercept))

with ``x`` the image embedding (the same vector triage keeps), and the embedding model's weights
SHA-256, the image preprocessing version, the label file's SHA-256, the cohort size and the
cross-validated AUROC. A probe only means something for the embedding space it was trained in,
so :func:`check_probe` refuses it for other weights or another preprocessing version.

The probe's version is ``sha256:`` + the first 16 hex digits of the file's SHA-256 (as for a
profile); the SR names it next to the profile version.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["PROBE_FORMAT", "Probe", "ProbeError", "check_probe", "load_probe", "probe_version"]

PROBE_FORMAT = "triage-node-probe/1"


class ProbeError(ValueError):
    """A probe file is unreadable, invalid, or made for another embedding space; names the file."""


def probe_version(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


@dataclass(frozen=True, eq=False)  # eq=False: hashable by identity (it holds arrays)
class Probe:
    path: str
    version: str  # sha256:<16 hex> of the file bytes
    finding: str
    weights_sha256: str
    preprocessing_version: str
    dim: int
    mean: np.ndarray  # (dim,) float64
    scale: np.ndarray  # (dim,) float64, > 0
    coef: np.ndarray  # (dim,) float64
    intercept: float
    document: dict[str, Any]  # the whole file, for reports

    def probabilities(self, embeddings: Any) -> np.ndarray:
        """p per row of ``embeddings`` (N, dim) -> (N,) float64; rows are L2-normalised first."""
        x = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"probe {self.path} expects (N, {self.dim}) embeddings, got {x.shape}")
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        z = ((x - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-z))


def _vector(doc: dict[str, Any], key: str, dim: int, path: Path) -> np.ndarray:
    value = doc.get(key)
    if not isinstance(value, list) or len(value) != dim:
        raise ProbeError(f"{path}: model.{key} must be a list of {dim} numbers")
    arr = np.asarray(value, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ProbeError(f"{path}: model.{key} has a non-finite value")
    return arr


def load_probe(path: Path) -> Probe:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ProbeError(f"{path}: cannot read the probe file: {exc.strerror or exc}") from None
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise ProbeError(f"{path}: not a probe file (invalid JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != PROBE_FORMAT:
        raise ProbeError(f"{path}: not a probe file (format must be {PROBE_FORMAT!r})")
    for key in ("finding", "weights_sha256", "preprocessing_version"):
        if not isinstance(doc.get(key), str) or not doc[key]:
            raise ProbeError(f"{path}: {key} missing")
    model = doc.get("model")
    dim = doc.get("embedding_dim")
    if not isinstance(model, dict) or model.get("kind") != "logistic-regression":
        raise ProbeError(f"{path}: model.kind must be 'logistic-regression'")
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ProbeError(f"{path}: embedding_dim must be a positive integer")
    scale = _vector(model, "scale", dim, path)
    if (scale <= 0).any():
        raise ProbeError(f"{path}: model.scale must be positive")
    intercept = model.get("intercept")
    if isinstance(intercept, bool) or not isinstance(intercept, (int, float)) or not math.isfinite(intercept):
        raise ProbeError(f"{path}: model.intercept must be a finite number")
    return Probe(
        path=str(path),
        version=probe_version(data),
        finding=doc["finding"],
        weights_sha256=doc["weights_sha256"],
        preprocessing_version=doc["preprocessing_version"],
        dim=dim,
        mean=_vector(model, "mean", dim, path),
        scale=scale,
        coef=_vector(model, "coef", dim, path),
        intercept=float(intercept),
        document=doc,
    )


def check_probe(probe: Probe, *, weights_sha256: str | None = None, preprocessing_version: str | None = None) -> None:
    """Refuse a probe trained in another embedding space (ProbeError naming the file)."""
    if weights_sha256 is not None and probe.weights_sha256 != weights_sha256:
        raise ProbeError(
            f"{probe.path}: probe trained for model weights {probe.weights_sha256[:12]}, but the model "
            f"has weights {weights_sha256[:12]}: train it again (triage-node probe train)"
        )
    if preprocessing_version is not None and probe.preprocessing_version != preprocessing_version:
        raise ProbeError(
            f"{probe.path}: probe trained on preprocessing {probe.preprocessing_version}, but the "
            f"profile uses {preprocessing_version}: train it again (triage-node probe train)"
        )
