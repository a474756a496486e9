"""Quiet transformers while it loads or saves a checkpoint: no progress bars (they spam service
logs) and none of its warnings about its own defaults.

A module of its own so that the model loader (model.py) and the test-model builder
(tiny_model.py) share it without importing each other.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


class _DropDefaultConfigNoise(logging.Filter):
    """transformers 5 builds a default SiglipTextConfig (CLIP token ids 49406/49407) while loading
    and saving, and warns about its own defaults; the warning says nothing about our checkpoint."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "must be `None` or an integer within the vocabulary" not in record.getMessage()


_CONFIG_NOISE = _DropDefaultConfigNoise()


@contextmanager
def quiet_transformers(*, errors_only: bool = False) -> Iterator[None]:
    """No progress bars from transformers (they spam service logs); optionally errors only."""
    from transformers.utils import logging as tlog

    enabled = tlog.is_progress_bar_enabled()
    level = tlog.get_verbosity()
    config_logger = logging.getLogger("transformers.configuration_utils")
    config_logger.addFilter(_CONFIG_NOISE)
    tlog.disable_progress_bar()
    if errors_only:
        tlog.set_verbosity_error()
    try:
        yield
    finally:
        config_logger.removeFilter(_CONFIG_NOISE)
        if errors_only:
            tlog.set_verbosity(level)
        if enabled:
            tlog.enable_progress_bar()


__all__ = ["quiet_transformers"]
