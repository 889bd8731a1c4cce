#!/usr/bin/env bash
# The stage-box service under a real systemd: builds the .deb, boots Debian bookworm in
# systemd-nspawn (a debootstrap image, cached between runs), installs the package and checks
# the unit's promises one by one, printing PASS/FAIL per check. Exits 1 if any check fails.
#
# Needs root, debootstrap and systemd-container (scripts/setup.sh installs them), network
# access the first time (debootstrap), about 250 MB in the cache.
#
# Environment:
#   BACKLINE_CI_CACHE   where the image and the per-run copies live (/var/cache/backline-ci)
#   DEBIAN_MIRROR       debootstrap mirror (http://deb.debian.org/debian)
#   BACKLINE_DEB        test this .deb instead of building one
set -euo pipefail
cd "$(dirname "$0")/../.."

started=$(date +%s)
cache=${BACKLINE_CI_CACHE:-/var/cache/backline-ci}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
# Everything the package needs is in the image: dpkg -i works without a network.
packages=systemd,systemd-sysv,dbus,libasound2,procps
image=$cache/$suite-$(printf '%s' "$suite $packages" | sha256sum | cut -c1-12)
runs=$cache/runs
unit=backline.service
watchdog_sec=5   # WatchdogSec= of packaging/backline.service
restart_sec=1    # RestartSec=

log() { printf '[systemd-test %4ss] %s\n' "$(($(date +%s) - started))" "$*" >&2; }
die() { log "error: $*"; exit 2; }

[ "$(id -u)" -eq 0 ] || die "must run as root (debootstrap, systemd-nspawn, nsenter)"
for tool in debootstrap systemd-nspawn nsenter flock; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/setup.sh installs it)"
done
mkdir -p "$cache" "$runs"

# --- leftovers of a killed run: their nspawn (recorded pid) and their scratch copy ----------
for old in "$runs"/run.*; do
  [ -d "$old" ] || continue
  owner=$(cat "$old/owner.pid" 2>/dev/null || echo 0)
  if [ "$owner" != 0 ] && [ -r "/proc/$owner/cmdline" ] \
    && tr '\0' ' ' <"/proc/$owner/cmdline" | grep -q 'tests/systemd/run.sh'; then
    continue   # a run in progress
  fi
  pid=$(cat "$old/nspawn.pid" 2>/dev/null || echo 0)
  if [ "$pid" != 0 ] && [ -r "/proc/$pid/cmdline" ] \
    && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$old/root"; then
    log "stopping the container of a killed run (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.5
  fi
  rm -rf --one-file-system "$old" || true
done

