"""`triage-node profile tune`: a new profile file with the operating points an evaluation
suggested, and a ``[calibration]`` table saying where they came from.

The original file is never edited: the output goes to ``--out`` (which must be another file),
written with tomlkit so that the prompts, comments and layout of the original survive and a
``diff`` shows exactly what tuning changed. The result is parsed with the node's own strict
profile loader before it is written, so a tuned file always loads.

Findings with fewer than ``min_positives`` positives keep their old threshold and band (and
the command says so): a threshold set on a handful of cases is a guess. ``[calibration.findings]``
marks each evaluated finding ``tuned`` or not; the SR of a finding that was not tuned says "not
calibrated" beside its threshold. An evaluation that tunes no finding writes nothing.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import tomlkit

from node.config import Settings
from node.triage.profiles import ProfileError, load_profile, parse_profile

__all__ = ["TuneError", "TuneResult", "profile_path", "tune_profile"]


class TuneError(RuntimeError):
    """Tuning cannot proceed; one sentence for the user (exit 2)."""


@dataclass
class TuneResult:
    path: Path
    evaluation_sha256: str
    tuned: list[str] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (finding, why its old values were kept)


def profile_path(settings: Settings, name: str) -> Path:
    """The file in triage.profiles_dir that defines profile ``name``."""
    folder = settings.triage.profiles_path
    for path in sorted(folder.glob("*.toml")):
        try:
            if load_profile(path).name == name:
                return path
        except ProfileError:
            continue
    raise TuneError(f"no profile named {name} in {folder}")


def _floor4(x: float) -> float:
    return math.floor(x * 1e4 + 1e-9) / 1e4


def _ceil4(x: float) -> float:
    return math.ceil(x * 1e4 - 1e-9) / 1e4


def tune_profile(
    settings: Settings,
    evaluation: Path,
    profile: str,
    out: Path,
    *,
    source: Path | None = None,
    preprocessing: str | None = None,
    min_positives: int = 30,
) -> TuneResult:
    evaluation, out = Path(evaluation), Path(out)
    try:
        body = evaluation.read_bytes()
        metrics = json.loads(body)
    except (OSError, ValueError) as exc:
        raise TuneError(f"{evaluation}: cannot read metrics.json: {exc}") from None
    src = Path(source) if source is not None else profile_path(settings, profile)
    if out.resolve() == src.resolve():
        raise TuneError(f"--out {out} is the profile file itself; tuning never edits a profile in place")
    original = load_profile(src)
    if metrics.get("profile") != original.name:
        raise TuneError(f"{evaluation} evaluated profile {metrics.get('profile')!r}, not {original.name!r}")
    if metrics.get("profile_version") != original.version:
        raise TuneError(
            f"{evaluation} evaluated profile version {metrics.get('profile_version')}, but {src} is "
            f"{original.version}: evaluate the file you tune"
        )
    version = preprocessing or metrics.get("preprocessing_version")
    block = (metrics.get("preprocessing") or {}).get(version)
    if block is None:
        raise TuneError(
            f"{evaluation} has no results for preprocessing {version!r} "
            f"(has: {', '.join(metrics.get('preprocessing') or {})})"
        )
    sha = hashlib.sha256(body).hexdigest()
    result = TuneResult(out, sha)
    doc = tomlkit.parse(src.read_text(encoding="utf-8"))
    for item in doc["findings"]:
        key = str(item["key"])
        m = block["findings"].get(key)
        if m is None:
            result.kept.append((key, "not labelled in the evaluation"))
            continue
        s = m.get("suggested")
        if s is None:
            result.kept.append((key, "no suggestion (needs positives and negatives)"))
            continue
        if m["n_pos"] < min_positives:
            result.kept.append((key, f"too few positives to set a threshold ({m['n_pos']} < {min_positives})"))
            continue
        t = round(float(s["threshold"]), 4)
        low, high = _floor4(min(s["indeterminate_band"][0], t)), _ceil4(max(s["indeterminate_band"][1], t))
        note = f"tuned: evaluation {sha[:12]}, {s['method']}"
        item["threshold"] = tomlkit.item(t).comment(note)
        item["indeterminate_band"] = tomlkit.item([low, high]).comment(note)
        result.tuned.append(key)
    if not result.tuned:
        why = "; ".join(f"{key}: {reason}" for key, reason in result.kept if reason != "not labelled in the evaluation")
        raise TuneError(
            f"{evaluation} tunes no finding ({why or 'no finding of the profile is labelled'}); nothing written: "
            f"a profile whose thresholds are all placeholders stays uncalibrated"
        )
    if version != original.preprocessing.method or "method" in doc["preprocessing"]:
        doc["preprocessing"]["method"] = version
    if "calibration" in doc:
        del doc["calibration"]
    cal = tomlkit.table()
    cal.add(tomlkit.comment("Written by `triage-node profile tune`: where these operating points came from."))
    cal["evaluation_sha256"] = sha
    cal["date"] = datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    cal["cohort_size"] = int(block["n_studies"])
    cal["target_sensitivity"] = float(metrics["target_sensitivity"])
    cal["weights_sha256"] = str(metrics["weights_sha256"])
    cal["preprocessing_version"] = version
    findings = tomlkit.table(is_super_table=True)
    for key, m in block["findings"].items():
        row = tomlkit.table()
        if m.get("auroc") is not None:
            row["auroc"] = round(float(m["auroc"]), 6)
        if m.get("auroc_ci"):
            row["auroc_ci"] = [round(float(v), 6) for v in m["auroc_ci"]]
        row["n_pos"], row["n_neg"] = int(m["n_pos"]), int(m["n_neg"])
        row["tuned"] = key in result.tuned
        findings[key] = row
    cal["findings"] = findings
    doc["calibration"] = cal
    header = (
        f"# Tuned by `triage-node profile tune` from evaluation sha256:{sha} of {src.name}.\n"
        f"# Thresholds and bands marked 'tuned' come from that evaluation (see [calibration]); notes\n"
        f"# below that call them placeholders describe the untuned original.\n"
    )
    text = header + tomlkit.dumps(doc)
    try:
        parse_profile(text.encode("utf-8"), out)
    except ProfileError as exc:  # a bug here, never a broken file on disk
        raise TuneError(f"the tuned profile would not load: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return result
