"""Shared fixtures for the whole suite. They are thin: what they build comes from tests/support/
(one of each: config builder, in-process node runner, `triage-node serve` subprocess, tiny model,
free port, polling helper, and the "skip locally, fail in CI" rule).

Everything a test writes lives under its ``tmp_path``; nodes listen on 127.0.0.1 only.

Fixtures (names are what tests request):
  free_port            a TCP port free on 127.0.0.1 right now
  settings_dict        settings_dict(tmp_path, **sections) -> the nested config dict
  make_settings        make_settings(tmp_path, **sections) -> node.config.Settings
  node_factory         node_factory(settings | NodeConfig) -> started Node, stopped at teardown
  module_node_factory  the same for module-scoped fixtures (nodes shared by a module's tests)
  running_node         a started Node with make_settings(tmp_path) defaults
  serve_factory        serve_factory(config dict | NodeConfig, env_overrides=None, name=) -> ServeProcess
  tiny_model_dir       the tiny random SigLIP checkpoint, built once per session (read-only)
  orthanc_factory      orthanc_factory(name=) -> an Orthanc (not started), stopped at teardown
  require_tools        require_tools("storescu", ...): skip locally, fail under CI=true
  postgres_url         a fresh, uniquely named PostgreSQL database (dropped at teardown)
  db_url               parametrised: the SQLite default and (marked postgres) a fresh PostgreSQL one
  dicom_factory        DicomFactory writing synthetic Part-10 files under tmp_path/"src"
  session_dicom_factory  the same, shared by a session (read-only by convention)

Marker: ``needs_tools("storescu", ...)`` (tests.support.ci.needs_tools) applies require_tools.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ci
from tests.support.config import NodeConfig, config_dict, make_settings, write_toml
from tests.support.factory import DicomFactory
from tests.support.model import build_test_model
from tests.support.nodes import NodeRunner
from tests.support.orthanc import Orthanc
from tests.support.ports import free_port as pick_free_port
from tests.support.serve import ServeProcess, node_env


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(ci.MARKER):
        ci.require_tools(*marker.args)


# --------------------------------------------------------------------------- ports and settings
@pytest.fixture
def free_port() -> int:
    return pick_free_port()


@pytest.fixture(name="settings_dict")
def settings_dict_fixture() -> Callable[..., dict[str, Any]]:
    return config_dict


@pytest.fixture(name="make_settings")
def make_settings_fixture() -> Callable[..., Any]:
    return make_settings


@pytest.fixture(scope="session")
def require_tools() -> Callable[..., None]:
    return ci.require_tools


# --------------------------------------------------------------------------- nodes
@pytest.fixture
def node_factory() -> Iterator[Callable[..., Any]]:
    """``node_factory(settings)`` starts a Node in this process; all are stopped at teardown."""
    with NodeRunner() as runner:
        yield runner.start


@pytest.fixture(scope="module")
def module_node_factory() -> Iterator[Callable[..., Any]]:
    """``node_factory`` for module-scoped fixtures: the nodes are stopped after the module."""
    with NodeRunner() as runner:
        yield runner.start


@pytest.fixture
def running_node(tmp_path: Path, node_factory: Callable[..., Any]) -> Any:
    return node_factory(make_settings(tmp_path))


@pytest.fixture
def serve_factory(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """``serve_factory(config, env_overrides=None, name="serve")`` -> a (not yet started) ServeProcess.

    ``config`` is a config dict (written as TOML under tmp_path) or a NodeConfig (its file is used,
    the process runs in its folder); ``env_overrides`` ({"dicom.port": 1234}) become TRIAGE_NODE__*
    variables. Every process still running at teardown is stopped (SIGTERM, then SIGKILL).
    """
    made: list[ServeProcess] = []

    def make(
        config: dict[str, Any] | NodeConfig, env_overrides: dict[str, Any] | None = None, name: str = "serve"
    ) -> ServeProcess:
        if isinstance(config, NodeConfig):
            path, workdir = config.config_path, config.root
        else:
            path, workdir = write_toml(tmp_path / f"{name}.toml", config), tmp_path
        made.append(ServeProcess(path, workdir, env=node_env(env_overrides), name=name))
        return made[-1]

    yield make
    for proc in made:
        proc.stop(timeout=10)


# --------------------------------------------------------------------------- model and peers
@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random SigLIP checkpoint folder, built once per session and shared by every folder
    (read-only by convention: copy it before changing it)."""
    return build_test_model(tmp_path_factory.mktemp("tiny-siglip"))


@pytest.fixture
def orthanc_factory(tmp_path: Path) -> Iterator[Callable[..., Orthanc]]:
    made: list[Orthanc] = []

    def make(name: str = "orthanc") -> Orthanc:
        made.append(Orthanc(tmp_path / name))
        return made[-1]

    yield make
    for o in made:
        o.stop()


# --------------------------------------------------------------------------- PostgreSQL
@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, from TRIAGE_TEST_POSTGRES_URL.

    Missing URL: skip locally, fail under CI=true (the suite must really run against PostgreSQL).
    """
    base = os.environ.get("TRIAGE_TEST_POSTGRES_URL", "").strip()
    if not base:
        ci.skip_or_fail("TRIAGE_TEST_POSTGRES_URL is not set (run the suite through scripts/test.sh)")
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(base)
    admin = url.set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"triage_t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url.set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Database URL for tests run against both index back-ends."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'index.db'}"
    return str(request.getfixturevalue("postgres_url"))


# --------------------------------------------------------------------------- synthetic DICOM
@pytest.fixture
def dicom_factory(tmp_path: Path) -> DicomFactory:
    return DicomFactory(tmp_path / "src")


@pytest.fixture(scope="session")
def session_dicom_factory(tmp_path_factory: pytest.TempPathFactory) -> DicomFactory:
    """For data shared by several tests (read-only by convention)."""
    return DicomFactory(tmp_path_factory.mktemp("shared-src"), seed=99)
