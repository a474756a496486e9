#!/usr/bin/env bash
# Install triage-node into ./.venv (idempotent; safe to run again).
#
#   bash scripts/install.sh            # runtime + test dependencies + the checks (ruff, mypy, import-linter)
#   bash scripts/install.sh --no-test  # runtime dependencies only
#
# pip runs with -qq: warnings are hidden, errors are shown.
# torch is installed first, pinned (torch==2.13.0), from the PyTorch CPU wheel
# index (TORCH_INDEX_URL): a plain "pip install torch" would pull the multi-GB
# CUDA build. pyproject.toml only asks torch>=2.4, so the pinned build
# satisfies it and pip keeps it.
set -euo pipefail

TORCH_VERSION="2.13.0"
EXTRAS="[test,dev]"
MODE="test"
for arg in "$@"; do
  case "$arg" in
    --no-test) EXTRAS=""; MODE="runtime" ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

VENV="$ROOT/.venv"
PY="$VENV/bin/python"

# 1. the virtual environment (Python >= 3.11)
if [ ! -x "$PY" ]; then
  BASE_PY=""
  for cand in python3.11 python3; do
    if command -v "$cand" >/dev/null 2>&1 \
       && "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      BASE_PY="$cand"; break
    fi
  done
  if [ -z "$BASE_PY" ]; then
    echo "install.sh: Python >= 3.11 not found (need python3.11 or python3)" >&2
    exit 1
  fi
  echo "Creating .venv with $("$BASE_PY" --version 2>&1)"
  "$BASE_PY" -m venv "$VENV"
  "$PY" -m pip install -qq --upgrade pip
fi

# 2. torch, pinned CPU build, before the project so pip does not pick a CUDA build
have_torch="$("$PY" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
try:
    print(m.version("torch").split("+")[0])
except m.PackageNotFoundError:
    pass
PY
)"
if [ "$have_torch" != "$TORCH_VERSION" ]; then
  # The PyTorch CPU wheel index, as docker/Dockerfile.cpu uses: a plain "pip install torch" on
  # Linux pulls the CUDA build (GBs). Where that index cannot be reached (an offline mirror, a
  # package proxy that only serves PyPI), fall back to the default index and say so.
  TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
  if "$PY" - "$TORCH_INDEX_URL" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=5).read(1)
PY
  then
    echo "Installing torch==$TORCH_VERSION (CPU build, from $TORCH_INDEX_URL)"
    "$PY" -m pip install -qq --index-url "$TORCH_INDEX_URL" "torch==$TORCH_VERSION"
  else
    echo "Installing torch==$TORCH_VERSION from the default index ($TORCH_INDEX_URL not reachable;" \
         "on Linux that may be the large CUDA build: set TORCH_INDEX_URL to a CPU wheel index)"
    "$PY" -m pip install -qq "torch==$TORCH_VERSION"
  fi
fi

# 3. the project itself (editable). Skipped when pyproject.toml has not changed since
#    the last successful install of the same kind and the packages still import.
STAMP="$VENV/.triage-node-install"
want="$MODE $(sha256sum pyproject.toml | cut -d' ' -f1)"
check='import node, dicom_sr'
[ "$MODE" = "test" ] && check="$check, pytest, httpx, dicomweb_client, playwright, mypy, importlinter"
if [ -f "$STAMP" ] && { [ "$(cat "$STAMP")" = "$want" ] \
     || { [ "$MODE" = "runtime" ] && [ "$(cat "$STAMP")" = "test ${want#* }" ]; }; } \
   && "$PY" -c "$check" >/dev/null 2>&1; then
  :
else
  echo "Installing triage-node (editable${EXTRAS:+, extras $EXTRAS})"
  "$PY" -m pip install -qq -e ".$EXTRAS"
  echo "$want" > "$STAMP"
fi
