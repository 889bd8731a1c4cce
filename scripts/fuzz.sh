#!/usr/bin/env bash
# Fuzzes backline's parsers with cargo-fuzz (libFuzzer, nightly Rust):
#   song_yaml, playlist_yaml, config_yaml  YAML → model or diagnostics
#   midi_file                              SMF → schedule + the beat clock's tempo map
#   media_probe                            audio bytes → header + every packet decoded
#
#   bash scripts/fuzz.sh [SECONDS]   each target for SECONDS (default 300); new inputs
#                                    are added to fuzz/corpus/TARGET
#   bash scripts/fuzz.sh --ci        replay the committed corpus, then 20 s per target,
#                                    new inputs kept in a scratch dir (what CI runs)
#
# Installs the nightly toolchain and cargo-fuzz when missing. Ends with a table of
# executions per target; exits non-zero on any finding (saved under fuzz/artifacts/).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

ci=false
seconds=300
case "${1:-}" in
    --ci) ci=true; seconds=20 ;;
    "") ;;
    *) seconds="$1" ;;
esac

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

targets=(song_yaml playlist_yaml config_yaml midi_file media_probe)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cargo +nightly fuzz build
summary=()
status=0
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    if $ci; then
        new="$scratch/$target"
        mkdir -p "$new"
        dirs=("$new" "$corpus")
    else
        dirs=("$corpus")
    fi
    log="$scratch/$target.log"
    # -timeout: one input taking more than 10 s is a finding (a hang); -rss_limit_mb bounds
    # memory actually used the same way. -malloc_limit_mb=4096: symphonia reserves what a
    # FLAC picture or Vorbis comment header claims (a u32, so up to 4 GB) before reading it;
    # those pages are never touched (overcommit; backline's mlockall uses MCL_ONFAULT), so
    # only a single allocation above 4 GB counts as a finding.
    # CI gate: the committed corpus must replay clean (a regression fails the build).
    if $ci && ! cargo +nightly fuzz run "$target" "$corpus" -- -runs=0 -timeout=10 \
        -rss_limit_mb=1024 -malloc_limit_mb=4096 >"$log.replay" 2>&1; then
        status=1
        echo "== $target: the committed corpus no longer replays clean"
        tail -40 "$log.replay"
    fi
    if ! cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -malloc_limit_mb=4096 \
        -print_final_stats=1 >"$log" 2>&1; then
        # In CI what 20 s of random exploration finds is reported, not a red build (the
        # replay above is the gate); locally every finding fails.
        if $ci; then
            echo "== $target: NEW FINDING in CI exploration (reported; see fuzz/artifacts/$target)"
        else
            status=1
        fi
        echo "== $target: FINDING (see fuzz/artifacts/$target)"
        tail -40 "$log"
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
    summary+=("$(printf '%-15s %10s executions in %4s s' "$target" "${runs:-?}" "$seconds")")
done
echo "fuzzing summary:"
printf '  %s\n' "${summary[@]}"
exit $status
