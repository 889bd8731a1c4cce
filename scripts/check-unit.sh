#!/usr/bin/env bash
# Static checks of the systemd packaging:
# - `systemd-analyze security` rates packaging/backline.service SAFE (exposure below 1.0;
#   --threshold takes the exposure x 10 and fails above it);
# - `systemd-analyze verify` has nothing to say (it reports unknown keys and bad values as
#   warnings on stderr and still exits 0, so stderr must be empty);
# - systemd-sysusers accepts packaging/backline.sysusers.
# Usage: scripts/check-unit.sh [BINARY]   (BINARY: an existing backline, for verify's
# ExecStart check; default target/debug/backline)
set -euo pipefail
cd "$(dirname "$0")/.."

unit=packaging/backline.service
binary=$(realpath "${1:-target/debug/backline}")
[ -x "$binary" ] || { echo "check-unit: $binary is not an executable; build first" >&2; exit 1; }

scratch=$(mktemp -d)
mkdir -p "$scratch/rendered"
trap 'rm -rf "$scratch"' EXIT

# Security rating. The threshold must be 9 for "below 1.0": systemd compares the exposure x 10
# (an integer) with it and fails only above it.
security=$(systemd-analyze security --offline=yes --no-pager --threshold=9 "$unit" 2>&1) || {
  echo "$security" | grep -E '✗|Overall' >&2
  echo "FAIL: $unit is rated above 0.9 (see the ✗ lines above)" >&2
  exit 1
}
echo "$security" | grep 'Overall exposure'
echo "PASS: systemd-analyze security: exposure below 1.0"

# verify needs ExecStart's binary to exist: check a copy that runs the built one.
sed "s#^ExecStart=/usr/bin/backline #ExecStart=$binary #" "$unit" >"$scratch/backline.service"
grep -q "^ExecStart=$binary " "$scratch/backline.service" || {
  echo "FAIL: $unit has no ExecStart=/usr/bin/backline line to check" >&2
  exit 1
}
if ! systemd-analyze verify --man=no "$scratch/backline.service" 2>"$scratch/verify.err" \
  || [ -s "$scratch/verify.err" ]; then
  cat "$scratch/verify.err" >&2
  echo "FAIL: systemd-analyze verify complained about $unit" >&2
  exit 1
fi
echo "PASS: systemd-analyze verify: no warnings"

mkdir -p "$scratch/root/etc" "$scratch/root/usr/lib/sysusers.d"
cp packaging/backline.sysusers "$scratch/root/usr/lib/sysusers.d/backline.conf"
if ! systemd-sysusers --dry-run --root="$scratch/root" >"$scratch/sysusers.out" 2>&1 \
  || ! grep -q "backline" "$scratch/sysusers.out"; then
  cat "$scratch/sysusers.out" >&2
  echo "FAIL: systemd-sysusers rejects packaging/backline.sysusers" >&2
  exit 1
fi
echo "PASS: systemd-sysusers accepts packaging/backline.sysusers"

# `backline unit` renders the same template for cargo installs; a library under /home turns
# ProtectHome=yes into an empty tmpfs with the library bound in. Rate and verify that too.
"$binary" unit --library /home/stage/show >"$scratch/rendered/backline.service" 2>"$scratch/unit.err" || {
  cat "$scratch/unit.err" >&2
  echo "FAIL: backline unit" >&2
  exit 1
}
rendered=$(systemd-analyze security --offline=yes --no-pager --threshold=9 "$scratch/rendered/backline.service" 2>&1) || {
  echo "$rendered" | grep -E '✗|Overall' >&2
  echo "FAIL: the unit from \`backline unit\` is rated above 0.9" >&2
  exit 1
}
if ! systemd-analyze verify --man=no "$scratch/rendered/backline.service" 2>"$scratch/verify.err" \
  || [ -s "$scratch/verify.err" ]; then
  cat "$scratch/verify.err" >&2
  echo "FAIL: systemd-analyze verify complained about the unit from \`backline unit\`" >&2
  exit 1
fi
echo "PASS: backline unit --library /home/...: $(echo "$rendered" | grep -o 'exposure level.*'), verify clean"
