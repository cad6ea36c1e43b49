#!/usr/bin/env bash
# Runs the whole test suite: installs the pinned PDS test harness (npm), then
# every Rust test in the release profile (the one profile this project builds).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/lexview/target}"
tests/harness/setup.sh
cargo test --release --locked "$@"
