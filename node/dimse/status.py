"""DIMSE status codes the Q/R and UPS handlers answer with (PS3.7 Annex C, PS3.4 C.4 and CC),
named so that a reader of a handler sees the meaning, not a hex number."""

from __future__ import annotations

SUCCESS = 0x0000
PENDING = 0xFF00  # one match of a C-FIND, one sub-operation of a C-GET / C-MOVE
CANCELED = 0xFE00  # the peer sent C-CANCEL

# General (PS3.7 C): N-GET / N-ACTION
PROCESSING_FAILURE = 0x0110
INVALID_ARGUMENT_VALUE = 0x0115  # e.g. an action information that cannot be decoded
NO_SUCH_ACTION = 0x0123  # N-ACTION type other than 1 (Change UPS State)

# Query/Retrieve (PS3.4 C.4.1.1.4, C.4.2.1.5, C.4.3.1.4)
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900
OUT_OF_RESOURCES_SUB_OPERATIONS = 0xA702  # a stored file could not be read for a sub-operation
FIND_UNABLE_TO_PROCESS = 0xC001
GET_UNABLE_TO_PROCESS = 0xC411
MOVE_UNABLE_TO_PROCESS = 0xC511

#: A C-FIND that ended as asked: completed, or canceled by the peer.
FIND_COMPLETED = (SUCCESS, CANCELED)

__all__ = [
    "CANCELED",
    "FIND_COMPLETED",
    "FIND_UNABLE_TO_PROCESS",
    "GET_UNABLE_TO_PROCESS",
    "IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS",
    "INVALID_ARGUMENT_VALUE",
    "MOVE_UNABLE_TO_PROCESS",
    "NO_SUCH_ACTION",
    "OUT_OF_RESOURCES_SUB_OPERATIONS",
    "PENDING",
    "PROCESSING_FAILURE",
    "SUCCESS",
]
