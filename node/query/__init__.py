"""Query/Retrieve over the index: C-FIND matching (match.py) shared by the DIMSE SCP and QIDO-RS."""

from node.query.match import (
    LEVELS,
    InvalidQuery,
    Match,
    find,
    find_identifier,
    instances_for_retrieve,
    response_dataset,
    to_dataset,
)

__all__ = [
    "LEVELS",
    "InvalidQuery",
    "Match",
    "find",
    "find_identifier",
    "instances_for_retrieve",
    "response_dataset",
    "to_dataset",
]
