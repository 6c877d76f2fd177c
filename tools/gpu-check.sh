#!/usr/bin/env bash
# Measures whatever adapter Device::new() picks on this machine, in one command:
# prints the adapter, runs the whole test suite on it, then every `cinder bench`
# (the matmul kernels chosen for the adapter, the portable kernel, the CNN step),
# and writes everything to a directory. Exits non-zero on the first failure.
#
#   tools/gpu-check.sh [OUT_DIR]        (default: gpu-check-<date>)
#
# On a machine with a real GPU this is the check to run; the figures go into the
# README beside the lavapipe ones. CINDER_BACKEND / CINDER_ADAPTER pick another
# adapter, as everywhere.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-check-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/cinder-xdg-runtime}"
mkdir -p "$XDG_RUNTIME_DIR" && chmod 700 "$XDG_RUNTIME_DIR"

step() { echo; echo "== $*" | tee -a "$out/summary.txt"; }

step "build"
cargo build --release -p cinder-cli 2>&1 | tail -3
bin=target/release/cinder

step "adapter ($bin info)"
"$bin" info 2>/dev/null | tee "$out/info.txt"
grep -m1 'picks this one' "$out/info.txt" >>"$out/summary.txt" || true

step "test suite (cargo test --workspace --release)"
started=$(date +%s)
cargo test --workspace --release >"$out/tests.txt" 2>&1 || {
    grep -E 'panicked|FAILED|error' "$out/tests.txt" | head -40
    echo "the test suite failed: $out/tests.txt" >&2
    exit 1
}
passed=$(grep -E '^test result' "$out/tests.txt" | awk '{s += $4} END {print s}')
echo "$passed tests passed in $(($(date +%s) - started)) s" | tee -a "$out/summary.txt"

step "matmul, the kernels Device::new() chooses (cinder bench matmul)"
"$bin" bench matmul --sizes 256,512,1024,2048,4096 --reps 9 2>/dev/null | tee "$out/bench-matmul.txt"
grep -E 'GFLOP|steps' "$out/bench-matmul.txt" >>"$out/summary.txt"

step "matmul, the portable kernel (CINDER_PORTABLE_KERNELS=1)"
CINDER_PORTABLE_KERNELS=1 "$bin" bench matmul --sizes 1024,2048 --reps 9 2>/dev/null |
    tee "$out/bench-matmul-portable.txt"
grep -E 'GFLOP' "$out/bench-matmul-portable.txt" >>"$out/summary.txt"

step "CNN training step (cinder bench cnn)"
"$bin" bench cnn --steps 30 --reps 7 2>/dev/null | tee "$out/bench-cnn.txt"
grep -E 'median' "$out/bench-cnn.txt" >>"$out/summary.txt"

echo
echo "all checks passed; figures in $out/summary.txt"
