#!/usr/bin/env bash
# A simulated 3-host deployment on one Linux machine, in network namespaces:
#
#   host "db"   10.X.Y.10  PostgreSQL (the one shared index)
#   host "edge" 10.X.Y.11  HAProxy (TCP mode) :11112 -> receiver 1 :11113, receiver 2 :11114
#                          (two `triage-node serve` processes, roles receive + stability)
#   host "gpu"  10.X.Y.12  the triage worker (`triage-node serve`, role triage, tiny test model)
#   "modality"  10.X.Y.20  DCMTK storescu, LANES concurrent associations to the HAProxy address
#
# The hosts are joined by veth pairs on a bridge that lives in its own namespace: nothing is
# added to the machine's own network namespace, and no traffic leaves the machine. The storage
# path is one folder on this machine, standing in for the shared volume (NFS) of a real
# deployment. Each process has its own data dir and audit file, as on separate hosts.
#
# Instances are dealt round-robin to the lanes, so every study arrives over several
# associations and thus at both receivers. The script prints the ingest throughput, the time
# until every study has its SR, and the exactly-once check (one study row, one job done, exactly
# one SR per study; rows == files; every audit file verifies). Exit 0 only when all hold.
#
#   sudo bash bench/netns_cluster.sh                      # 20 studies x 10 images, 4 lanes
#   STUDIES=40 IMAGES=10 LANES=8 sudo -E bash bench/netns_cluster.sh
#   KEEP=1 ...  keeps the work folder (logs, configs) and prints where it is
#
# Needs root (ip netns), iproute2, haproxy, dcmtk, postgresql (installed with apt-get when
# missing) and the project's .venv (created by scripts/install.sh when missing).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STUDIES="${STUDIES:-20}"
IMAGES="${IMAGES:-10}"
LANES="${LANES:-4}"
SIZE="${SIZE:-256}"
KEEP="${KEEP:-0}"
AET=TRIAGE_NODE
CALLING=MODALITY1

[ "$(id -u)" -eq 0 ] || { echo "netns_cluster.sh: needs root (ip netns); run with sudo" >&2; exit 2; }

# ------------------------------------------------------------------ tools
pg_bindir() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
missing=()
command -v ip >/dev/null || missing+=(iproute2)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v storescu >/dev/null || missing+=(dcmtk)
[ -n "$(pg_bindir)" ] || missing+=(postgresql)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"
PGBIN="$(pg_bindir)"
[ -x "$ROOT/.venv/bin/triage-node" ] || bash "$ROOT/scripts/install.sh"
PY="$ROOT/.venv/bin/python"
NODE="$ROOT/.venv/bin/triage-node"

# ------------------------------------------------------------------ names, addresses, clean-up
TAG="tn$(( $$ % 100000 ))"
NET="10.$(( 100 + $$ % 100 )).$(( ($$ / 100) % 250 ))"
SW="${TAG}-sw"; DB="${TAG}-db"; EDGE="${TAG}-edge"; GPU="${TAG}-gpu"; MOD="${TAG}-mod"
DB_IP="$NET.10"; EDGE_IP="$NET.11"; GPU_IP="$NET.12"; MOD_IP="$NET.20"
WORK="$(mktemp -d -t netns-cluster.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
PG_STARTED=0

cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  if [ "$PG_STARTED" -eq 1 ]; then
    ip netns exec "$DB" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -m fast -w stop >/dev/null 2>&1
  fi
  for ns in "$MOD" "$GPU" "$EDGE" "$DB" "$SW"; do ip netns del "$ns" 2>/dev/null; done
  if [ "$KEEP" = "1" ]; then echo "work folder kept: $WORK"; else rm -rf "$WORK"; fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

# ------------------------------------------------------------------ the network
ip netns add "$SW"
ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
ip -n "$SW" link set lo up
for spec in "$DB:$DB_IP" "$EDGE:$EDGE_IP" "$GPU:$GPU_IP" "$MOD:$MOD_IP"; do
  ns="${spec%%:*}"; addr="${spec##*:}"; port="p${addr##*.}"
  ip netns add "$ns"
  ip -n "$SW" link add "$port" type veth peer name eth0 netns "$ns"
  ip -n "$SW" link set "$port" master br0 up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done
echo "hosts: db $DB_IP, edge $EDGE_IP (HAProxy + 2 receivers), gpu $GPU_IP (triage worker), modality $MOD_IP"

