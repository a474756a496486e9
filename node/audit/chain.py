"""The hash chain shared by the writer and the verifier (one definition, so they cannot drift).

hash_n = SHA-256 of the canonical JSON of line n without its own "hash" key; each line
carries "prev_hash" = hash_{n-1}, so editing, deleting or reordering a line breaks the chain.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GENESIS_HASH = "0" * 64


def canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def entry_hash(entry: dict[str, Any]) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()
