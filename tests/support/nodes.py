"""The one in-process node runner: the ``node_factory`` fixtures and the session-scoped nodes of
tests/qr and tests/console start their nodes through it, so all of them are started, retried on a
taken port and stopped the same way."""

from __future__ import annotations

from typing import Any

from tests.support.config import NodeConfig
from tests.support.ports import free_port


class NodeRunner:
    """``start(settings_or_config)`` -> a started ``node.service.Node``; ``stop_all()`` stops every
    one (last started first). Also a context manager."""

    def __init__(self) -> None:
        from node import oplog

        oplog.configure("warning")  # operational log on stderr, warnings only (pytest captures it)
        self.nodes: list[Any] = []

    def start(self, settings: Any, attempts: int = 3) -> Any:
        """Start a node from ``Settings`` or a ``NodeConfig`` (its file is read as the CLI reads it).

        When the port picked for the settings was taken meanwhile by another process, pick another
        (only for ``Settings``: a config file's port is what its subprocess peers use too)."""
        from node.config import ConfigError
        from node.service import Node

        if isinstance(settings, NodeConfig):
            attempts, settings = 1, settings.settings()
        for attempt in range(attempts):
            node = Node(settings)
            try:
                node.start()
            except ConfigError as exc:
                node.audit.close()
                node.db.dispose()
                if "cannot listen" not in str(exc) or attempt == attempts - 1:
                    raise
                dicom = settings.dicom.model_copy(update={"port": free_port()})
                settings = settings.model_copy(update={"dicom": dicom})
                continue
            self.nodes.append(node)
            return node
        raise AssertionError("unreachable")

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.stop()  # idempotent
        self.nodes.clear()

    def __enter__(self) -> NodeRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()
