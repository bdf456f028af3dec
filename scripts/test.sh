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

# The fuzz targets' build (instrumented, a workspace and target dir of its own) runs
# beside the tests: they mostly wait on servers and timers, so on two cores this
# costs the tests little and takes the build off the critical path.
fuzz_seconds="${FERRY_FUZZ_SECONDS:-20}"
fuzz_build=""
if [ "$fuzz_seconds" != 0 ]; then
    mkdir -p target
    (cd fuzz && nice -n 5 cargo fuzz build --dev --sanitizer none) >target/fuzz-build.log 2>&1 &
    fuzz_build=$!
fi

status=0
if cargo nextest --version >/dev/null 2>&1; then
    # Report every failing test, not just the first: CI runs are expensive.
    cargo nextest run --workspace --all-targets --no-fail-fast "$@" || status=$?
else
    cargo test --workspace --all-targets --no-fail-fast "$@" || status=$?
fi

# Then a short run of each fuzz target (docs/fuzzing.md), one after the other:
# a crash or a broken invariant fails the command. FERRY_FUZZ_SECONDS=0 skips it.
if [ -n "$fuzz_build" ]; then
    if ! wait "$fuzz_build"; then
        echo "fuzz: building the targets failed; the end of target/fuzz-build.log:" >&2
        tail -n 40 target/fuzz-build.log >&2
        status=1
    fi
    scripts/fuzz.sh --dev --time "$fuzz_seconds" || status=1
fi
exit "$status"
