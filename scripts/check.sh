#!/usr/bin/env bash
# The static checks, as CI runs them (.ci/run calls this before the tests):
#
#   bash scripts/check.sh         # lint, format, types, import contract; non-zero if any failed
#   bash scripts/check.sh --fix   # first let ruff fix what it can and format the tree, then check
#
# 1. ruff check            lint rules of [tool.ruff.lint] in pyproject.toml
# 2. ruff format --check   the formatter's layout, nothing rewritten
# 3. mypy                  node/ and dicom_sr/ ([tool.mypy]; strict for dicom_sr and node/store)
# 4. lint-imports          the import contract of [tool.importlinter] (the one-way flow of the parts)
# 5. check_import_cycles   no import cycle between any two modules of node/ and dicom_sr/
#
# Every check runs even when an earlier one failed, so one run lists everything to fix.
# The tools come from .venv (scripts/install.sh installs them with the test dependencies).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

FIX=0
for arg in "$@"; do
  case "$arg" in
    --fix) FIX=1 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "check.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

bash "$ROOT/scripts/install.sh" || exit 1
BIN="$ROOT/.venv/bin"

if [ "$FIX" -eq 1 ]; then
  "$BIN/ruff" check --fix --quiet . || true
  "$BIN/ruff" format --quiet .
fi

failed=()
check() {
  local name="$1"; shift
  echo "== $name"
  local start=$SECONDS
  if "$@"; then
    echo "== $name: ok ($((SECONDS - start)) s)"
  else
    echo "== $name: FAILED ($((SECONDS - start)) s)"
    failed+=("$name")
  fi
}

check "ruff check" "$BIN/ruff" check --output-format concise .
check "ruff format" "$BIN/ruff" format --check --output-format concise .
check "mypy" "$BIN/mypy"
check "import contract" "$BIN/lint-imports"
check "no import cycles" "$BIN/python" scripts/check_import_cycles.py

if [ "${#failed[@]}" -gt 0 ]; then
  echo "check.sh: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "check.sh: all checks passed"
