#!/usr/bin/env bash
# The demonstration: a workload is checkpointed every 300 ms, killed with SIGKILL twice at random
# moments, restarted each time, and must finish with the digest of an uninterrupted run. Done for
# the Rust LU workload (linked with ckpt) and for an unmodified C program under LD_PRELOAD.
# Needs only cargo and a C compiler; everything is built here.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

echo "== building (release)"
cargo build --release -q -p ckpt
cargo build --release -q --examples
make -s -C examples/c OUT="$root/target/release/native-examples/c"

work=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
# No stray descriptors: a checkpoint refuses pipes it could not restore.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && [ "$fd" != 255 ] && eval "exec $fd>&-" 2>/dev/null || true; done

digest() { sed -n 's/^digest //p' "$1" | tail -1; }

# demo NAME PRELOAD COMMAND...
demo() {
  local name=$1 preload=$2; shift 2
  local store="$work/$name-store" log="$work/$name.log"
  echo
  echo "== $name: $*"
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > "$work/$name.base" 2>/dev/null
  t1=$(date +%s.%N)
  local base_s want
  base_s=$(awk "BEGIN { print $t1 - $t0 }")
  want=$(digest "$work/$name.base")
  printf '   uninterrupted: %.1f s, digest %s\n' "$base_s" "$want"
  : > "$log"
  # The first run is killed 30-60 % of the way in; a restarted one has less left to do, so it is
  # killed 15-30 % of the uninterrupted time after it starts.
  for k in 1 2; do
    local at
    if [ "$k" = 1 ]; then
      at=$(awk "BEGIN { print $base_s * (0.3 + 0.3 * $RANDOM / 32767) }")
    else
      at=$(awk "BEGIN { print $base_s * (0.15 + 0.15 * $RANDOM / 32767) }")
    fi
    CKPT_DIR=$store CKPT_INTERVAL=300ms CKPT_LOG=info LD_PRELOAD=$preload "$@" > "$work/$name.out" 2>> "$log" &
    local pid=$!
    sleep "$at"
    if kill -9 "$pid" 2>/dev/null; then
      wait "$pid" 2>/dev/null || true
      printf '   killed with SIGKILL after %.1f s (%s committed checkpoint(s) on disk)\n' "$at" "$(ls "$store" 2>/dev/null | grep -c '\.ckpt$' || true)"
    else
      wait "$pid" 2>/dev/null || true
      echo "   finished before the kill at ${at} s"
    fi
  done
  t0=$(date +%s.%N)
  CKPT_DIR=$store CKPT_INTERVAL=300ms CKPT_LOG=info LD_PRELOAD=$preload "$@" > "$work/$name.out" 2>> "$log"
  t1=$(date +%s.%N)
  local got
  got=$(digest "$work/$name.out")
  grep -o 'restored generation [0-9]* ([0-9.]* MiB) in [0-9.]* ms' "$log" | sed 's/^/   /'
  sed -n 's/.*committed ([^)]*): \([0-9.]*\) MiB in [0-9]* runs, \([0-9.]*\) ms.*/\1 \2/p' "$log" |
    awk '{ n++; mib += $1; ms += $2 } END { if (n) printf "   %d checkpoints, %.1f MiB each, %.1f ms each on average (%.0f MiB/s)\n", n, mib/n, ms/n, (mib/n)/(ms/n/1000) }'
  printf '   final run: %.1f s, digest %s\n' "$(awk "BEGIN { print $t1 - $t0 }")" "$got"
  if [ "$got" = "$want" ]; then
    echo "   OK: identical to the uninterrupted run"
  else
    echo "   MISMATCH: expected $want"
    cat "$log"
    return 1
  fi
}

demo lu-rust "" "$root/target/release/examples/lu" 2560
demo matmul-c "$root/target/release/libckpt.so" "$root/target/release/native-examples/c/matmul" 1024
echo
echo "demo passed"
