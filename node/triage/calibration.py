"""Whether each triage profile's operating points were calibrated on local data (issue 13).

A profile is "calibrated" only with a ``[calibration]`` table (written by ``triage-node profile
tune``) made for the weights the node runs and the preprocessing the profile uses; otherwise its
thresholds are placeholders, and serve's start-up log, ``/healthz``, the worklist and every SR say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from node.config import Settings
from node.triage.profiles import CalibrationState, TriageProfile

__all__ = ["calibration_states", "configured_weights_sha256", "startup_warnings"]


def calibration_states(profiles: Sequence[TriageProfile], weights_sha256: str | None) -> dict[str, CalibrationState]:
    """Profile name -> its calibration state for these weights (None: weights not known yet)."""
    return {p.name: p.calibration_state(weights_sha256) for p in profiles}


def configured_weights_sha256(settings: Settings) -> str | None:
    """The weights hash of a local ``model.path`` (cached; no model load), None for a hub id or no files."""
    if not settings.model.path:
        return None
    from node.triage.weights import weights_sha256

    try:
        return weights_sha256(Path(settings.model.path), Path(settings.node.data_dir) / "cache")
    except OSError:
        return None


def startup_warnings(settings: Settings, profiles: Sequence[TriageProfile]) -> list[str]:
    """One sentence per profile whose operating points are not calibrated for this node."""
    weights = configured_weights_sha256(settings)
    return [
        f"triage profile {name}: {state.text}"
        for name, state in calibration_states(profiles, weights).items()
        if not state.calibrated
    ]
