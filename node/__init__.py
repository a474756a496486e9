"""triage-node: a DICOM node that keeps every study, triages it with MedSigLIP and answers in DICOM.

The sub-packages follow the flow of one study (see README / shared DESIGN):
``dimse`` (receive) -> ``store`` (durable files + index) -> ``stability`` (quiet period ->
job) -> ``triage`` (worker) -> results. ``audit`` and ``db`` are shared services; ``cli`` and
``service`` are the entry points.
"""

__version__ = "0.1.0"
