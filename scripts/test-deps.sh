#!/usr/bin/env bash
# Installs and starts what the test suite needs. Idempotent: it installs only
# what is missing (apt-get update only then) and starts PostgreSQL only if it
# is not accepting connections. Works without a TTY; uses sudo only when not
# root and sudo exists.
set -euo pipefail

# Debian packages the tests need, one per line. Add new ones here.
# Format: "package[:command]" — the command (if given) is checked on PATH
# (sbin included) before dpkg, so a hand-installed binary also counts.
PACKAGES=(
    "inspircd:inspircd"
    "ngircd:ngircd"
    "anope:anope"
    "postgresql-client:pg_isready"
    # Server binaries (initdb, postgres) for tests that run a PostgreSQL of their
    # own (tests/it/fixtures/pg.rs); Debian keeps them off PATH, so dpkg decides.
    "postgresql:initdb"
    "chromium:chromium"
    "nodejs:node"
    "npm:npm"
    "znc:znc"
    # A C++ compiler for libFuzzer (built by the fuzz targets' libfuzzer-sys).
    "g++:g++"
)

PG_HOST=127.0.0.1
PG_PORT=5432

export DEBIAN_FRONTEND=noninteractive
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

log() { printf 'test-deps: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n env DEBIAN_FRONTEND=noninteractive "$@"
    else
        log "need root (or sudo) to run: $*"
        return 1
    fi
}

is_installed() {
    local pkg="${1%%:*}" cmd=""
    [[ "$1" == *:* ]] && cmd="${1#*:}"
    if [ -n "$cmd" ] && command -v "$cmd" >/dev/null 2>&1; then
        return 0
    fi
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        as_root apt-get update -q
        APT_UPDATED=1
    fi
    log "installing: $*"
    as_root apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"
}

missing=()
for spec in "${PACKAGES[@]}"; do
    is_installed "$spec" || missing+=("${spec%%:*}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

# The Debian packages start system-wide daemons on install; the tests run their
# own instances on free ports, so the system ones are not needed (they also
# would hold port 6667). They are left alone if already running: we do not
# stop services we did not start.

pg_ready() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" >/dev/null 2>&1; }

start_postgres() {
    local v
    for v in $(ls /etc/postgresql 2>/dev/null); do
        log "starting PostgreSQL $v"
        as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
    done
}

if ! pg_ready; then
    if [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        apt_install postgresql
    fi
    start_postgres
    for _ in $(seq 1 60); do
        pg_ready && break
        sleep 0.5
    done
    if ! pg_ready; then
        log "PostgreSQL is not accepting connections on $PG_HOST:$PG_PORT"
        exit 1
    fi
fi
# The kernel-TLS upgrade test (tests/it/upgrade.rs, tls_connections_move_as_kernel_tls)
# needs a kernel with the `tls` ULP; where this one has none it runs in a guest:
# scripts/ktls-vm.sh installs QEMU and a Debian kernel (only what is missing) and
# builds the guest's initramfs once.
if ! grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null; then
    "$(dirname "$0")/ktls-vm.sh" install
fi
# cargo-fuzz, for the fuzz step of scripts/test.sh (scripts/fuzz.sh), from crates.io.
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "cargo install cargo-fuzz"
    cargo install cargo-fuzz --locked --version "^0.13"
fi

# The browser test's JavaScript dependencies (playwright-core only: it drives the
# Debian chromium above and never downloads a browser of its own).
BROWSER_DIR="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
if [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
    log "npm ci in tests/browser"
    (cd "$BROWSER_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi
log "ok"
