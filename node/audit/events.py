"""DICOM audit event identifiers (PS3.15 A.5, CID 400) and event type codes we emit."""

from __future__ import annotations

from enum import Enum


class EventCode(Enum):
    """(code, meaning) of the EventID; the value is what goes into the log line."""

    APPLICATION_ACTIVITY = ("110100", "Application Activity")
    INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
    EXPORT = ("110106", "Export")
    PROCEDURE_RECORD = ("110111", "Procedure Record")
    QUERY = ("110112", "Query")
    SECURITY_ALERT = ("110113", "Security Alert")
    USER_AUTHENTICATION = ("110114", "User Authentication")  # console logins (PS3.15 A.5.3.15)

    @property
    def code(self) -> str:
        return self.value[0]

    @property
    def meaning(self) -> str:
        return self.value[1]


# EventTypeCode values (DCM) used with the IDs above.
APPLICATION_START = ("110120", "Application Start")
APPLICATION_STOP = ("110121", "Application Stop")
NODE_AUTHENTICATION = ("110126", "Node Authentication")
SOFTWARE_CONFIGURATION = ("110131", "Software Configuration")
ACCESS_CONTROL_DECISION = ("110147", "Access Control Decision")

# Outcome indicators (RFC 3881 / PS3.15).
SUCCESS = 0
MINOR_FAILURE = 4
SERIOUS_FAILURE = 8
MAJOR_FAILURE = 12

# Participant role codes.
ROLE_SOURCE = ("110153", "Source Role ID")
ROLE_DESTINATION = ("110152", "Destination Role ID")
ROLE_APPLICATION = ("110150", "Application")
