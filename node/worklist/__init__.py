"""The reading worklist: one row per triaged study (table ``worklist_item``).

- ``priority``: the priority rule over time (rule 5) and the order's own priority.
- ``rows``: the row a result writes, a person's clear, the JSON of a row.
- ``states`` / ``ups``: the row as a DICOM Unified Procedure Step (UPS Pull, UPS-RS).
"""
