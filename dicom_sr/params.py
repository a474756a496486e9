"""Encode :class:`AlgorithmInfo` as TID 4019 "Algorithm Parameters" and back.

TID 4019 has only name, version and free-text parameters, so everything else
rule 7 asks for (model id, revision, weights SHA-256, profile, preprocessing,
test-model flag) goes into parameters written as ``key=value``, one per item.
Values are split at the first ``=`` only, so they may contain ``=`` themselves.
"""

from __future__ import annotations

from collections.abc import Iterable

from .result import AlgorithmInfo

#: The parameter keys, in the order they are written.
PARAMETER_KEYS = (
    "model_id",
    "model_revision",
    "weights_sha256",
    "profile_name",
    "profile_version",
    "preprocessing_version",
    "preprocessing_description",
    "is_test_model",
)

#: Keys written only when the field is set (an SR written before they existed still reads).
OPTIONAL_KEYS = ("calibration", "probe_versions")


def encode_parameters(algorithm: AlgorithmInfo) -> list[str]:
    """One ``key=value`` string per field of ``algorithm`` beyond name and version."""
    out = []
    for key in PARAMETER_KEYS:
        value = getattr(algorithm, key)
        if isinstance(value, bool):
            value = "true" if value else "false"
        out.append(f"{key}={value}")
    out += [f"{key}={getattr(algorithm, key)}" for key in OPTIONAL_KEYS if getattr(algorithm, key)]
    return out


def decode_parameters(name: str, version: str, parameters: Iterable[str]) -> AlgorithmInfo:
    """Rebuild an :class:`AlgorithmInfo`; unknown keys are ignored, missing ones are an error."""
    values: dict[str, str] = {}
    for parameter in parameters:
        key, sep, value = parameter.partition("=")
        if sep and (key in PARAMETER_KEYS or key in OPTIONAL_KEYS):
            values[key] = value
    missing = [key for key in PARAMETER_KEYS if key not in values]  # optional keys may be absent
    if missing:
        raise ValueError(f"algorithm parameters lack {', '.join(missing)}")
    flag = values.pop("is_test_model")
    if flag not in ("true", "false"):
        raise ValueError(f"algorithm parameter is_test_model must be true or false, got {flag!r}")
    return AlgorithmInfo(name=name, version=version, is_test_model=flag == "true", **values)
