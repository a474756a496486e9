"""The one config builder: a nested dict of config sections, with every path under the test's own
folder and the node on a free loopback port. The same dict becomes ``Settings`` for an in-process
node (``make_settings``) or a TOML file for `triage-node` subprocesses (``write_toml``,
``node_config``), so both kinds of node are configured alike.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.ports import free_port

REPO = Path(__file__).resolve().parents[2]
PROFILES_DIR = REPO / "config" / "profiles"
NODE_AE = "TRIAGE_NODE"
ALLOWED_PEERS = ("STORESCU", "TRIAGE_SCU", "PYSCU")  # the ingest tests' senders
SCU_AE = "E2E_SCU"  # the one peer a triaging node (``node_config``) accepts


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, section by section (lists and scalars are replaced)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_dict(root: Path, **sections: Any) -> dict[str, Any]:
    """The nested config of a test node under ``root/data``; ``sections`` are merged into the
    defaults, e.g. ``config_dict(tmp, dicom={"allowed_peers": ["*"]}, storage={"min_free_bytes": 1})``.

    Defaults: triage off (no worker, no model load: the ingest tests watch jobs stay queued) and
    HTTP off; ``triage_sections`` turns triage on with a model.
    """
    data_dir = Path(root) / "data"
    base: dict[str, Any] = {
        "node": {"data_dir": str(data_dir), "log_level": "warning"},
        "dicom": {
            "ae_title": NODE_AE,
            "host": "127.0.0.1",
            "port": free_port(),
            "allowed_peers": list(ALLOWED_PEERS),
            "max_associations": 8,
            "acse_timeout_seconds": 10,
            "dimse_timeout_seconds": 30,
            "network_timeout_seconds": 30,
        },
        "storage": {"path": str(data_dir / "storage"), "min_free_bytes": 0},
        "database": {"url": f"sqlite:///{data_dir / 'index.db'}"},
        "stability": {"quiet_seconds": 1.0, "tick_seconds": 0.2},
        "audit": {"path": str(data_dir / "audit.jsonl")},
        "triage": {"enabled": False},
        "http": {"enabled": False, "host": "127.0.0.1", "port": 0},
    }
    return deep_merge(base, sections)


def triage_sections(model_path: Path | str | None, *, batch_size: int = 8) -> dict[str, Any]:
    """The sections that turn triage on with the tiny model at ``model_path`` (on the CPU, offline)
    and the shipped profiles; ``None`` leaves the model path unset (the hub id is used)."""
    model: dict[str, Any] = {"device": "cpu", "offline": True, "batch_size": batch_size}
    if model_path is not None:
        model["path"] = str(model_path)
    return {"model": model, "triage": {"enabled": True, "profiles_dir": str(PROFILES_DIR), "poll_seconds": 0.2}}


def make_settings(root: Path, **sections: Any) -> Any:
    """``Settings`` of ``config_dict(root, **sections)``."""
    from node.config import Settings

    return Settings.model_validate(config_dict(root, **sections))


# --------------------------------------------------------------------------- TOML
def _plain(value: Any) -> Any:
    """Paths as strings, None dropped (TOML has no null): what tomlkit can write."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    """``data`` (a config dict) as a TOML file, as an operator would write it."""
    import tomlkit

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(tomlkit.dumps(_plain(data)), encoding="utf-8")
    return path


def write_settings_toml(path: Path, settings: Any) -> Path:
    """The TOML equivalent of a ``Settings`` (for CLI subprocesses pointed at an in-process node)."""
    data = settings.model_dump(mode="json", exclude={"source"})
    return write_toml(path, {k: v for k, v in data.items() if isinstance(v, (dict, list))})


@dataclass
class NodeConfig:
    """A config file written under ``root``, read by in-process nodes and `triage-node` alike."""

    root: Path
    port: int
    config_path: Path
    data: dict[str, Any]

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def storage(self) -> Path:
        return self.data_dir / "storage"

    @property
    def db_url(self) -> str:
        return str(self.data["database"]["url"])

    @property
    def audit_path(self) -> Path:
        return Path(self.data["audit"]["path"])

    def settings(self) -> Any:
        """The Settings `triage-node --config` would load from this file (no environment overrides)."""
        from node.config import load_settings

        return load_settings(self.config_path, {})


def write_node_config(root: Path, **sections: Any) -> NodeConfig:
    """``root/node.toml`` of ``config_dict(root, **sections)``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    data = config_dict(root, **sections)
    return NodeConfig(root, int(data["dicom"]["port"]), write_toml(root / "node.toml", data), data)


def node_config(root: Path, model_path: Path | str | None, **sections: Any) -> NodeConfig:
    """A triaging node's config file: triage on with ``model_path``, the test SCU ``SCU_AE`` as its
    only peer; ``sections`` are merged last."""
    base = deep_merge(
        triage_sections(model_path),
        {"dicom": {"allowed_peers": [SCU_AE], "dimse_timeout_seconds": 60, "network_timeout_seconds": 60}},
    )
    return write_node_config(root, **deep_merge(base, sections))
