#!/usr/bin/env bash
# Soak: plays songs-example as a looping set (--loop-set) on a private JACK dummy server
# (48 kHz, 128-frame periods) for a long time with the beat clock and MIDI file going to a
# FIFO, then prints xruns, clock lateness p99/p99.9/max, RSS and open file descriptors at
# start (after a 40 s warm-up: one pass through the set, so every song has been loaded once) and at the end.
#
#   bash benches/soak.sh [DURATION_SECONDS]     default 3600 (one hour)
#
# Targets: zero xruns with SCHED_FIFO (run as root or with CAP_SYS_NICE), RSS growth under
# 1 MB, no fd growth. Also printed: the RSS trend split into heap / files / shared memory,
# and how often the machine itself stalled for longer than a period over the same window
# (cyclictest), which is what an xrun count must be read against. Needs jackd (jackd2); scripts/setup.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-3600}
warmup=40
server="backline-soak-$$"
work=$(mktemp -d)
jackd_pid=""
player_pid=""
reader_pid=""
cleanup() {
    for pid in $player_pid $reader_pid $jackd_pid; do
        kill "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --quiet
export JACK_DEFAULT_SERVER="$server" JACK_NO_AUDIO_RESERVATION=1
jackd -R -d dummy -r 48000 -p 128 >"$work/jackd.log" 2>&1 &
jackd_pid=$!
for _ in $(seq 50); do
    jack_lsp >/dev/null 2>&1 && break
    sleep 0.2
done

# The example show, with MIDI going to a FIFO this script drains.
mkfifo "$work/midi.fifo"
cat "$work/midi.fifo" >/dev/null &
reader_pid=$!
sed -e "s|^songs: songs|songs: $PWD/songs-example/songs|" \
    -e "s|^playlist: playlists/main.yaml|playlist: $PWD/songs-example/playlists/main.yaml|" \
    -e "s|path: ../example-out/midi.fifo|path: $work/midi.fifo|" \
    -e "s|device: default|device: jack|" \
    -e "s|buffer_size: 256|buffer_size: 128|" \
    songs-example/backline.yaml >"$work/backline.yaml"

./target/release/backline play "$work/backline.yaml" --loop-set </dev/null \
    >"$work/report.txt" 2>"$work/log.txt" &
player_pid=$!

sample() { # rss_kb anon_kb file_kb shmem_kb fds
    local rss fds
    rss=$(awk '/^(VmRSS|RssAnon|RssFile|RssShmem):/ {printf "%s ", $2}' "/proc/$player_pid/status")
    fds=$(find "/proc/$player_pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    echo "$rss$fds"
}
sleep "$warmup"
read -r rss_start anon_start file_start shmem_start fds_start < <(sample)
echo "soak: playing for $duration s (started $(date -u +%H:%M:%S) UTC)"
# The machine's own stalls over the same window, one cyclictest thread per core above
# backline's priorities: a core that cannot wake a thread for longer than a period (2.67 ms)
# costs an xrun whatever the player does.
floor=""
if command -v cyclictest >/dev/null; then
    cyclictest --laptop -S -m -p 90 -i 1000 -q -h 50000 -D "${duration}s" >"$work/floor.txt" 2>&1 &
    floor=$!
fi
# The trend, every interval: where memory grows (heap, mapped files, JACK's shared memory)
# and when (settling early, or steadily).
interval=$(( duration >= 1200 ? 300 : 60 ))
trend="$work/trend.txt"
elapsed=0
while [ "$elapsed" -lt "$duration" ]; do
    step=$(( duration - elapsed < interval ? duration - elapsed : interval ))
    sleep "$step"
    elapsed=$((elapsed + step))
    echo "$elapsed $(sample)" >>"$trend"
done
read -r rss_end anon_end file_end shmem_end fds_end < <(sample)
[ -n "$floor" ] && wait "$floor" || true
kill -INT "$player_pid"
wait "$player_pid" || { echo "backline exited with an error:"; tail -20 "$work/log.txt"; exit 1; }
player_pid=""

echo
grep -E "real-time:|song started" "$work/log.txt" | tail -3 || true
cat "$work/report.txt"
songs=$(grep -c "song started" "$work/log.txt" || true)
echo
printf '%-28s %12s %12s %12s\n' "soak ($duration s)" start end growth
printf '%-28s %12s %12s %12s\n' "RSS (kB)" "$rss_start" "$rss_end" "$((rss_end - rss_start))"
printf '%-28s %12s %12s %12s\n' "  of which heap (RssAnon)" "$anon_start" "$anon_end" "$((anon_end - anon_start))"
printf '%-28s %12s %12s %12s\n' "  files (RssFile)" "$file_start" "$file_end" "$((file_end - file_start))"
printf '%-28s %12s %12s %12s\n' "  shared (RssShmem)" "$shmem_start" "$shmem_end" "$((shmem_end - shmem_start))"
printf '%-28s %12s %12s %12s\n' "open file descriptors" "$fds_start" "$fds_end" "$((fds_end - fds_start))"
echo "songs started: $songs"
if [ -s "$work/floor.txt" ]; then
    # Histogram rows: latency (µs), then one count per core; overflows are > 50 ms.
    awk -v period=2667 '
        /^# Histogram Overflows/ { for (i = 4; i <= NF; i++) stalls += $i; next }
        /^# Max Latencies/ { for (i = 4; i <= NF; i++) if ($i + 0 > max) max = $i + 0; next }
        /^[0-9]/ { for (i = 2; i <= NF; i++) { if ($1 + 0 >= period) stalls += $i; total += $i } }
        END {
            if (total == 0) { print "machine stalls: cyclictest measured nothing:"; exit 1 }
            printf "machine stalls (cyclictest -S -p 90, same window): %d wake-ups of %d later than a 2.67 ms period, max %d µs\n", stalls, total, max
        }
    ' "$work/floor.txt" || head -5 "$work/floor.txt"
else
    echo "machine stalls: cyclictest not found (install rt-tests)"
fi
echo
echo "trend (growth since the start, kB):"
printf '%8s %10s %10s %10s %10s %5s\n' seconds RSS heap files shared fds
while read -r t rss anon file shmem fds; do
    printf '%8s %+10d %+10d %+10d %+10d %5s\n' "$t" "$((rss - rss_start))" "$((anon - anon_start))" \
        "$((file - file_start))" "$((shmem - shmem_start))" "$fds"
done <"$trend"
