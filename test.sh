#!/usr/bin/env bash
# Runs the whole test suite: the lint gate (rustfmt, clippy with warnings as
# errors), installs the pinned PDS test harness (npm), then every Rust test of
# the workspace in the release profile (the one profile this project builds),
# and closes with one line summing all test binaries: "N passed, M failed".
# The target directory is cargo's (./target unless CARGO_TARGET_DIR says
# otherwise), the same one `cargo run --release` uses, so DuckDB's C++ is
# compiled once for both; .ci/run points it at a cache outside the clone.
set -euo pipefail
cd "$(dirname "$0")"
cargo fmt --all --check
cargo clippy --release --locked --workspace --all-targets -- -D warnings
tests/harness/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release --locked --workspace "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
