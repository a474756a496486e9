"""The audit trail: hash-chained JSON lines with DICOM audit event codes (PS3.15 A.5)."""

from node.audit.events import EventCode
from node.audit.log import AuditLog, AuditObject, Participant

__all__ = ["AuditLog", "AuditObject", "EventCode", "Participant"]
