#!/usr/bin/env bash
# Runs every check backline has: formatting, clippy, unit and end-to-end tests (real JACK
# dummy server, real privileges with setpriv), builds the benchmarks, checks the systemd unit
# and runs the service under a real systemd (tests/systemd/run.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
# End-to-end tests start their own private jackd servers; run them two at a time so the
# 2-core CI machine keeps up in real time.
cargo test --no-fail-fast --lib --bins --tests -- --test-threads=2
# The sandbox probe (execve, fork, writes outside the state folder, AF_PACKET, ptrace inside the
# running player) only exists with the test-only `sandbox-probe` feature.
cargo test --features sandbox-probe --test sandbox -- --test-threads=2
cargo bench --no-run
# Fuzzing: replay the committed corpus, then 20 s per target (nightly + cargo-fuzz, installed
# by the script when missing).
bash scripts/fuzz.sh --ci
# The systemd unit: rated SAFE by systemd-analyze security, clean under verify.
bash scripts/check-unit.sh target/debug/backline
# The service under a real systemd (nspawn): the .deb installed, each promise of the unit checked.
bash tests/systemd/run.sh
echo "all tests passed"
