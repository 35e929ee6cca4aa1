#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the seeds
# in fuzz/corpus/TARGET (copied, so the committed corpus stays small).
# Needs cargo-fuzz: `cargo install cargo-fuzz`. Usage: fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
secs="${1:-60}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(decode_log decode_frame analyze bundle kallsyms elf)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz/run.sh: cargo-fuzz is not installed; run: cargo install cargo-fuzz" >&2
    exit 2
fi
work="${FUZZ_WORK:-${CARGO_TARGET_DIR:-target}/fuzz-work}"
mkdir -p "$work"
status=0
for t in "${targets[@]}"; do
    rm -rf "${work:?}/$t"
    mkdir -p "$work/$t" "$work/artifacts/$t"
    cp -r "corpus/$t/." "$work/$t/" 2>/dev/null || true
    echo "== $t: ${secs}s"
    if ! cargo fuzz run "$t" "$work/$t" -- -max_total_time="$secs" \
        -artifact_prefix="$work/artifacts/$t/" -print_final_stats=1 2>&1 | tail -n 20; then
        echo "== $t: FAILED (crash inputs in $work/artifacts/$t/)"
        status=1
    fi
done
exit $status
