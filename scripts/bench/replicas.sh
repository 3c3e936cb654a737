#!/usr/bin/env bash
# Pages through a load balancer (issue: scale-out): HAProxy on loopback in front of one,
# then two replicas (release binary) on one database, signed in as the demo tenant admin,
# closed loop with wrk (64 connections) on each path, the replicas' and PostgreSQL's CPU
# read from /proc over each run.
#   scripts/bench/replicas.sh [runs=3] [seconds=10] [path=/account ...]
# Prints, per replica count and path, the median req/s and p99 and the CPU per request.
source "$(dirname "$0")/../lib.sh"
runs="${1:-3}"; secs="${2:-10}"; shift 2 2>/dev/null || shift $#
paths=("${@:-/account}")
ensure_apt wrk curl python3 haproxy
bench_database
url="$bench_url"
work=$(mktemp -d)
pids=()
lb=""
cleanup() {
  for p in "${pids[@]}" $lb; do kill "$p" 2>/dev/null || true; done
  bench_drop_database
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
front=$(free_port)
ports=("$(free_port)" "$(free_port)")
start_replica() {
  local i=$1 demo=$2
  (cd "$ROOT" && DATABASE_URL="$url" CONCIERGE_LISTEN="127.0.0.1:${ports[$i]}" \
    CONCIERGE_PUBLIC_URL="http://127.0.0.1:$front" CONCIERGE_ADMIN_PASSWORD="bench-admin-password" \
    CONCIERGE_DEMO="$demo" CONCIERGE_LOCAL_HOST=false RUST_LOG=warn \
    exec "$ROOT/target/release/concierge" >"$work/replica-$i.log" 2>&1) &
  pids+=($!)
  for _ in $(seq 1 150); do curl -fs "http://127.0.0.1:${ports[$i]}/healthz" >/dev/null && return 0; sleep 0.2; done
  echo "replica $i did not start"; tail -20 "$work/replica-$i.log"; exit 1
}
start_lb() {
  local n=$1
  [ -n "$lb" ] && kill "$lb" 2>/dev/null && sleep 0.5
  {
    printf 'global\n  maxconn 4000\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n'
    printf 'frontend portal\n  bind 127.0.0.1:%s\n  default_backend replicas\n' "$front"
    printf 'backend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n'
    for i in $(seq 0 $((n - 1))); do printf '  server r%s 127.0.0.1:%s check inter 1s\n' "$i" "${ports[$i]}"; done
  } >"$work/haproxy.cfg"
  haproxy -f "$work/haproxy.cfg" -db >"$work/haproxy.log" 2>&1 &
  lb=$!
  for _ in $(seq 1 50); do curl -fs "http://127.0.0.1:$front/healthz" >/dev/null && return 0; sleep 0.2; done
  echo "haproxy did not start"; cat "$work/haproxy.log"; exit 1
}
cpu_ticks() { # utime+stime of the given pids and of every postgres backend
  { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null; done
    for p in $(pgrep -x postgres); do awk '{print $14+$15}' "/proc/$p/stat" 2>/dev/null; done; } | paste -sd+ | bc
}
server_ticks() { for p in "$@"; do awk '{print $14+$15}' "/proc/$p/stat"; done | paste -sd+ | bc; }
hz=$(getconf CLK_TCK)
start_replica 0 true
start_lb 1
jar=$(mktemp)
curl -fs -c "$jar" -H "Origin: http://127.0.0.1:$front" -d 'email=tenant-admin@demo.local&password=concierge-demo' \
  "http://127.0.0.1:$front/api/login" >/dev/null
cookie=$(awk '$6=="concierge"{print "concierge="$7}' "$jar")
[ -n "$cookie" ] || { echo "could not sign in" >&2; exit 1; }
ensure_apt bc
mid=$(( (runs + 1) / 2 ))
summary=()
measure() {
  local n=$1
  for path in "${paths[@]}"; do
    curl -fs -H "Cookie: $cookie" "http://127.0.0.1:$front$path" | grep -q "Sign out" || { echo "$path is not the signed-in page" >&2; exit 1; }
    results=()
    for i in $(seq 1 "$runs"); do
      s0=$(server_ticks "${pids[@]}"); a0=$(cpu_ticks "${pids[@]}")
      out=$(wrk -t1 -c64 -d"${secs}s" --latency -H "Cookie: $cookie" -H "Accept: text/html" \
        -H "Accept-Encoding: gzip, deflate, br, zstd" "http://127.0.0.1:$front$path")
      s1=$(server_ticks "${pids[@]}"); a1=$(cpu_ticks "${pids[@]}")
      rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
      reqs=$(echo "$out" | awk '/requests in/{print $1}')
      p99=$(echo "$out" | awk '$1=="99%"{print $2}')
      errs=$(echo "$out" | awk '/Non-2xx|Socket errors/{print}' | tr '\n' ' ')
      srv=$(python3 -c "print(f'{($s1-$s0)/$hz*1000/$reqs:.2f}')")
      pg=$(python3 -c "print(f'{(($a1-$a0)-($s1-$s0))/$hz*1000/$reqs:.2f}')")
      echo "$n replica(s) $path run $i: $rps req/s, p99 $p99, server CPU $srv ms/req, PostgreSQL CPU $pg ms/req $errs"
      results+=("$rps $p99 $srv $pg")
    done
    med() { printf '%s\n' "${results[@]}" | awk -v c="$1" '{print $c}' | sort -g | sed -n "${mid}p"; }
    summary+=("$n replica(s) $path: median $(med 1) req/s, p99 $(med 2), server CPU $(med 3) ms/req, PostgreSQL CPU $(med 4) ms/req")
  done
}
measure 1
start_replica 1 false
start_lb 2
measure 2
echo
echo "medians of $runs runs each (through HAProxy, $(nproc) cores shared by wrk, HAProxy, the replicas and PostgreSQL):"
printf '  %s\n' "${summary[@]}"
