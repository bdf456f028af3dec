#!/usr/bin/env bash
# Runs Ferry's fuzz targets (fuzz/, cargo-fuzz + libFuzzer; see docs/fuzzing.md).
#
#   scripts/fuzz.sh --time 20 [TARGET...]     each target for 20 s (scripts/test.sh)
#   scripts/fuzz.sh --runs 10000000 [TARGET...]   each target for 10 M executions
#   scripts/fuzz.sh --dev --time 20           the same with an unoptimised build (the
#                                             short run of scripts/test.sh: it builds in a
#                                             third of the time; the long run wants --release)
#
# Targets: codec message registration ws_command (default: all, one after the other).
# Each run starts from the seeds in fuzz/seeds/TARGET and grows the working corpus
# fuzz/corpus/TARGET (not in git). A crash, a failed invariant, a hang (> 25 s on one
# input) or an input using more than 2 GiB fails the script; the input is saved under
# fuzz/artifacts/TARGET/ and the command to reproduce it is printed.
#
# Stable toolchain: `--sanitizer none` (AddressSanitizer needs nightly's -Zsanitizer;
# the code under test is safe Rust, and panics are what the targets check).
# Extra libFuzzer flags may follow `--`, e.g. `-- -workers=2 -jobs=2`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"

limit=()
profile=()
targets=()
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --time) limit=("-max_total_time=$2"); shift 2 ;;
        --runs) limit=("-runs=$2"); shift 2 ;;
        --dev) profile=(--dev); shift ;;
        --) shift; extra=("$@"); break ;;
        -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
[ ${#limit[@]} -gt 0 ] || { echo "fuzz.sh: give --time SECONDS or --runs N" >&2; exit 2; }
[ ${#targets[@]} -gt 0 ] || targets=(codec message registration ws_command)

cargo fuzz build "${profile[@]}" --sanitizer none

failed=0
for t in "${targets[@]}"; do
    dict=dict/irc.dict
    max_len=1024
    case "$t" in
        ws_command) dict=dict/ws.dict; max_len=4096 ;;
        # A SASL payload over 4096 bytes takes eleven 413-byte lines.
        registration) max_len=6000 ;;
    esac
    mkdir -p "corpus/$t" "artifacts/$t"
    log="artifacts/$t/last-run.log"
    echo "fuzz: $t (${limit[*]})"
    if cargo fuzz run "${profile[@]}" --sanitizer none "$t" "corpus/$t" "seeds/$t" -- \
        "-dict=$dict" "-max_len=$max_len" -timeout=25 -rss_limit_mb=2048 \
        -print_final_stats=1 "${limit[@]}" "${extra[@]}" >"$log" 2>&1; then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
        rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
        echo "fuzz: $t ok: ${runs:-?} executions, ${rate:-?}/s, corpus $(ls "corpus/$t" | wc -l) inputs"
    else
        failed=$((failed + 1))
        echo "fuzz: $t FAILED; the end of its log ($log):" >&2
        grep -a -A12 'panicked at\|ERROR: libFuzzer\|^Reproduce with' "$log" | head -n 60 >&2 || tail -n 40 "$log" >&2
    fi
done
# The closing line, in the form CI reads.
echo "fuzz: $((${#targets[@]} - failed)) passed, $failed failed"
[ "$failed" = 0 ]
