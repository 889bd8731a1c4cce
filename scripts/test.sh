#!/usr/bin/env bash
# Runs every check backline has: formatting, clippy, unit and end-to-end tests (real JACK
# dummy server, real privileges with setpriv), and builds the benchmarks.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# End-to-end tests start their own private jackd servers; run them two at a time so the
# 2-core CI machine keeps up in real time.
cargo test --lib --bins --tests -- --test-threads=2
# The sandbox probe (execve, fork, writes outside the state folder, AF_PACKET, ptrace inside the
# running player) only exists with the test-only `sandbox-probe` feature.
cargo test --features sandbox-probe --test sandbox -- --test-threads=2
cargo bench --no-run
echo "all tests passed"