# ------------------------------------------------------------------ host db: PostgreSQL
mkdir -p "$WORK/pg"
chown postgres: "$WORK/pg"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -A trust -U postgres >/dev/null
echo "host all all $NET.0/24 trust" >> "$WORK/pg/data/pg_hba.conf"
ip netns exec "$DB" runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/postgres.log" -w \
  -o "-c listen_addresses=$DB_IP -p 5432 -c unix_socket_directories=$WORK/pg -c max_connections=200" start >/dev/null
PG_STARTED=1
psql_db() { ip netns exec "$DB" runuser -u postgres -- psql -h "$DB_IP" -U postgres -d triage -Atq -c "$1"; }
ip netns exec "$DB" runuser -u postgres -- psql -h "$DB_IP" -U postgres -Atq -c "CREATE DATABASE triage"
DB_URL="postgresql+psycopg://postgres@$DB_IP:5432/triage"

# ------------------------------------------------------------------ data, model, configs
"$PY" "$ROOT/bench/cluster_data.py" "$WORK/data" --studies "$STUDIES" --images "$IMAGES" --lanes "$LANES" --size "$SIZE"
"$PY" - "$WORK/tiny-model" <<'EOF'
import sys
from pathlib import Path
from node.triage.tiny_model import build_tiny_siglip
build_tiny_siglip(Path(sys.argv[1]), image_size=64, seed=0)
EOF
N_INST="$("$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['instances'])" "$WORK/data/manifest.json")"
BYTES="$(du -sb "$WORK/data" | cut -f1)"

node_config() {  # name host port roles
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/node.toml" <<EOF
[node]
data_dir = "$WORK/$1/data"
log_level = "warning"
roles = $4
[dicom]
ae_title = "$AET"
host = "$2"
port = $3
allowed_peers = ["$CALLING"]
[storage]
path = "$WORK/shared-storage"
min_free_bytes = 0
[database]
url = "$DB_URL"
[stability]
quiet_seconds = 2
tick_seconds = 0.5
[audit]
path = "$WORK/$1/data/audit.jsonl"
[model]
path = "$WORK/tiny-model"
device = "cpu"
offline = true
[triage]
profiles_dir = "$ROOT/config/profiles"
poll_seconds = 0.2
stale_job_seconds = 30
heartbeat_seconds = 5
[http]
enabled = false
EOF
}
node_config rx1 "$EDGE_IP" 11113 '["receive", "stability"]'
node_config rx2 "$EDGE_IP" 11114 '["receive", "stability"]'
node_config worker "$GPU_IP" 11112 '["triage"]'

cat > "$WORK/haproxy.cfg" <<EOF
global
  maxconn 512
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend dicom
  bind $EDGE_IP:11112
  default_backend receivers
backend receivers
  balance roundrobin
  server rx1 $EDGE_IP:11113
  server rx2 $EDGE_IP:11114
EOF

# ------------------------------------------------------------------ start the hosts' processes
start_node() {  # ns name
  (cd "$WORK/$2" && exec ip netns exec "$1" "$NODE" serve --config "$WORK/$2/node.toml" >"$WORK/$2/serve.log" 2>&1) &
  PIDS+=($!)
}
start_node "$EDGE" rx1
start_node "$EDGE" rx2
start_node "$GPU" worker
ip netns exec "$EDGE" "$HAPROXY" -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!)
for name in rx1 rx2 worker; do
  for _ in $(seq 1 600); do grep -q "Ctrl-C to stop" "$WORK/$name/serve.log" 2>/dev/null && break; sleep 0.2; done
  grep -q "Ctrl-C to stop" "$WORK/$name/serve.log" || { echo "$name did not start:"; tail -20 "$WORK/$name/serve.log"; exit 1; }
done
echo "started: 2 receivers behind HAProxy on $EDGE_IP:11112, triage worker on $GPU_IP"

# ------------------------------------------------------------------ send through HAProxy
t0="$(date +%s.%N)"
SENDERS=()
for i in $(seq 0 $(( LANES - 1 ))); do
  ip netns exec "$MOD" env TCP_NODELAY=1 storescu -aet "$CALLING" -aec "$AET" +sd +r "$EDGE_IP" 11112 \
    "$WORK/data/lane$i" >"$WORK/storescu$i.log" 2>&1 &
  SENDERS+=($!)
