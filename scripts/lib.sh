# Shared helpers for the project's scripts: install what is missing, idempotently, and
# start a private PostgreSQL when DATABASE_URL is unset. Source it; do not run it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WASM_BINDGEN_VERSION="0.2.130"
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

APT_UPDATED=""
ensure_apt() {
  local missing=()
  for p in "$@"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing Debian packages: ${missing[*]}"
  if [ -z "$APT_UPDATED" ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_rust() {
  command -v cargo >/dev/null || { echo "Rust (cargo) is required: https://rustup.rs" >&2; exit 1; }
  if ! rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
    say "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
  fi
  if ! wasm-bindgen --version 2>/dev/null | grep -q " $WASM_BINDGEN_VERSION"; then
    say "installing wasm-bindgen-cli $WASM_BINDGEN_VERSION (once, a few minutes)"
    # Not --locked: its lockfile pins a crate version the registry no longer serves.
    cargo install wasm-bindgen-cli --version "$WASM_BINDGEN_VERSION" --force
  fi
}

pg_bin() {
  local v
  v=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -1)
  echo "/usr/lib/postgresql/$v/bin"
}

# Runs a command as the postgres user when we are root (initdb refuses root), from / so that
# a working folder that user cannot enter (a clone under /root) does not stop it.
as_pg() { if [ "$(id -u)" = 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi; }

# Where the private cluster lives: .data/ in the checkout, unless we are root and the postgres
# user cannot reach the checkout (a clone under /root, or any folder of mode 0700 on the way):
# then a folder named after the checkout in the postgres user's home.
pg_home() {
  if [ "$(id -u)" != 0 ] || runuser -u postgres -- test -x "$ROOT/." 2>/dev/null; then
    echo "$ROOT/.data"
  else
    local home
    home=$(getent passwd postgres | cut -d: -f6)
    echo "${home:-/var/lib/postgresql}/concierge-$(printf '%s' "$ROOT" | sha256sum | cut -c1-12)"
  fi
}

# Exports DATABASE_URL: the given one, or a private cluster under .data/ started on demand.
ensure_database() {
  if [ -n "${DATABASE_URL:-}" ]; then
    return 0
  fi
  ensure_apt postgresql
  local bin home data run
  bin="$(pg_bin)"
  home="$(pg_home)"
  data="$home/pg"
  run="$home/pg-run"
  mkdir -p "$ROOT/.data" "$home" "$run"
  [ "$(id -u)" = 0 ] && [ "$home" != "$ROOT/.data" ] && chown postgres:postgres "$home"
  if [ ! -f "$data/PG_VERSION" ]; then
    say "creating a private PostgreSQL cluster in $data"
    mkdir -p "$data"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$data" "$run"
    as_pg "$bin/initdb" -D "$data" -U postgres -A trust -E UTF8 >/dev/null
  fi
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$run"
  # The cluster keeps the port it first got; another checkout's cluster may hold 55432.
  if [ -f "$ROOT/.data/pg-port" ]; then
    PG_PORT=$(cat "$ROOT/.data/pg-port")
  else
    PG_PORT="${CONCIERGE_PG_PORT:-55432}"
    while (exec 3<>"/dev/tcp/127.0.0.1/$PG_PORT") 2>/dev/null; do PG_PORT=$((PG_PORT + 1)); done
    echo "$PG_PORT" >"$ROOT/.data/pg-port"
  fi
  if ! as_pg "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    say "starting PostgreSQL on 127.0.0.1:$PG_PORT"
    as_pg "$bin/pg_ctl" -D "$data" -l "$run/postgres.log" -w \
      -o "-p $PG_PORT -k $run -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  fi
  export DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/concierge"
  psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='concierge'" postgres | grep -q 1 ||
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE concierge" postgres
}

# Builds the server binary and the site (WASM bundle, CSS, public files) into target/site.
# $1: the server's profile, "release" or "debug"; $2: the bundle's (default: the same).
# Bundle files are named after a hash of their content (concierge-HASH.js, _bg.wasm, .css),
# so browsers may cache them for good; pkg/concierge.name tells the server the name. A
# release bundle loses the WASM name section and is precompressed (brotli, gzip) for the
# server to send as they are.
build_site() {
  local profile="$1" bundle="${2:-$1}" cargo_profile wasm_profile
  if [ "$profile" = release ]; then cargo_profile=(--release); else cargo_profile=(); fi
  if [ "$bundle" = release ]; then wasm_profile=wasm-release; else wasm_profile=debug; fi
  say "building the browser bundle ($bundle)"
  local target="${CARGO_TARGET_DIR:-$ROOT/target}"
  local wasm_args=(-p app --lib --target wasm32-unknown-unknown --no-default-features --features hydrate --target-dir "$target/front")
  if [ "$bundle" = release ]; then wasm_args+=(--profile wasm-release); fi
  # erase_components: Leptos returns every component as AnyView instead of its own nested
  # type, which keeps the bundle's code from multiplying with each page (docs/benchmarks.md).
  (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} --cfg erase_components" cargo build "${wasm_args[@]}")
  local input="$target/front/wasm32-unknown-unknown/$wasm_profile/app.wasm"
  local pkg="$ROOT/target/site/pkg" name
  name="concierge-$(cat "$input" "$ROOT/style/main.css" | sha256sum | cut -c1-16)"
  mkdir -p "$pkg"
  if [ ! -f "$pkg/${name}_bg.wasm" ]; then
    rm -f "$pkg"/concierge*
    local strip=()
    [ "$bundle" = release ] && strip=(--remove-name-section --remove-producers-section)
    wasm-bindgen --target web --no-typescript --out-name "$name" "${strip[@]}" --out-dir "$pkg" "$input"
    cp "$ROOT/style/main.css" "$pkg/$name.css"
    # No wasm-opt: Debian's (binaryen 108) breaks wasm-bindgen's externref table, and its -Oz
    # output compressed worse than rustc's opt-level "z" alone (docs/benchmarks.md).
    if [ "$bundle" = release ]; then
      ensure_apt brotli
      for f in "$pkg/${name}_bg.wasm" "$pkg/$name.js" "$pkg/$name.css"; do
        brotli -f -k -q 11 "$f"
        gzip -f -k -9 "$f"
      done
    fi
  fi
  echo "$name" >"$pkg/concierge.name"
  cp -r "$ROOT/public/." "$ROOT/target/site/"
  # The consoles' browser libraries (app/js/package.json, locked): xterm.js and noVNC.
  local js="$ROOT/app/js" vendor="$ROOT/target/site/vendor"
  if [ ! -d "$js/node_modules/@xterm/xterm" ] || [ ! -d "$js/node_modules/@novnc/novnc" ]; then
    command -v npm >/dev/null || ensure_apt npm
    say "installing the consoles' browser libraries (xterm.js, noVNC)"
    (cd "$js" && npm ci --no-audit --no-fund --silent)
  fi
  rm -rf "$vendor" && mkdir -p "$vendor/xterm" "$vendor/novnc"
  cp "$js/node_modules/@xterm/xterm/lib/xterm.js" "$js/node_modules/@xterm/xterm/css/xterm.css" "$vendor/xterm/"
  cp -r "$js/node_modules/@novnc/novnc/core" "$js/node_modules/@novnc/novnc/vendor" "$vendor/novnc/"
  say "building the server ($profile)"
  # The same cfg as the bundle: server-rendered markup must be what the bundle hydrates.
  (cd "$ROOT" && RUSTFLAGS="${RUSTFLAGS:-} --cfg erase_components" cargo build -p server "${cargo_profile[@]}")
}

# A scratch database for a benchmark on DATABASE_URL's server (the private cluster when it is
# unset), and the release server built: sets bench_base (the server's URL without a
# database) and bench_url; `bench_drop_database` removes it.
bench_database() {
  ensure_database
  bench_base="${DATABASE_URL%%\?*}"; bench_base="${bench_base%/*}"
  bench_db="concierge_bench_$(date +%s)_$$"
  bench_url="$bench_base/$bench_db"
  psql "$bench_base/postgres" -qc "CREATE DATABASE $bench_db"
  (cd "$ROOT" && cargo build -p server --release -q)
}
bench_drop_database() {
  psql "$bench_base/postgres" -qc "DROP DATABASE IF EXISTS $bench_db WITH (FORCE)" >/dev/null
}
