"""The weights hash of a checkpoint and where a hub checkpoint lies, without importing torch.

Why its own module: search, drift and probes ask "which embedding space is current" every few
seconds on nodes that may never load the model (receive-only, http-only roles); importing
node.triage.model for that loaded torch into every such process (+220 MiB RSS ten seconds after
start, found by the sustained-load run of RELIABILITY.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

log = logging.getLogger("node.triage.model")

#: Name of the JSON file (inside ``cache_dir``) that remembers weight hashes.
WEIGHTS_CACHE_FILE = "weights-sha256.json"

_CHUNK = 1 << 22  # 4 MiB reads when hashing


def _weight_files(folder: Path) -> list[Path]:
    """The files ``from_pretrained`` loads weights from: ``*.safetensors``, else ``*.bin``."""
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        files = sorted(p for p in folder.glob("*.bin") if p.is_file())
    return files


def _stat_key(files: list[Path]) -> str:
    entries = []
    for f in files:
        st = f.stat()  # follows hub-cache symlinks to the blob
        entries.append([f.name, str(f.resolve()), st.st_size, st.st_mtime_ns])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


_memo: dict[str, str] = {}
_memo_lock = threading.Lock()


def weights_sha256(folder: str | Path, cache_dir: str | Path | None = None) -> str:
    """SHA-256 (hex) of a checkpoint's weight files, read in name order as one stream.

    For a single-file checkpoint this equals ``sha256sum model.safetensors`` (and the hub's LFS
    oid). The result is cached, keyed by each file's name, resolved path, size and mtime: in
    memory, and in ``cache_dir/weights-sha256.json`` when ``cache_dir`` is given, so it is
    computed once per checkpoint, not at every start. Raises ``FileNotFoundError`` when the
    folder has no weight files.
    """
    folder = Path(folder)
    files = _weight_files(folder)
    if not files:
        raise FileNotFoundError(f"no *.safetensors or *.bin weight files in {folder}")
    key = _stat_key(files)
    cache_file = Path(cache_dir) / WEIGHTS_CACHE_FILE if cache_dir is not None else None
    cache: dict[str, Any] = {}
    if cache_file is not None and cache_file.is_file():
        try:
            cache = json.loads(cache_file.read_text(encoding="utf-8"))
            if not isinstance(cache, dict):
                cache = {}
        except (OSError, ValueError):
            cache = {}
        hit = cache.get(key)
        if isinstance(hit, dict) and isinstance(hit.get("sha256"), str):
            return hit["sha256"]

    with _memo_lock:
        value = _memo.get(key)
    if value is None:
        digest = hashlib.sha256()
        for f in files:
            with f.open("rb") as fh:
                while chunk := fh.read(_CHUNK):
                    digest.update(chunk)
        value = digest.hexdigest()
        with _memo_lock:
            _memo[key] = value

    if cache_file is not None:
        cache[key] = {"sha256": value, "folder": str(folder.resolve()), "files": [f.name for f in files]}
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{cache_file.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(cache, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, cache_file)
        except OSError as exc:  # a read-only data dir only costs a re-hash next time
            log.warning("cannot write weights hash cache %s: %s", cache_file, exc)
    return value


def _hub_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The local snapshot folder of a hub checkpoint that from_pretrained just loaded."""
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(repo_id, "config.json", revision=revision)
        if isinstance(hit, (str, os.PathLike)):
            return Path(hit).parent
    except Exception:
        pass
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:
        return None


__all__ = ["WEIGHTS_CACHE_FILE", "weights_sha256"]
