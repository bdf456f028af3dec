#!/usr/bin/env bash
# The project's one test command: installs/starts dependencies, then runs the
# whole suite. Extra arguments go to the test runner.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

scripts/test-deps.sh

# The benchmark smoke test runs the ferry-bench binary of the tools/ferry-bench
# package; test runners build only the test harnesses of other packages' binaries,
# so build every workspace binary first.
cargo build --workspace --bins

if cargo nextest --version >/dev/null 2>&1; then
    # Report every failing test, not just the first: CI runs are expensive.
    exec cargo nextest run --workspace --all-targets --no-fail-fast "$@"
else
    exec cargo test --workspace --all-targets --no-fail-fast "$@"
fi
