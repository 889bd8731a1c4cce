#!/usr/bin/env bash
# The main job: builds backline and plays the example show. On a machine with a sound card
# it plays on the default device; without one it renders the show in real time to
# example-out/show.wav. Either way it ends with the jitter report (per song and overall),
# also written as example-out/report.json and drawn in example-out/jitter.svg.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release
./target/release/backline check songs-example

# Capture the MIDI output (beat clock + MIDI file) that songs-example/backline.yaml sends.
# The FIFO itself lives on tmpfs (a FIFO on a disk filesystem updates its modification time
# through the filesystem on every write, which backline warns about); example-out/midi.fifo
# points at it.
mkdir -p example-out
fifo_dir=/dev/shm
[ -d "$fifo_dir" ] && [ -w "$fifo_dir" ] || fifo_dir=example-out
fifo="$(cd "$fifo_dir" && pwd)/backline-example-$(id -u).fifo"
[ -p "$fifo" ] || mkfifo "$fifo"
ln -sfn "$fifo" example-out/midi.fifo
(cat example-out/midi.fifo > example-out/midi.raw) &
# Open the FIFO for writing here too: that waits until `cat` has it open (so backline never
# starts before its reader and drops the first bytes), and the descriptor, inherited by
# backline, keeps `cat` from seeing end-of-file until backline exits.
exec 4>"$fifo"

# `rehearse` plays like `play` and ends with the jitter report per song, plus JSON and SVG.
report=(--report example-out/report.json --plot example-out/jitter.svg)
if [ -e /dev/snd ] && ls /dev/snd/pcmC* >/dev/null 2>&1; then
  exec ./target/release/backline rehearse songs-example "${report[@]}" "$@"
else
  echo "no sound card: rendering the show in real time to example-out/show.wav" >&2
  exec ./target/release/backline rehearse songs-example --output wav:example-out/show.wav "${report[@]}" "$@" </dev/null
fi
