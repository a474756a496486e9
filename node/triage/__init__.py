"""Triage: choose the images a profile accepts, turn their pixels into model input, score them.

Modules:

- ``profiles``: triage profiles (TOML files under ``config/profiles``), each versioned by the
  SHA-256 of its bytes.
- ``select``: which instances of a study a profile accepts, and why the others were skipped.
- ``preprocess``: DICOM pixels to the 448x448x3 uint8 input of MedSigLIP, every step recorded.
- ``model`` / ``policy`` / ``worker``: embedding, zero-shot scoring and the priority decision.
"""
