#!/usr/bin/env bash
# Runs Ferry's benchmark suite (release build) and writes results/report.md and JSON.
#   scripts/bench.sh [--quick] [more ferry-bench flags]
# Installs what it needs first (InspIRCd, ZNC, PostgreSQL) via scripts/test-deps.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/test-deps.sh
cargo build --release -p ferry -p ferry-bench --bins
exec "${CARGO_TARGET_DIR:-target}/release/ferry-bench" all --out results "$@"
