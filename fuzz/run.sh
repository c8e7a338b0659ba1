#!/usr/bin/env bash
# Builds the fuzz targets with libFuzzer's coverage instrumentation on stable Rust and runs
# them on their committed corpora.
#
#   fuzz/run.sh [SECONDS] [TARGET...]    default: 30 seconds each, every target
#
# New inputs that reach new code are added to fuzz/corpus/TARGET (commit the useful ones);
# crashes are written to fuzz/artifacts/TARGET/ and fail the run (after the other targets ran).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
seconds="${1:-30}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(graph_file safetensors torch_pickle image_decode gguf items_jsonl http_bodies)

# What cargo-fuzz passes, minus the sanitizer (-Zsanitizer needs nightly): SanitizerCoverage
# counters and comparison tracing, and cfg(fuzzing).
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
export CARGO_TARGET_DIR="$here/target"
# An explicit --target keeps RUSTFLAGS off build scripts and proc macros (which would not
# link without libFuzzer), as cargo-fuzz does.
host="$(rustc -vV | sed -n 's/^host: //p')"
(cd "$here" && cargo build --release --bins --target "$host")
bin="$CARGO_TARGET_DIR/$host/release"

# Every target runs even when one fails, so that one crash does not hide another.
failed=()
for target in "${targets[@]}"; do
    mkdir -p "$here/corpus/$target" "$here/artifacts/$target"
    echo "== $target: ${seconds}s" >&2
    # -rss_limit_mb: a reader that allocates by what a file claims shows up as a failure.
    "$bin/$target" "$here/corpus/$target" \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -max_len=1048576 \
        -artifact_prefix="$here/artifacts/$target/" -print_final_stats=1 || failed+=("$target")
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz/run.sh: failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
