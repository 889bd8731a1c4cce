#!/usr/bin/env bash
# Installs what backline needs to build, test and benchmark on Debian/Ubuntu, skipping what
# is already there: the Rust toolchain (rustup) and the system packages below.
set -euo pipefail

packages=(
  pkg-config build-essential curl ca-certificates
  libasound2-dev        # cpal's ALSA backend (build)
  libjack-jackd2-dev    # cpal's JACK backend and the test recorder (build)
  jackd2                # a real JACK server (dummy driver) for the end-to-end tests
  rt-tests              # cyclictest: the machine's scheduling floor in the benchmarks
  time                  # /usr/bin/time -v for the memory benchmark
  util-linux            # setpriv for the privilege tests
  sox libsox-fmt-base   # generates the long test song of the memory benchmark
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing the Rust toolchain with rustup" >&2
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
