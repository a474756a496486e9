"""Fixtures for the model tests: a tiny random SigLIP built on the spot (no downloads).

The checkpoint is written once per session by ``node.triage.tiny_model.build_tiny_siglip`` and
loaded through the product's own ``load_model``; tests that alter it work on a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from node.config import ModelSection
from node.triage.model import LoadedModel, load_model
from node.triage.tiny_model import build_tiny_siglip

TINY_IMAGE_SIZE = 64


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only (by convention) tiny SigLIP checkpoint folder. Copy it before changing it."""
    torch.set_num_threads(1)  # the CI machine is small and shared
    return build_tiny_siglip(tmp_path_factory.mktemp("tiny-siglip"), image_size=TINY_IMAGE_SIZE, seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny checkpoint loaded by load_model on the CPU (shared: do not modify)."""
    return load_model(
        ModelSection(path=str(tiny_model_dir), device="cpu", batch_size=4),
        cache_dir=tmp_path_factory.mktemp("model-cache"),
    )


@pytest.fixture
def tiny_model_copy(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint folder, free to damage."""
    dst = tmp_path / "tiny-copy"
    shutil.copytree(tiny_model_dir, dst)
    return dst
