#!/usr/bin/env bash
# Peak memory while playing a 10-track, 6-minute song (stereo FLAC stems at 44.1 kHz, so
# resampling runs too). Rendered to a WAV file at --speed 20 so it takes ~20 s instead of 6
# minutes: the loader keeps every ring full either way, so memory behaves as in real time.
# Target: peak RSS under 64 MB. Usage: benches/memory.sh [minutes] [tracks]
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=${1:-6}
tracks=${2:-10}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/songs/long"
{
  echo "kind: song"
  echo "name: Long song"
  echo "tracks:"
} > "$work/songs/long/song.yaml"
for i in $(seq 1 "$tracks"); do
  freq=$((110 * i))
  sox -n -r 44100 -c 2 -b 16 "$work/songs/long/t$i.flac" synth "$((minutes * 60))" sine "$freq" tremolo 3 40 vol 0.05
  printf '  - name: t%s\n    file: t%s.flac\n' "$i" "$i" >> "$work/songs/long/song.yaml"
done
cargo build --release --quiet
/usr/bin/time -v ./target/release/backline play "$work/songs" --output "wav:$work/out.wav" --speed 20 \
  </dev/null 2>"$work/time.txt" >/dev/null || { cat "$work/time.txt"; exit 1; }
rss_kb=$(awk -F: '/Maximum resident set size/ {gsub(/ /, "", $2); print $2}' "$work/time.txt")
wall=$(awk -F'): ' '/Elapsed \(wall clock\)/ {print $2}' "$work/time.txt")
echo "song: $tracks stereo FLAC stems × $minutes min at 44.1 kHz, resampled to 48 kHz, mixed to 2 outputs"
echo "peak RSS: $((rss_kb / 1024)) MB ($rss_kb kB), wall time $wall at --speed 20"