# --- the image: created once, reused ---------------------------------------------------------
(
  flock 9
  if [ ! -x "$image/usr/lib/systemd/systemd" ]; then
    log "creating the $suite image in $image (debootstrap, about a minute)"
    rm -rf --one-file-system "$image.partial"
    debootstrap --variant=minbase --include="$packages" "$suite" "$image.partial" "$mirror" \
      >"$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log" >&2; die "debootstrap failed"; }
    rm -f "$image.partial"/var/cache/apt/archives/*.deb
    # A quiet boot: no console login prompt, no network setup.
    ln -sf /dev/null "$image.partial/etc/systemd/system/console-getty.service"
    rm -rf --one-file-system "$image"
    mv "$image.partial" "$image"
  else
    log "reusing the image $image"
  fi
) 9>"$cache/image.lock"

# --- the .deb ----------------------------------------------------------------------------------
deb=${BACKLINE_DEB:-}
if [ -z "$deb" ]; then
  if ! command -v cargo-deb >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-deb" ]; then
    log "installing cargo-deb (cargo install, a few minutes)"
    cargo install cargo-deb --locked --version 3.8.0 >&2
  fi
  log "building the .deb (profile deb-test)"
  deb=$(cargo deb --profile deb-test --fast | tail -1)
fi
[ -f "$deb" ] || die "no .deb at $deb"

# --- a scratch copy, booted -----------------------------------------------------------------
run=$(mktemp -d "$runs/run.XXXXXX")
echo $$ >"$run/owner.pid"
root=$run/root
nspawn_pid=""
pid1=""

cleanup() {
  local code=$?
  set +e
  trap '' INT TERM
  if [ -n "$pid1" ] && [ -d "/proc/$pid1" ]; then
    nsenter -t "$pid1" -a journalctl -u "$unit" --no-pager -o short-monotonic >"$run/journal.txt" 2>&1
    cp "$run/journal.txt" "${BACKLINE_SYSTEMD_LOG:-/tmp/backline-systemd-test.journal}" 2>/dev/null
    nsenter -t "$pid1" -a systemctl poweroff --no-block >/dev/null 2>&1
  fi
  if [ -n "$nspawn_pid" ]; then
    for _ in $(seq 1 40); do
      kill -0 "$nspawn_pid" 2>/dev/null || break
      sleep 0.25
    done
    kill -KILL "$nspawn_pid" 2>/dev/null
    wait "$nspawn_pid" 2>/dev/null
  fi
  rm -rf --one-file-system "$run"
  log "cleaned up (exit $code)"
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "copying the image"
cp -a --reflink=auto "$image" "$root"
cp "$deb" "$root/root/backline.deb"

# The test show: one long song (silence, 8 kHz, resampled by the player), a beat clock, a WAV
# render into the state directory and the MIDI output on a FIFO.
song_dir=$root/var/lib/backline-test/00-long
mkdir -p "$song_dir"
write_silent_wav() {
  local file=$1 rate=8000 seconds=$2
  local bytes=$((rate * 2 * seconds))
  le() { local v=$1 n=$2 i out=""; for ((i = 0; i < n; i++)); do out+=$(printf '\\x%02x' $(((v >> (8 * i)) & 255))); done; printf '%s' "$out"; }
  {
    printf 'RIFF%bWAVEfmt ' "$(le $((36 + bytes)) 4)"
    printf '%b' "$(le 16 4)$(le 1 2)$(le 1 2)$(le $rate 4)$(le $((rate * 2)) 4)$(le 2 2)$(le 16 2)"
    printf 'data%b' "$(le $bytes 4)"
    head -c "$bytes" /dev/zero
  } >"$file"
}
write_silent_wav "$song_dir/long.wav" 1200
cat >"$song_dir/song.yaml" <<'EOF'
kind: song
name: Long Test Song
tracks:
  - name: click
    file: long.wav
tempo:
  bpm: 120
  time_signature: 4/4
EOF
mkdir -p "$root/etc/backline"
cat >"$root/etc/backline/test-playlist.yaml" <<'EOF'
kind: playlist
songs:
  - Long Test Song
EOF

log "booting the container"
systemd-nspawn -b -D "$root" --register=no --keep-unit -M "backline-ci-${run##*.}" \
  --console=read-only </dev/null >"$run/boot.log" 2>&1 &
nspawn_pid=$!
echo "$nspawn_pid" >"$run/nspawn.pid"

# The container's pid 1: the nspawn descendant whose innermost pid is 1.
for _ in $(seq 1 100); do
  for task in $(ps -o pid= --ppid "$nspawn_pid" 2>/dev/null) ; do
    for candidate in "$task" $(ps -o pid= --ppid "$task" 2>/dev/null); do
      if awk '/^NSpid:/ { exit !($NF == 1) }' "/proc/$candidate/status" 2>/dev/null; then
        pid1=$candidate
      fi
    done
  done
  [ -n "$pid1" ] && break
  kill -0 "$nspawn_pid" 2>/dev/null || { cat "$run/boot.log" >&2; die "systemd-nspawn exited"; }
  sleep 0.2
done
[ -n "$pid1" ] || die "cannot find the container's pid 1"
ct() { nsenter -t "$pid1" -a "$@"; }
state=""
for _ in $(seq 1 120); do
  # Until nspawn has exec'd systemd, pid 1 is still nspawn itself.
  if [ "$(cat "/proc/$pid1/comm" 2>/dev/null)" = systemd ]; then
    state=$(timeout 120 nsenter -t "$pid1" -a systemctl is-system-running --wait 2>/dev/null || true)
    case "$state" in running | degraded) break ;; esac
  fi
  kill -0 "$nspawn_pid" 2>/dev/null || break
  sleep 1
done
case "$state" in
  running | degraded) log "container up ($state)" ;;
  *) cat "$run/boot.log" >&2; die "the container's systemd did not come up ($state)" ;;
esac

# --- checks ----------------------------------------------------------------------------------
failed=()
pass() { printf 'PASS: %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*"; failed+=("${1%%:*}"); }

main_pid() { ct systemctl show -p MainPID --value "$unit"; }
active_state() { ct systemctl show -p ActiveState --value "$unit"; }
status_text() { ct systemctl show -p StatusText --value "$unit"; }
# The scheduling policy of the thread named $2 in container process $1: field 41 of its
# stat (the fields after the ")" that ends the name start at field 3). Empty if none.
thread_policy() {
  # shellcheck disable=SC2016 # expanded by the container's shell
  ct sh -c 'for t in /proc/$1/task/*; do
      if [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ]; then sed "s/.*) //" "$t/stat" | cut -d" " -f39; exit; fi
    done' sh "$1" "$2" 2>/dev/null || true
}
proc_status() { ct cat "/proc/$1/status"; }
wait_active() {
  local i
  for i in $(seq 1 "$((${1:-30} * 4))"); do
    [ "$(active_state)" = active ] && return 0
    sleep 0.25
  done
  return 1
}
render_size() { stat -c %s "$root/var/lib/backline/render.wav" 2>/dev/null || echo 0; }
plays() {
  local before after
  before=$(render_size); sleep 2; after=$(render_size)
  [ "$after" -gt "$before" ]
}
midi_count() { # occurrences of byte $1 (hex) read from the FIFO so far
  od -An -v -tx1 "$root/var/tmp/midi.bin" 2>/dev/null | tr -s ' ' '\n' | grep -c "^$1\$" || true
}
start_service() { # --no-block: a start that never gets READY=1 must not hang the test
  ct systemctl reset-failed "$unit" >/dev/null 2>&1 || true
  ct systemctl start --no-block "$unit"
}

# 1. The package.
if ct env DEBIAN_FRONTEND=noninteractive dpkg -i /root/backline.deb >"$run/dpkg.log" 2>&1; then
  pass "package: dpkg -i installs offline (Depends: $(dpkg-deb -f "$deb" Depends))"
else
  cat "$run/dpkg.log"; fail "package: dpkg -i failed"
fi
if ct id -nG backline 2>/dev/null | grep -qw audio \
  && [ -f "$root/var/lib/backline/songs/01-sound-check/song.yaml" ] \
  && [ -f "$root/usr/lib/systemd/system/$unit" ]; then
  pass "package: user backline (group audio) from sysusers.d, example songs copied by tmpfiles.d, unit installed"
else
  fail "package: sysusers/tmpfiles/unit missing (id: $(ct id backline 2>&1))"
fi

# The test show goes next to the example songs; the config renders to a WAV in the state dir.
mv "$root/var/lib/backline-test/00-long" "$root/var/lib/backline/songs/00-long"
cat >"$root/etc/backline/backline.yaml" <<'EOF'
songs: /var/lib/backline/songs
playlist: test-playlist.yaml
audio:
  device: "wav:/var/lib/backline/render.wav"
  sample_rate: 48000
  buffer_size: 256
midi:
  outputs:
    - name: fifo
      path: /var/lib/backline/midi.fifo
      clock: true
      midi_file: true
EOF
ct mkfifo -m 0660 /var/lib/backline/midi.fifo
ct chown backline:backline /var/lib/backline/midi.fifo
# The reader holds the FIFO open read-write, so a restarting writer never ends its read. It
# runs as a unit of the container's systemd, so it ends with the container.
ct systemd-run --quiet --unit=midi-reader sh -c \
  'exec 3<>/var/lib/backline/midi.fifo; exec cat <&3 >/var/tmp/midi.bin'

# 2. Start: active once READY=1 arrives, STATUS= in `systemctl status`.
start_service
if wait_active 30; then
  pass "start: active (READY=1) after $(ct systemctl show -p ExecMainStartTimestampMonotonic,ActiveEnterTimestampMonotonic --value "$unit" | paste -sd' ' | awk '{ printf "%.1f s", ($2 - $1) / 1e6 }')"
else
  fail "start: not active within 30 s (state $(active_state)/$(ct systemctl show -p SubState --value "$unit"))"
fi
sleep 2
status=$(status_text)
if [ -n "$status" ] && ct systemctl status --no-pager "$unit" 2>/dev/null | grep -q "Status: \"" \
  && grep -q "Long Test Song" <<<"$status"; then
  pass "status: systemctl status shows STATUS: $status"
else
  fail "status: no STATUS= naming the song in systemctl status (StatusText: '${status}')"
fi
pid=$(main_pid)

# 3. SCHED_FIFO through the unit's CAP_SYS_NICE.
audio_policy=$(thread_policy "$pid" backline-render)
clock_policy=$(thread_policy "$pid" backline-clock)
if [ "$audio_policy" = 1 ] && [ "$clock_policy" = 1 ]; then
  pass "realtime: audio (backline-render) and clock (backline-clock) threads are SCHED_FIFO"
else
  fail "realtime: policies audio=${audio_policy:-none} clock=${clock_policy:-none} (1 = SCHED_FIFO)"
fi

# 4. The sandbox, as the kernel reports it.
st=$(proc_status "$pid" 2>/dev/null || true)
cap_eff=$(awk '/^CapEff:/ { print $2 }' <<<"$st")
nnp=$(awk '/^NoNewPrivs:/ { print $2 }' <<<"$st")
seccomp=$(awk '/^Seccomp:/ { print $2 }' <<<"$st")
if [ "$cap_eff" = 0000000000000000 ] && [ "$nnp" = 1 ] && [ "$seccomp" = 2 ]; then
  pass "sandbox: CapEff 0, NoNewPrivs 1, Seccomp 2"
else
  fail "sandbox: CapEff ${cap_eff:-?} NoNewPrivs ${nnp:-?} Seccomp ${seccomp:-?} (want 0000000000000000 1 2)"
fi
if plays; then
  pass "playing: the WAV render grows ($(render_size) bytes), $(midi_count f8) MIDI clock ticks on the FIFO"
else
  fail "playing: the WAV render does not grow"
fi

# 5. systemctl reload: the same process, the same song, still playing.
song_starts() { ct journalctl -u "$unit" --no-pager -o cat _PID="$1" 2>/dev/null | grep -c "song started" || true; }
pid=$(main_pid)
starts_before=$(song_starts "$pid")
if timeout 30 nsenter -t "$pid1" -a systemctl reload "$unit" 2>"$run/reload.err"; then reload_rc=ok; else reload_rc="failed: $(cat "$run/reload.err")"; fi
sleep 3
pid_after=$(main_pid)
if [ "$reload_rc" = ok ] && [ "$pid_after" = "$pid" ] && [ "$(active_state)" = active ] \
  && [ "$(song_starts "$pid")" = "$starts_before" ] && plays; then
  pass "reload: same process ($pid), the song kept playing"
else
  fail "reload: $reload_rc; pid $pid -> $pid_after, state $(active_state), song starts $starts_before -> $(song_starts "$pid")"
fi

# 6. The watchdog: a stopped process is restarted within WatchdogSec + RestartSec.
wait_active 30 || true
pid=$(main_pid)
if [ "$pid" -gt 0 ] && [ "$(ct systemctl show -p WatchdogUSec --value "$unit")" != 0 ]; then
  t0=$(date +%s.%N)
  ct kill -STOP "$pid"
  new=""
  for _ in $(seq 1 $(((watchdog_sec + restart_sec + 10) * 10))); do
    now=$(main_pid)
    if [ "$now" != "$pid" ] && [ "$now" != 0 ]; then new=$now; break; fi
    sleep 0.1
  done
  elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  limit=$((watchdog_sec + restart_sec + 1))   # + 1 s: polling and timer slack
  if [ -n "$new" ] && awk -v e="$elapsed" -v l="$limit" 'BEGIN { exit !(e <= l) }' \
    && ct journalctl -u "$unit" --no-pager -o cat | grep -q "Watchdog timeout"; then
    pass "watchdog: SIGSTOP -> watchdog timeout -> restarted as $new after ${elapsed} s (limit ${limit} s)"
  else
    fail "watchdog: pid $pid -> ${new:-not restarted} after ${elapsed} s (limit ${limit} s); $(ct journalctl -u "$unit" --no-pager -o cat | grep -c 'Watchdog timeout') watchdog timeouts logged"
    ct kill -CONT "$pid" 2>/dev/null || true
  fi
else
  fail "watchdog: no running service with WatchdogSec (pid $pid)"
fi
wait_active 30 || true

# 7. systemctl stop: clean exit, MIDI Stop (0xFC) on the FIFO.
sleep 2
stops_before=$(midi_count fc)
t0=$(date +%s.%N)
timeout 30 nsenter -t "$pid1" -a systemctl stop "$unit" || true
elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
sleep 0.5
result=$(ct systemctl show -p Result --value "$unit")
exit_status=$(ct systemctl show -p ExecMainStatus --value "$unit")
stops_after=$(midi_count fc)
if [ "$result" = success ] && [ "$exit_status" = 0 ] && [ "$stops_after" -gt "$stops_before" ]; then
  pass "stop: clean (exit 0) in ${elapsed} s, MIDI Stop 0xFC seen on the FIFO"
else
  fail "stop: result $result, exit status $exit_status, 0xFC count $stops_before -> $stops_after, ${elapsed} s"
fi

# 8. Without CAP_SYS_NICE (a drop-in) it still plays, and STATUS says RT is degraded and why.
mkdir -p "$root/etc/systemd/system/$unit.d"
cat >"$root/etc/systemd/system/$unit.d/50-no-rt.conf" <<'EOF'
[Service]
AmbientCapabilities=
CapabilityBoundingSet=
EOF
ct systemctl daemon-reload
start_service
wait_active 30 || true
sleep 3
pid=$(main_pid)
status=$(status_text)
audio_policy=$(thread_policy "$pid" backline-render)
clock_policy=$(thread_policy "$pid" backline-clock)
if [ "$(active_state)" = active ] && plays && [ "$audio_policy" = 0 ] && [ "$clock_policy" = 0 ] \
  && grep -Eqi 'degraded|normal' <<<"$status" && grep -Eq 'CAP_SYS_NICE|RLIMIT_RTPRIO' <<<"$status"; then
  pass "no capability: plays at normal priority, STATUS: $status"
else
  fail "no capability: state $(active_state), policies audio=${audio_policy:-none} clock=${clock_policy:-none}, STATUS '${status}' (want it to say degraded/normal and why)"
fi
timeout 30 nsenter -t "$pid1" -a systemctl stop "$unit" || true
rm -rf "$root/etc/systemd/system/$unit.d"

log "done in $(($(date +%s) - started)) s"
if [ "${#failed[@]}" -gt 0 ]; then
  printf 'systemd test: %d check(s) failed: %s\n' "${#failed[@]}" "${failed[*]}"
  exit 1
fi
echo "systemd test: all checks passed"