done
send_fail=0
for pid in "${SENDERS[@]}"; do wait "$pid" || send_fail=1; done
t1="$(date +%s.%N)"
[ "$send_fail" -eq 0 ] || { echo "storescu failed:"; tail -5 "$WORK"/storescu*.log; exit 1; }

# ------------------------------------------------------------------ wait for every SR
for _ in $(seq 1 1500); do
  done_jobs="$(psql_db "SELECT count(*) FROM triage_job WHERE state = 'done'")"
  [ "$done_jobs" -ge "$STUDIES" ] && break
  sleep 0.2
done
t2="$(date +%s.%N)"
sleep 3  # a second job for a study would show up within the quiet period + one tick

# ------------------------------------------------------------------ exactly once
fail=0
check() {  # label actual expected
  if [ "$2" = "$3" ]; then printf '  ok    %-58s %s\n' "$1" "$2"
  else printf '  FAIL  %-58s %s (expected %s)\n' "$1" "$2" "$3"; fail=1; fi
}
echo
echo "exactly-once check:"
check "studies in the index" "$(psql_db "SELECT count(*) FROM study")" "$STUDIES"
check "received instances indexed (SR excluded)" \
  "$(psql_db "SELECT count(*) FROM instance i JOIN series s ON i.series_pk = s.id WHERE s.modality <> 'SR'")" "$N_INST"
check "triage jobs (all states)" "$(psql_db "SELECT count(*) FROM triage_job")" "$STUDIES"
check "jobs done" "$(psql_db "SELECT count(*) FROM triage_job WHERE state = 'done'")" "$STUDIES"
check "jobs done by more than one attempt" "$(psql_db "SELECT count(*) FROM triage_job WHERE attempts <> 1")" "0"
check "studies with exactly one SR" "$(psql_db "SELECT count(*) FROM (SELECT st.id FROM study st JOIN series se
  ON se.study_pk = st.id AND se.modality = 'SR' JOIN instance i ON i.series_pk = se.id GROUP BY st.id
  HAVING count(*) = 1) x")" "$STUDIES"
check "worklist rows naming that SR" "$(psql_db "SELECT count(*) FROM worklist_item w JOIN instance i
  ON i.sop_instance_uid = w.sr_sop_instance_uid")" "$STUDIES"
check ".dcm files on the shared storage (instances + SRs)" \
  "$(find "$WORK/shared-storage" -name '*.dcm' -not -path '*/.incoming/*' | wc -l)" "$(( N_INST + STUDIES ))"
check "temp files left in .incoming" "$(find "$WORK/shared-storage/.incoming" -name '*.part' | wc -l)" "0"
split="$("$PY" - "$WORK/rx1/data/audit.jsonl" "$WORK/rx2/data/audit.jsonl" <<'EOF'
import json, sys
seen = []
for path in sys.argv[1:]:
    studies = set()
    for line in open(path):
        e = json.loads(line)
        if "stored (" in e.get("outcome_desc", ""):
            studies |= {o["id"] for o in e.get("objects", []) if o.get("type") == "study"}
    seen.append(studies)
print(len(seen[0] & seen[1]))
EOF
)"
check "studies that arrived at both receivers (split by HAProxy)" "$split" "$STUDIES"
verify_out="$(ip netns exec "$GPU" "$NODE" audit verify --config "$WORK/worker/node.toml" 2>&1 | tail -1)"
check "audit verify, every process's file" "$verify_out" "3 audit files checked, 0 with a problem"

# ------------------------------------------------------------------ figures
"$PY" - "$t0" "$t1" "$t2" "$N_INST" "$BYTES" "$STUDIES" "$LANES" <<'EOF'
import sys
t0, t1, t2 = map(float, sys.argv[1:4]); n, size, studies, lanes = map(int, sys.argv[4:8])
print()
print(f"| instances | MB | lanes | ingest s | inst/s | MB/s | ingest end -> last SR s | studies |")
print(f"|---|---|---|---|---|---|---|---|")
print(f"| {n} | {size/1e6:.1f} | {lanes} | {t1-t0:.2f} | {n/(t1-t0):.1f} | {size/1e6/(t1-t0):.2f} | {t2-t1:.2f} | {studies} |")
EOF
echo
if [ "$fail" -eq 0 ]; then echo "EXACTLY-ONCE: OK"; else echo "EXACTLY-ONCE: FAILED (KEEP=1 keeps the logs)"; fi
exit "$fail"
