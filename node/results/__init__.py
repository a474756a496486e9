"""Results: where a study's decision becomes what others see.

- ``contract``: the policy's decision as ``dicom_sr.TriageResult`` (pure, no I/O).
- ``write``: the SR built and stored like any instance, the worklist row, the outbox rows.
- ``outputs``: the summary card / PDF and which destination gets what.

Flow: triage -> results -> (store, worklist, forward outbox). Triage never imports results.
"""
