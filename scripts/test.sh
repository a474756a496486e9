#!/usr/bin/env bash
# Run the test suite against a real, throw-away PostgreSQL.
#
#   bash scripts/test.sh              # = pytest -q
#   bash scripts/test.sh -k store -x  # any pytest arguments
#
# 1. installs the system tools the tests use (DCMTK, dicom3tools, PostgreSQL, Orthanc, Chromium) if missing;
# 2. installs the project into .venv (scripts/install.sh);
# 3. starts a private PostgreSQL on 127.0.0.1 (free port, trust auth, data in /tmp),
#    exports TRIAGE_TEST_POSTGRES_URL, and stops and deletes it on exit;
# 4. runs pytest and exits with its code.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ "$#" -eq 0 ]; then
  set -- -q
fi

# --- 1. system packages -------------------------------------------------------------
pg_bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    echo "$d"
  fi
}

missing=()
command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
[ -n "$(pg_bindir)" ] || missing+=(postgresql)
command -v Orthanc >/dev/null 2>&1 || missing+=(orthanc)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)  # console browser tests, evaluate report test
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      SUDO="sudo"
    else
      echo "test.sh: missing system packages (${missing[*]}) and not root, no sudo;" \
           "install: ${missing[*]}" >&2
    fi
  fi
  if [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; then
    echo "Installing system packages: ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

# --- 2. the project -----------------------------------------------------------------
bash "$ROOT/scripts/install.sh"

# --- 3. throw-away PostgreSQL -------------------------------------------------------
PGBIN="$(pg_bindir)"
if [ -z "$PGBIN" ]; then
  echo "test.sh: PostgreSQL server binaries not found (/usr/lib/postgresql/*/bin);" \
       "the suite must run against a real PostgreSQL" >&2
  exit 1
fi

PGTMP="$(mktemp -d /tmp/triage-test-pg.XXXXXX)"
PGDATA="$PGTMP/data"
PGLOG="$PGTMP/postgres.log"
AS_PG=()
if [ "$(id -u)" -eq 0 ]; then
  # PostgreSQL refuses to run as root: run it as the postgres user
  if ! id postgres >/dev/null 2>&1; then
    echo "test.sh: running as root but there is no 'postgres' user to run PostgreSQL" >&2
    rm -rf "$PGTMP"
    exit 1
  fi
  chown postgres: "$PGTMP"
  AS_PG=(runuser -u postgres --)
fi

pg_started=0
cleanup() {
  local rc=$?
  if [ "$pg_started" -eq 1 ]; then
    "${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1 || true
  fi
  rm -rf "$PGTMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

PGPORT="$("$ROOT/.venv/bin/python" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"

pg_fail() {
  echo "test.sh: FAILED to start the test PostgreSQL: $1" >&2
  [ -f "$PGLOG" ] && sed 's/^/  postgres.log: /' "$PGLOG" >&2
  exit 1
}

"${AS_PG[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --no-locale --no-sync \
  >"$PGTMP/initdb.log" 2>&1 || { cat "$PGTMP/initdb.log" >&2; pg_fail "initdb failed"; }

# Throw-away data: durability is off for speed; sockets stay inside the temp dir.
pg_started=1
"${AS_PG[@]}" "$PGBIN/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 start -o \
  "-c listen_addresses=127.0.0.1 -p $PGPORT -k $PGTMP -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100" \
  >/dev/null || pg_fail "pg_ctl start failed"

PG_URL="postgresql://postgres@127.0.0.1:$PGPORT"
"$PGBIN/psql" "$PG_URL/postgres" -v ON_ERROR_STOP=1 -qAtc 'CREATE DATABASE triage_test' >/dev/null \
  || pg_fail "could not create database triage_test"
[ "$("$PGBIN/psql" "$PG_URL/triage_test" -qAtc 'select 1')" = "1" ] \
  || pg_fail "select 1 on triage_test did not answer"

export TRIAGE_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$PGPORT/triage_test"
echo "PostgreSQL for tests: $TRIAGE_TEST_POSTGRES_URL ($("$PGBIN/postgres" --version))"

# --- 4. the tests -------------------------------------------------------------------
set +e
"$ROOT/.venv/bin/python" -m pytest "$@"
rc=$?
set -e
exit "$rc"
