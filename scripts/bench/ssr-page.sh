#!/usr/bin/env bash
# Load benchmark: authenticated server-rendered pages, release build, 64 connections, wrk.
#   scripts/bench/ssr-page.sh [runs=3] [seconds=20] [path=/ ...]
# Signed in as the demo tenant admin; `/` is the tenant dashboard, `/account` the account page.
# Several paths run against the same server, each path's runs back to back; the sign-in page
# (`/login`, no session, no data) runs too, as the control.
# Prints wrk's output per run and, per path, a summary line with the median requests/s and p99.
# Requests ask for compressed pages as Chromium does (SSR_ENCODING="" asks for none; before
# 2026-12-07 wrk asked for none and oha for br).
source "$(dirname "$0")/../lib.sh"
runs="${1:-3}"; secs="${2:-20}"; shift 2 2>/dev/null || shift $#
paths=("${@:-/}")
paths+=("/login")
encoding="${SSR_ENCODING-gzip, deflate, br, zstd}"
ensure_apt wrk curl python3
command -v oha >/dev/null || cargo install oha --locked
ensure_database
base_url="${DATABASE_URL%%\?*}"; base_url="${base_url%/*}"
db="concierge_bench_$(date +%s)"
psql "$base_url/postgres" -qc "CREATE DATABASE $db"
(cd "$ROOT" && cargo build -p server --release -q)
port=$((20000 + RANDOM % 20000))
(cd "$ROOT" && DATABASE_URL="$base_url/$db" CONCIERGE_LISTEN="127.0.0.1:$port" CONCIERGE_PUBLIC_URL="http://127.0.0.1:$port" \
  CONCIERGE_ADMIN_PASSWORD="bench-admin-password" CONCIERGE_DEMO=true RUST_LOG=warn exec \
  "$ROOT/target/release/concierge" >/tmp/concierge-bench.log 2>&1) &
server=$!
trap 'kill $server 2>/dev/null; psql "$base_url/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null' EXIT
for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/login" >/dev/null && break; sleep 0.2; done
jar=$(mktemp)
curl -fs -c "$jar" -H "Origin: http://127.0.0.1:$port" -d 'email=tenant-admin@demo.local&password=concierge-demo' \
  "http://127.0.0.1:$port/api/login" >/dev/null
cookie=$(awk '$6=="concierge"{print "concierge="$7}' "$jar")
[ -n "$cookie" ] || { echo "could not sign in" >&2; exit 1; }
to_ms() { case "$1" in *us) echo "${1%us}" | awk '{print $1/1000}';; *ms) echo "${1%ms}";; *s) echo "${1%s}" | awk '{print $1*1000}';; *) echo "$1";; esac; }
mid=$(( (runs + 1) / 2 ))
summary=()
for path in "${paths[@]}"; do
  if [ "$path" != /login ]; then
    # The page must be served to the signed-in user (the navigation offers "Sign out"), not the login form.
    curl -fs -H "Cookie: $cookie" "http://127.0.0.1:$port$path" | grep -q "Sign out" || { echo "$path is not the signed-in page" >&2; exit 1; }
  fi
  # The control is the sign-in form as a visitor gets it (with the cookie it is a redirect).
  session="Cookie: $cookie"
  [ "$path" = /login ] && session="Cookie: none=1"
  results=()
  for i in $(seq 1 "$runs"); do
    out=$(wrk -t1 -c64 -d"${secs}s" --latency -H "$session" -H "Accept: text/html" \
      ${encoding:+-H "Accept-Encoding: $encoding"} "http://127.0.0.1:$port$path")
    echo "$path run $i:"; echo "$out"
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    p99=$(echo "$out" | awk '$1=="99%"{print $2}')
    results+=("$rps $p99")
  done
  # Open-loop: a fixed 3,000 requests/s over 64 connections, latency corrected for
  # coordinated omission (oha, crates.io).
  fixed=()
  for i in $(seq 1 "$runs"); do
    json=$(oha -z "${secs}s" -c 64 -q 3000 --latency-correction --no-tui --output-format json \
      -H "$session" -H "Accept: text/html" -H "Accept-Encoding: ${encoding:-identity}" "http://127.0.0.1:$port$path")
    line=$(echo "$json" | python3 "$ROOT/scripts/bench/oha_summary.py")
    echo "$path oha fixed 3000/s run $i: requests/s p50_ms p99_ms codes = $line"
    fixed+=("$line")
  done
  rps_median=$(printf '%s\n' "${results[@]}" | awk '{print $1}' | sort -g | sed -n "${mid}p")
  p99_median=$(for r in "${results[@]}"; do to_ms "${r#* }"; done | sort -g | sed -n "${mid}p")
  f_rps=$(printf '%s\n' "${fixed[@]}" | awk '{print $1}' | sort -g | sed -n "${mid}p")
  f_p50=$(printf '%s\n' "${fixed[@]}" | awk '{print $2}' | sort -g | sed -n "${mid}p")
  f_p99=$(printf '%s\n' "${fixed[@]}" | awk '{print $3}' | sort -g | sed -n "${mid}p")
  summary+=("$path: closed loop median $rps_median req/s, p99 $p99_median ms; fixed 3000/s median $f_rps req/s served, p50 $f_p50 ms, p99 $f_p99 ms")
done
echo
echo "medians of $runs runs each:"
printf '  %s\n' "${summary[@]}"
