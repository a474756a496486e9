"""`triage-node profile tune`: a new file, never the original; it loads; it is calibrated only for
the weights and preprocessing it was tuned for."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.triage.profiles import NOT_CALIBRATED_TEXT, load_profile

REPO = Path(__file__).resolve().parents[2]
CXR = REPO / "config" / "profiles" / "cxr.toml"


def fake_metrics(tmp_path: Path, *, n_pos: int = 40, version: str | None = None) -> Path:
    """A metrics.json as `evaluate` writes it, for two findings of cxr."""
    profile = load_profile(CXR)

    def finding(threshold: float, band: list[float]) -> dict:
        return {
            "n_pos": n_pos,
            "n_neg": 200,
            "auroc": 0.81234567,
            "auroc_ci": [0.75, 0.86],
            "suggested": {
                "method": "target-sensitivity",
                "threshold": threshold,
                "indeterminate_band": band,
                "target_sensitivity": 0.95,
                "sensitivity": 0.95,
                "specificity": 0.4,
            },
        }

    block = {
        "n_studies": 240,
        "not_eligible": {"out-of-domain": 3},
        "findings": {
            "pneumothorax": finding(0.31234567, [0.29, 0.335]),
            "pleural_effusion": finding(0.7, [0.66, 0.74]),
        },
    }
    metrics = {
        "profile": "cxr",
        "profile_version": version or profile.version,
        "weights_sha256": "c" * 64,
        "preprocessing_version": "tn-pre-1",
        "target_sensitivity": 0.95,
        "n_studies": 240,
        "findings": block["findings"],
        "preprocessing": {"tn-pre-1": block},
    }
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    return path


def tune(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "node.toml"
    config.write_text(f'[triage]\nprofiles_dir = "{CXR.parent}"\n')
    return subprocess.run(
        [sys.executable, "-m", "node.cli", "profile", "tune", "--config", str(config), *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )


def test_tune_writes_a_new_calibrated_profile(tmp_path: Path) -> None:
    metrics = fake_metrics(tmp_path)
    original = CXR.read_bytes()
    out = tmp_path / "tuned" / "cxr.toml"
    proc = tune(tmp_path, "--evaluation", str(metrics), "--profile", "cxr", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert CXR.read_bytes() == original  # never edited in place
    tuned = load_profile(out)
    sha = hashlib.sha256(metrics.read_bytes()).hexdigest()
    ptx, pe = tuned.finding("pneumothorax"), tuned.finding("pleural_effusion")
    assert (ptx.threshold, ptx.indeterminate_band) == (0.3123, (0.29, 0.335))
    assert (pe.threshold, pe.indeterminate_band) == (0.7, (0.66, 0.74))
    assert tuned.finding("edema").threshold == 0.5  # not evaluated: untouched
    assert tuned.findings[0].absent_prompts == load_profile(CXR).findings[0].absent_prompts
    cal = tuned.calibration
    assert cal is not None and cal.evaluation_sha256 == sha and cal.cohort_size == 240
    assert cal.weights_sha256 == "c" * 64 and cal.target_sensitivity == 0.95
    assert dict(cal.findings)["pneumothorax"].auroc_ci == (0.75, 0.86)
    assert dict(cal.findings)["pneumothorax"].tuned and "edema" not in dict(cal.findings)
    assert "tuned: evaluation" in out.read_text() and "pneumothorax" in proc.stdout

    state = tuned.calibration_state("c" * 64)
    assert state.calibrated and sha[:16] in state.text and "240 studies" in state.text
    # the profile is calibrated, but a finding the evaluation did not tune still has a placeholder
    assert tuned.finding_calibration("pneumothorax", state) == ""
    edema = tuned.finding_calibration("edema", state)
    assert edema.startswith(NOT_CALIBRATED_TEXT) and sha[:16] in edema
    other = tuned.calibration_state("d" * 64)
    assert not other.calibrated and other.text.startswith(NOT_CALIBRATED_TEXT) and "other model weights" in other.text
    assert load_profile(CXR).calibration_state("c" * 64).text == NOT_CALIBRATED_TEXT


def test_tune_refuses_in_place_a_stale_evaluation_and_keeps_thin_findings(tmp_path: Path) -> None:
    proc = tune(tmp_path, "--evaluation", str(fake_metrics(tmp_path)), "--profile", "cxr", "--out", str(CXR))
    assert proc.returncode == 2 and "never edits a profile in place" in proc.stderr
    stale = fake_metrics(tmp_path, version="sha256:0000000000000000")
    proc = tune(tmp_path, "--evaluation", str(stale), "--profile", "cxr", "--out", str(tmp_path / "x.toml"))
    assert proc.returncode == 2 and "evaluate the file you tune" in proc.stderr
    thin = fake_metrics(tmp_path, n_pos=12)
    out = tmp_path / "thin.toml"
    # every evaluated finding too thin: nothing tuned, nothing written (no "calibrated" placeholders)
    proc = tune(tmp_path, "--evaluation", str(thin), "--profile", "cxr", "--out", str(out))
    assert proc.returncode == 2 and "tunes no finding" in proc.stderr, proc.stderr
    assert "too few positives to set a threshold (12 < 30)" in proc.stderr and not out.exists()
    # one finding thick enough: that one is tuned, the thin one keeps its values and is marked untuned
    mixed = json.loads(fake_metrics(tmp_path).read_text())
    mixed["preprocessing"]["tn-pre-1"]["findings"]["pleural_effusion"]["n_pos"] = 12
    (tmp_path / "metrics.json").write_text(json.dumps(mixed))
    proc = tune(tmp_path, "--evaluation", str(tmp_path / "metrics.json"), "--profile", "cxr", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (
        "pleural_effusion: old threshold and band kept: too few positives to set a threshold (12 < 30)" in proc.stderr
    )
    tuned = load_profile(out)
    assert tuned.finding("pleural_effusion").threshold == 0.5 and tuned.finding("pneumothorax").threshold == 0.3123
    cal = dict(tuned.calibration.findings)  # type: ignore[union-attr]
    assert cal["pneumothorax"].tuned and not cal["pleural_effusion"].tuned
    state = tuned.calibration_state("c" * 64)
    assert state.calibrated and tuned.finding_calibration("pleural_effusion", state).startswith(NOT_CALIBRATED_TEXT)


def test_calibration_table_is_checked(tmp_path: Path) -> None:
    from node.triage.profiles import ProfileError

    path = tmp_path / "cxr.toml"
    path.write_text(
        CXR.read_text() + '\n[calibration]\nevaluation_sha256 = "x"\ndate = "d"\ncohort_size = -1\n'
        'target_sensitivity = 0.9\nweights_sha256 = "w"\npreprocessing_version = "tn-pre-1"\n'
    )
    with pytest.raises(ProfileError, match="calibration.cohort_size"):
        load_profile(path)
