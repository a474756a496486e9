"""The one tiny SigLIP the suite triages with: random weights, 64x64 images, seed 0, built on the
spot by the product's own ``build_tiny_siglip`` (no download). The ``tiny_model_dir`` fixture builds
it once per session; every folder shares that checkpoint (read-only by convention)."""

from __future__ import annotations

from pathlib import Path

TINY_IMAGE_SIZE = 64


def build_test_model(folder: Path, *, seed: int = 0) -> Path:
    """Write the tiny checkpoint into ``folder`` (torch limited to one thread: small, shared CPUs)."""
    import torch

    from node.triage.tiny_model import build_tiny_siglip

    torch.set_num_threads(1)
    return build_tiny_siglip(Path(folder), image_size=TINY_IMAGE_SIZE, seed=seed)
