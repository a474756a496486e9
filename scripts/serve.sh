#!/usr/bin/env bash
# Install (runtime dependencies only) and run the node.
#
#   bash scripts/serve.sh                     # uses config/node.toml
#   bash scripts/serve.sh /etc/triage/node.toml
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

bash "$ROOT/scripts/install.sh" --no-test
exec "$ROOT/.venv/bin/triage-node" serve --config "${1:-config/node.toml}"
