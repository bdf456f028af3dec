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

status=0
if cargo nextest --version >/dev/null 2>&1; then
    # Report every failing test, not just the first: CI runs are expensive.
    cargo nextest run --workspace --all-targets --no-fail-fast "$@" || status=$?
else
    cargo test --workspace --all-targets --no-fail-fast "$@" || status=$?
fi

# Then a short run of each fuzz target (docs/fuzzing.md), one after the other:
# a crash or a broken invariant fails the command. FERRY_FUZZ_SECONDS=0 skips it.
fuzz_seconds="${FERRY_FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" != 0 ]; then
    scripts/fuzz.sh --dev --time "$fuzz_seconds" || status=1
fi
exit "$status"
