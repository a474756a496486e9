"""UID validation: a UID names a file path, so it is checked before any path is built (rule 2)."""

from __future__ import annotations

import re

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LENIENT_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
MAX_UID_LENGTH = 64


def is_valid_uid(value: object) -> bool:
    """True when ``value`` is a DICOM UID safe to use as a path component.

    We accept leading zeros in components (``^[0-9]+(\\.[0-9]+)*$``), which PS3.5 forbids but
    real modalities emit; anything else (slashes, dots only, spaces, ``..``) is refused.
    """
    return isinstance(value, str) and 0 < len(value) <= MAX_UID_LENGTH and _LENIENT_UID_RE.fullmatch(value) is not None


def is_conformant_uid(value: str) -> bool:
    """Strict PS3.5 9.1 form (no leading zeros), used only for UIDs we generate."""
    return 0 < len(value) <= MAX_UID_LENGTH and _UID_RE.fullmatch(value) is not None
