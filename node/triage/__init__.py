"""Triage: choose the images a profile accepts, turn their pixels into model input, score them.

Modules:

- ``profiles``: triage profiles (TOML files under ``config/profiles``), each versioned by the
  SHA-256 of its bytes.
- ``select``: which instances of a study a profile accepts, and why the others were skipped.
- ``preprocess``: DICOM pixels to the 448x448x3 uint8 input of MedSigLIP, every step recorded.
- ``model_api``: what the worker needs from a model (a Protocol); ``model``: MedSigLIP behind it.
- ``policy``: zero-shot scores and the priority decision (``StudyDecision``).
- ``worker``: the loop over queued jobs, in three stages: ``batch`` (prepare: read, select,
  preprocess), ``infer`` (one deadline-bounded model call per profile over the batch) and
  ``answer`` (the SR, the job's state, metrics and audit); ``model_slot`` loads the model.
"""
