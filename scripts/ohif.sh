#!/usr/bin/env bash
# Fetch OHIF Viewer's built app (the npm package @ohif/app ships it in dist/) into a cache folder
# and print the dist path. Nothing is built: `npm pack` downloads the package tarball only
# (about 50 MB, no dependencies), which is then unpacked.
#
#   bash scripts/ohif.sh                 # -> .cache/ohif/3.13.2/dist
#   OHIF_VERSION=3.13.2 OHIF_CACHE=/some/dir bash scripts/ohif.sh
#
# Serve it against the node with scripts/ohif_serve.py (see README, "Where results show up").
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${OHIF_VERSION:-3.13.2}"
CACHE="${OHIF_CACHE:-$ROOT/.cache/ohif}"
DEST="$CACHE/$VERSION"

if [ ! -f "$DEST/dist/index.html" ]; then
  command -v npm >/dev/null 2>&1 || { echo "ohif.sh: npm is needed (apt-get install npm)" >&2; exit 1; }
  mkdir -p "$DEST"
  tmp="$(mktemp -d "$CACHE/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  (cd "$tmp" && npm pack --silent "@ohif/app@$VERSION" >/dev/null)
  tar -xzf "$tmp"/ohif-app-"$VERSION".tgz -C "$tmp"
  rm -rf "$DEST/dist"
  mv "$tmp/package/dist" "$DEST/dist"
fi
echo "$DEST/dist"
