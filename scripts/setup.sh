#!/usr/bin/env bash
# Installs what backline needs to build, test and benchmark on Debian/Ubuntu, skipping what
# is already there: the Rust toolchain (rustup) and the system packages below.
set -euo pipefail

# Needed to build and to run the tests.
required=(
  pkg-config build-essential curl ca-certificates
  libasound2-dev        # cpal's ALSA backend and midir (build)
  libjack-jackd2-dev    # cpal's JACK backend and the test recorder (build)
  jackd2                # a real JACK server (dummy driver) for the end-to-end tests
  pulseaudio pulseaudio-utils libasound2-plugins   # tests/alsa_reconnect.rs: ALSA's pulse PCM into a private PulseAudio null sink
  util-linux            # setpriv for the privilege tests
  systemd               # systemd-analyze security/verify for the unit checks
  debootstrap systemd-container procps   # the service test: a Debian image booted with systemd-nspawn
)
# Only the benchmarks use these; a machine without them still builds and tests.
optional=(
  rt-tests              # cyclictest: the machine's scheduling floor
  time                  # /usr/bin/time -v for the memory benchmark
  sox libsox-fmt-base   # generates the long test song of the memory benchmark
)

missing() {
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
need=$(missing "${required[@]}")
want=$(missing "${optional[@]}")
if [ -n "$need$want" ]; then
  $sudo apt-get update -qq
fi
if [ -n "$need" ]; then
  echo "setup: installing" $need >&2
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $need >/dev/null
fi
if [ -n "$want" ]; then
  echo "setup: installing (benchmarks only)" $want >&2
  # shellcheck disable=SC2086
  $sudo apt-get install -y -qq --no-install-recommends $want >/dev/null \
    || echo "setup: could not install $want; the benchmarks that need them will say so" >&2
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
