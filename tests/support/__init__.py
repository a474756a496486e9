"""The one test harness of the suite (issue 8): every test folder builds on these modules instead of
keeping its own copy. Fixtures stay in the conftest.py files; they import from here.

- ``ports``    one free-port helper (and a "does it listen" probe)
- ``polling``  one polling helper, ``wait_until``
- ``ci``       one "skip locally, fail in CI" rule (``require_tools``, the ``needs_tools`` marker)
- ``config``   one config builder (a nested dict -> Settings, or a TOML file a subprocess reads)
- ``nodes``    one in-process node runner (behind the ``node_factory`` fixtures)
- ``serve``    one ``triage-node`` subprocess, ``ServeProcess`` (behind ``serve_factory``)
- ``model``    one tiny SigLIP builder (behind the session-scoped ``tiny_model_dir`` fixture)
- ``factory``  synthetic DICOM instances (behind ``dicom_factory``)
- the rest, what the tests of one area share: ``dimse`` (pynetdicom and DCMTK senders), ``files``
  (Part-10 files sent and kept), ``index`` (index rows, jobs, worklist, audit lines), ``orthanc``
  (Orthanc as the PACS, the outbox), ``qr`` and ``console`` (their session-scoped nodes), ``sr``
  (synthetic studies and SR checks), ``pixels`` (minimal image data sets)

The package is imported as ``tests.support`` (pyproject's ``pythonpath = ["."]``); no test touches sys.path.
"""
