"""Quiet-period detection: a study with no new instance for quiet_seconds becomes a triage job."""
