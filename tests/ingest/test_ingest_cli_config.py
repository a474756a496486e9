"""The config contract and the `serve` process: bad configs fail at start-up naming the key (no
traceback), TRIAGE_NODE__SECTION__KEY overrides work, SIGTERM/SIGINT stop cleanly and audit it."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from node.config import ConfigError, load_settings
from node.dimse.scu import Destination, send
from tests.support.config import NODE_AE, write_toml
from tests.support.dimse import py_echo
from tests.support.index import audit_entries
from tests.support.serve import cli_command, env_name, node_env, run_cli


def data_env(tmp_path: Path, port: int) -> dict[str, object]:
    """Every path under tmp_path, given as environment overrides (so the TOML file is free)."""
    data = tmp_path / "data"
    return {
        "node.data_dir": str(data),
        "storage.path": str(data / "storage"),
        "database.url": f"sqlite:///{data / 'index.db'}",
        "audit.path": str(data / "audit.jsonl"),
        "dicom.host": "127.0.0.1",
        "dicom.port": port,
        "triage.enabled": False,
        "http.enabled": False,
    }


def serve_until_exit(
    tmp_path: Path, config_text: str, env: dict[str, object] | None = None, free_port: int = 0
) -> subprocess.CompletedProcess[str]:
    """Run `triage-node serve` (a real process) on a config that must be refused: it has to exit
    on its own, quickly."""
    config = tmp_path / "node.toml"
    config.write_text(config_text, encoding="utf-8")
    overrides = {k: v for k, v in data_env(tmp_path, free_port).items() if not _set_in(config_text, k)}
    overrides.update(env or {})
    return subprocess.run(
        cli_command("serve", "--config", str(config)),
        env=node_env(overrides),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _set_in(config_text: str, dotted: str) -> bool:
    """True when the TOML text sets ``section.key`` (our override must not hide the file's value)."""
    section, key = dotted.rsplit(".", 1)
    return f"[{section}]" in config_text and re.search(rf"^\s*{key}\s*=", config_text, re.M) is not None


@pytest.fixture
def main_in_process(tmp_path, monkeypatch, capsys):  # type: ignore[no-untyped-def]
    """``run(args, config_text, env)`` -> (exit code, stdout, stderr) of node.cli.main in this process.

    An exception escaping main() is the traceback an operator would see, so it fails the test.
    A config wrongly accepted would start serving: Node.serve_forever is replaced by a check.
    """
    from node import cli
    from node.service import Node

    def accepted(self) -> None:  # type: ignore[no-untyped-def]
        self.start()  # may still refuse (certificate, port): that must come out as a message
        self.stop()
        raise AssertionError("the configuration was accepted and the node started")

    monkeypatch.setattr(Node, "serve_forever", accepted)
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("TRIAGE_NODE__"):
            monkeypatch.delenv(name)

    def run(args: list[str], config_text: str | None = None, env: dict[str, object] | None = None, port: int = 0):  # type: ignore[no-untyped-def]
        config = tmp_path / "node.toml"
        if config_text is not None:
            config.write_text(config_text, encoding="utf-8")
        overrides = {k: v for k, v in data_env(tmp_path, port).items() if not _set_in(config_text or "", k)}
        overrides.update(env or {})
        for name, value in node_env(overrides).items():
            if name.startswith("TRIAGE_NODE__"):
                monkeypatch.setenv(name, value)
        capsys.readouterr()
        rc = cli.main([a.replace("{config}", str(config)) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


BAD_CONFIGS = [
    ("port_not_a_number", '[dicom]\nport = "abc"\n', ["dicom.port"]),
    ("port_out_of_range", "[dicom]\nport = 70000\n", ["dicom.port"]),
    ("unknown_key", '[dicom]\ncolour = "blue"\n', ["dicom.colour", "unknown key"]),
    ("unknown_section", "[nonsense]\nx = 1\n", ["nonsense", "unknown key"]),
    ("ae_title_too_long", '[dicom]\nallowed_peers = ["THIS_TITLE_IS_TOO_LONG"]\n', ["dicom.allowed_peers"]),
    ("database_url", '[database]\nurl = "mysql://db/x"\n', ["database.url"]),
    ("negative_quiet", "[stability]\nquiet_seconds = -1\n", ["stability.quiet_seconds"]),
    ("max_associations_zero", "[dicom]\nmax_associations = 0\n", ["dicom.max_associations"]),
    ("tls_without_files", "[dicom.tls]\nenabled = true\n", ["dicom.tls", "cert_file"]),
    (
        "tls_missing_file",
        '[dicom.tls]\nenabled = true\ncert_file = "missing.pem"\nkey_file = "missing.key"\n',
        ["dicom.tls", "cert_file", "missing.pem"],
    ),
    (
        "tls_not_a_certificate",
        '[dicom.tls]\nenabled = true\ncert_file = "junk.pem"\nkey_file = "junk.pem"\n',
        ["dicom.tls.cert_file"],
    ),
    ("not_toml", "this is = = not TOML\n", ["not valid TOML"]),
]


@pytest.mark.parametrize(("name", "text", "expected"), BAD_CONFIGS, ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_fails_at_start_naming_the_key(name, text, expected, tmp_path, free_port, main_in_process) -> None:
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    rc, _out, err = main_in_process(["serve", "--config", "{config}"], text, port=free_port)
    assert rc != 0
    for fragment in expected:
        assert fragment in err, err
    assert not (tmp_path / "data" / ".running").exists()


def test_bad_config_in_a_real_serve_process(tmp_path, free_port) -> None:
    """The same through the console script: exit code, message, no traceback."""
    result = serve_until_exit(tmp_path, '[dicom]\nport = "abc"\ncolour = "blue"\n', free_port=free_port)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert "dicom.port" in result.stderr and "dicom.colour: unknown key" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("dicom.max_associations", "abc", "dicom.max_associations"),
        ("dicom.nope", "1", "dicom.nope: unknown key"),
        ("storage.min_free_bytes", "-5", "storage.min_free_bytes"),
        ("dicom.tls.enabled", "maybe", "dicom.tls.enabled"),
    ],
)
def test_bad_environment_override_names_the_key(variable, value, expected, free_port, main_in_process) -> None:
    rc, _out, err = main_in_process(["serve", "--config", "{config}"], "", env={variable: value}, port=free_port)
    assert rc != 0
    assert expected in err, err
    # ... and names the variable that set it, the only place a newcomer can fix it
    assert f"set by environment variable TRIAGE_NODE__{variable.replace('.', '__').upper()}" in err, err


def test_missing_config_file_and_other_commands(tmp_path, main_in_process) -> None:
    rc, _out, err = main_in_process(["serve", "--config", str(tmp_path / "nowhere.toml")])
    assert rc != 0 and "does not exist" in err
    for args in (["status", "--json"], ["audit", "verify"]):
        rc, _out, err = main_in_process([*args, "--config", "{config}"], '[dicom]\nport = "abc"\n')
        assert rc != 0, args
        assert "dicom.port" in err


def test_port_in_use_fails_with_a_message(main_in_process) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rc, _out, err = main_in_process(["serve", "--config", "{config}"], "", port=taken.getsockname()[1])
    assert rc != 0
    assert "dicom.port" in err and "in use" in err


def test_environment_overrides_win_over_the_file(tmp_path, settings_dict, serve_factory, free_port) -> None:
    data = settings_dict(tmp_path)
    file_port = data["dicom"]["port"]
    node = serve_factory(
        data, env_overrides={"dicom.port": free_port, "dicom.allowed_peers": '["*"]', "dicom.ae_title": "ENV_NODE"}
    )
    node.start()
    assert f"listening as ENV_NODE on 127.0.0.1:{free_port}" in node.output()
    assert py_echo(free_port, calling_ae="WHOEVER", called_ae="ENV_NODE") == 0  # ["*"] from the environment
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", file_port)) != 0  # the file's port is not used
    assert node.terminate() == 0
    loaded = [
        e for e in audit_entries(Path(data["audit"]["path"])) if e["event_type"] and e["event_type"]["code"] == "110131"
    ]
    assert loaded and str(node.config) in loaded[0]["outcome_desc"]


def test_load_settings_environment_scheme(tmp_path) -> None:
    config = write_toml(
        tmp_path / "n.toml", {"dicom": {"port": 1234, "ae_title": "FILE_AE"}, "stability": {"quiet_seconds": 10}}
    )
    environ = {
        env_name("dicom.port"): "4321",
        "triage_node__stability__quiet_seconds": "2.5",  # any case
        env_name("dicom.tls.handshake_timeout_seconds"): "3",  # nested table
        env_name("dicom.allowed_peers"): '["A", "B"]',  # TOML literal
        env_name("audit.source_id"): "plain string, not TOML",
        "UNRELATED": "x",
    }
    s = load_settings(config, environ=environ)
    assert s.dicom.port == 4321 and s.dicom.ae_title == "FILE_AE"
    assert s.stability.quiet_seconds == 2.5
    assert s.dicom.tls.handshake_timeout_seconds == 3
    assert s.dicom.allowed_peers == ("A", "B")
    assert s.audit.source_id == "plain string, not TOML"
    with pytest.raises(ConfigError, match="dicom.port"):
        load_settings(config, environ={env_name("dicom.port"): "abc"})
    assert load_settings(config, environ={}).dicom.port == 1234


def test_sigterm_exits_zero_and_audits_application_stop(tmp_path, settings_dict, serve_factory, dicom_factory) -> None:
    data = settings_dict(tmp_path)
    node = serve_factory(data)
    node.start()
    results = send(
        dicom_factory.mr_small(4), Destination(NODE_AE, "127.0.0.1", data["dicom"]["port"]), calling_ae="PYSCU"
    )
    assert [r.status for r in results] == [0] * 4
    assert node.terminate(timeout=60) == 0
    assert "Traceback" not in node.output()
    entries = audit_entries(Path(data["audit"]["path"]))
    last = entries[-1]
    assert last["event_id"]["code"] == "110100"
    assert last["event_type"]["code"] == "110121" and last["event_type"]["meaning"] == "Application Stop"
    assert any(e["event_type"] and e["event_type"]["code"] == "110120" for e in entries)  # and its start
    assert not (Path(data["node"]["data_dir"]) / ".running").exists()

    # SIGINT (Ctrl-C) is a clean stop too
    node.start()
    os.kill(node.proc.pid, signal.SIGINT)  # type: ignore[union-attr]
    assert node.proc.wait(timeout=60) == 0  # type: ignore[union-attr]
    assert audit_entries(Path(data["audit"]["path"]))[-1]["event_type"]["code"] == "110121"
    result = run_cli("audit", "verify", "--config", str(node.config), env=node.env)
    assert result.returncode == 0, result.stderr
