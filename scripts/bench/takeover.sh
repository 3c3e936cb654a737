#!/usr/bin/env bash
# Takeover after kill -9 (issue: scale-out). Three replicas (the release binary) share one
# database and a fleet of simulated hosts. Each round kills the replica holding the most
# hosts with SIGKILL, measures the time until every host has a live owner again, and starts
# a new replica in its place (then waits until it holds hosts again).
#   scripts/bench/takeover.sh [kills=10] [hosts=20]
# Prints each takeover and the p50 and max. Target: max ≤ 10 s.
source "$(dirname "$0")/../lib.sh"
kills="${1:-10}"; hosts="${2:-20}"
ensure_apt curl python3
bench_database
url="$bench_url"
fleet=$(mktemp -d)
logs=$(mktemp -d)
declare -A pid_of port_of
cleanup() {
  for p in "${pid_of[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  bench_drop_database
  rm -rf "$fleet"
}
trap cleanup EXIT

# Starts replica number $1; sets pid_of[$1] and port_of[$1] once it answers /healthz.
start_replica() {
  local n=$1 port=$((20000 + RANDOM % 20000))
  (cd "$ROOT" && DATABASE_URL="$url" CONCIERGE_LISTEN="127.0.0.1:$port" \
    CONCIERGE_PUBLIC_URL="http://127.0.0.1:$port" CONCIERGE_ADMIN_PASSWORD="bench-admin-password" \
    CONCIERGE_LOCAL_HOST=false CONCIERGE_SIMULATED_FLEETS_DIR="$fleet" CONCIERGE_DB_CONNECTIONS=6 \
    RUST_LOG=info,sqlx=warn exec "$ROOT/target/release/concierge" >"$logs/replica-$n.log" 2>&1) &
  pid_of[$n]=$!
  disown "${pid_of[$n]}"  # no "Killed" line from the shell for each kill
  port_of[$n]=$port
  for _ in $(seq 1 150); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null && return 0; sleep 0.2; done
  echo "replica $n did not start:"; tail -20 "$logs/replica-$n.log"; exit 1
}
replica_id() { curl -fs "http://127.0.0.1:${port_of[$1]}/healthz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["replica"])'; }
q() { psql "$url" -Atqc "$1"; }
# Hosts with a live owner: a valid lease held by a replica that is beating, not stopped,
# and not the one just killed (its last beat still looks fresh for a few seconds).
owned_by_live() {
  q "SELECT count(*) FROM host_leases l JOIN replicas r ON r.id = l.owner
     WHERE l.expires_at > now() AND r.stopped_at IS NULL AND r.heartbeat_at > now() - interval '6 seconds'
       AND r.id::text <> '${1:-none}'"
}

start_replica 1
start_replica 2
start_replica 3
for i in $(seq -w 1 "$hosts"); do
  cat >"$fleet/t$i.xml" <<EOF
<node>
  <cpu><nodes>1</nodes><sockets>2</sockets><cores>16</cores><threads>2</threads><active>64</active><mhz>2400</mhz><model>x86_64</model></cpu>
  <memory>268435456</memory>
</node>
EOF
  q "INSERT INTO hosts (name, uri, simulated) VALUES ('t$i', 'test://$fleet/t$i.xml', true)" >/dev/null
done
wait_all_owned() {
  for _ in $(seq 1 300); do [ "$(owned_by_live)" = "$hosts" ] && return 0; sleep 0.1; done
  echo "hosts not all owned: $(owned_by_live) of $hosts"; exit 1
}
wait_all_owned
next=4
times=()
for k in $(seq 1 "$kills"); do
  # The replica holding the most hosts.
  victim=""; victim_id=""; most=-1
  for n in "${!pid_of[@]}"; do
    id=$(replica_id "$n")
    held=$(q "SELECT count(*) FROM host_leases WHERE owner = '$id' AND expires_at > now()")
    if [ "$held" -gt "$most" ]; then most=$held; victim=$n; victim_id=$id; fi
  done
  t0=$(date +%s.%N)
  kill -9 "${pid_of[$victim]}"
  unset "pid_of[$victim]"
  # Every host owned by a live replica again (the victim's leases expire, the others claim).
  while [ "$(owned_by_live "$victim_id")" != "$hosts" ]; do sleep 0.05; done
  t1=$(date +%s.%N)
  took=$(python3 -c "print($t1 - $t0)")
  printf 'kill %2d: replica %s held %s hosts; all owned again after %.2f s\n' "$k" "$victim" "$most" "$took"
  times+=("$took")
  start_replica "$next"
  new_id=$(replica_id "$next")
  for _ in $(seq 1 200); do
    [ "$(q "SELECT count(*) FROM host_leases WHERE owner = '$new_id' AND expires_at > now()")" -gt 0 ] && break
    sleep 0.1
  done
  wait_all_owned
  next=$((next + 1))
done
printf '%s\n' "${times[@]}" | python3 -c '
import statistics, sys
t = sorted(float(x) for x in sys.stdin)
print(f"takeover after kill -9 over {len(t)} kills: p50 {statistics.median(t):.2f} s, max {max(t):.2f} s, min {min(t):.2f} s")'
