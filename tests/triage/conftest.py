"""Fixtures for the model tests: the session's tiny random SigLIP (``tiny_model_dir``, built once by
tests/conftest.py) loaded through the product's own ``load_model``; tests that alter the checkpoint
work on a copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from node.config import ModelSection
from node.triage.model import LoadedModel, load_model


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
