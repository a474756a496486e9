"""The newcomer's path (issue 8), as a new user meets it with `triage-node serve`:

- no model weights and no hub: one clear log line within seconds that names the remedies,
  not half a minute of retry lines; studies still get answered meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.config import node_config
from tests.support.polling import wait_until
from tests.support.ports import free_port
from tests.support.serve import cli_command, node_env


@pytest.mark.slow
def test_without_weights_one_clear_line_naming_the_remedies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serve_factory
) -> None:  # type: ignore[no-untyped-def]
    # A hub that refuses connections (loopback, nothing listening): what a machine without
    # network access sees, without depending on this machine's DNS.
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    cfg = node_config(
        tmp_path / "n", None, model={"id": "google/medsiglip-448", "offline": False, "retry_load_seconds": 3600}
    )
    serve = serve_factory(cfg)
    started = time.monotonic()
    serve.start()
    try:
        line = wait_until(
            lambda: next((json.loads(x) for x in serve.output().splitlines() if '"model_unavailable"' in x), None),
            40,
            "the model_unavailable line",
        )
        # ~5 s on an idle machine (the hub connect deadline); the bound leaves room for a loaded CI
        # machine while still refusing half a minute of hub retries on top of start-up
        assert time.monotonic() - started < 30
        detail = line["detail"]
        for remedy in ("HF_TOKEN", "model.path", "model.offline = true", "triage-node demo"):
            assert remedy in detail, detail
        log = serve.output()
        assert "Retrying" not in log and log.count('"model_unavailable"') == 1, log
    finally:
        serve.stop()  # now, not at teardown: the hub retries must not load the machine meanwhile


def test_send_and_echo_without_aet_explain_the_refused_calling_ae_title(tmp_path: Path, node_factory) -> None:  # type: ignore[no-untyped-def]
    from node.demo import synthetic_image

    cfg = node_config(tmp_path / "n", tmp_path / "no-model")  # allowed_peers: the tests' SCU only
    node_factory(cfg)
    image = synthetic_image(
        tmp_path / "a.dcm",
        modality="DX",
        sop_class="1.2.840.10008.5.1.4.1.1.1.1",
        view="PA",
        body_part="CHEST",
        age=50,
        study_uid="1.2.3.4",
        patient_id="NEW1",
        rows=32,
        cols=32,
    )
    to = f"TRIAGE_NODE@127.0.0.1:{cfg.port}"
    for args in (["send", str(image), "--to", to], ["echo", "--to", to]):
        out = subprocess.run([*cli_command(), *args], capture_output=True, text=True, timeout=60, env=node_env())
        assert out.returncode == 1, out
        assert "refused the calling AE title 'TRIAGE_SCU'" in out.stderr, out.stderr
        assert "allowed_peers" in out.stderr and "--aet" in out.stderr
