#!/usr/bin/env bash
# The demonstration (README): three rmem-servers on this machine lend their memory; a workload
# checkpoints into them with parity, is killed with SIGKILL, one server's memory is revoked by its
# owner, and the workload restarts from remote memory and must finish with the digest of an
# uninterrupted run. Then the same for an unmodified C program under LD_PRELOAD, and a table of
# checkpoint latency and overhead, remote memory against the local disk.
# Needs only cargo and a C compiler; everything is built and started here, and stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
rel="$root/target/release"

echo "== building (release)"
cargo build --release -q -p ckpt -p rmem-server -p ckpt-rmem -p ckpt-cli
cargo build --release -q --examples
make -s -C examples/c OUT="$rel/native-examples/c"

work=$(mktemp -d "${TMPDIR:-/tmp}/ckpt-demo.XXXXXX")
servers=()
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# No stray descriptors: a checkpoint refuses pipes it could not restore.
for fd in $(ls /proc/$$/fd); do [ "$fd" -gt 2 ] && [ "$fd" != 255 ] && eval "exec $fd>&-" 2>/dev/null || true; done

# The key the servers authenticate clients with, and the key pages are encrypted under.
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$work/psk"
od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$work/data.key"
chmod 600 "$work/psk" "$work/data.key"

echo
echo "== starting three rmem-servers (512 MiB each, lent from this machine's memory)"
addrs=()
for i in 1 2 3; do
  "$rel/rmem-server" serve --listen 127.0.0.1:0 --capacity 512M --key-file "$work/psk" \
    --admin-socket "$work/srv$i.sock" > "$work/srv$i.out" 2> "$work/srv$i.log" &
  servers+=($!)
  for _ in $(seq 100); do grep -q '^listening' "$work/srv$i.out" 2>/dev/null && break; sleep 0.05; done
  addr=$(sed -n 's/^listening //p' "$work/srv$i.out")
  [ -n "$addr" ] || { echo "server $i did not start:"; cat "$work/srv$i.log"; exit 1; }
  addrs+=("$addr")
  echo "   server $i: $addr (admin socket srv$i.sock)"
done
remote="rmem://$(IFS=,; echo "${addrs[*]}")?key=$work/psk&datakey=$work/data.key&redundancy=parity&dir=$work/rmem-local"

digest() { sed -n 's/^digest //p' "$1" | tail -1; }
now() { date +%s.%N; }
secs() { awk "BEGIN { printf \"%.2f\", $2 - $1 }"; }
committed() { grep -c 'committed (' "$1" || true; }

# kill_revoke_restart NAME PRELOAD COMMAND...: an uninterrupted run, then a run checkpointing into
# remote memory killed halfway, server 2 revoked, and the restart from remote memory.
kill_revoke_restart() {
  local name=$1 preload=$2; shift 2
  local log="$work/$name.log"
  echo
  echo "== $name: $*"
  local t0 t1 base want
  t0=$(now); "$@" > "$work/$name.base" 2>/dev/null; t1=$(now)
  base=$(secs "$t0" "$t1"); want=$(digest "$work/$name.base")
  echo "   uninterrupted: $base s, digest $want"
  local at
  at=$(awk "BEGIN { print $base * (0.4 + 0.2 * $RANDOM / 32767) }")
  CKPT_STORE=$remote CKPT_INTERVAL=300ms CKPT_LOG=info LD_PRELOAD=$preload "$@" > "$work/$name.out" 2> "$log" &
  local pid=$!
  sleep "$at"
  if kill -9 "$pid" 2>/dev/null; then
    wait "$pid" 2>/dev/null || true
    printf '   killed with SIGKILL after %.1f s; %s checkpoint(s) committed to remote memory\n' "$at" "$(committed "$log")"
  else
    wait "$pid" 2>/dev/null || true
    echo "   finished before the kill at $at s"
  fi
  echo "   the owner of server 2 takes its memory back (revoke, 1 s deadline):"
  "$rel/rmem-server" revoke --admin-socket "$work/srv2.sock" --deadline 1s | sed 's/^/     /'
  sleep 1.5
  echo "     server 2 is now: $("$rel/rmem-server" state --admin-socket "$work/srv2.sock")"
  t0=$(now)
  CKPT_STORE=$remote CKPT_INTERVAL=300ms CKPT_LOG=info LD_PRELOAD=$preload "$@" > "$work/$name.out" 2> "$log.restart"
  t1=$(now)
  grep -o 'restored generation [0-9]* ([0-9.]* MiB) in [0-9.]* ms' "$log.restart" | sed 's/^/   /' || true
  local got; got=$(digest "$work/$name.out")
  echo "   restarted run: $(secs "$t0" "$t1") s, digest $got"
  "$rel/rmem-server" resume --admin-socket "$work/srv2.sock" > /dev/null
  if [ "$got" = "$want" ] && grep -q 'restored generation' "$log.restart"; then
    echo "   OK: restored from remote memory with one server revoked, identical to the uninterrupted run"
  else
    echo "   FAILED: expected digest $want after a restore"
    cat "$log" "$log.restart"
    return 1
  fi
}

kill_revoke_restart lu-rust "" "$rel/examples/lu" 2560
kill_revoke_restart matmul-c "$rel/libckpt.so" "$rel/native-examples/c/matmul" 1024

# One row of the table: the example run to the end checkpointing into STORE every INTERVAL.
row() {
  local label=$1 store=$2 base=$3; shift 3
  local log="$work/row.log" t0 t1 total
  rm -rf "$work/disk-store"
  t0=$(now)
  CKPT_STORE=$store CKPT_INTERVAL=500ms CKPT_LOG=info "$@" > "$work/row.out" 2> "$log"
  t1=$(now)
  total=$(secs "$t0" "$t1")
  sed -n 's/.*committed ([^)]*): \([0-9.]*\) MiB in [0-9]* runs, \([0-9.]*\) ms, paused \([0-9.]*\) ms.*/\1 \2 \3/p' "$log" |
    awk -v label="$label" -v total="$total" -v base="$base" '
      { n++; mib += $1; ms += $2; paused += $3 }
      END { if (n) printf "| %-13s | %4d | %8.1f | %10.1f | %9.1f | %7.2f s | %+6.2f s (%+.0f %%) |\n",
              label, n, mib / n, ms / n, paused / n, total, total - base, (total - base) / base * 100 }'
  [ "$(digest "$work/row.out")" = "$(digest "$work/lu-rust.base")" ] || { echo "   wrong digest under $label"; cat "$log"; return 1; }
}

echo
echo "== checkpoint latency and overhead: lu 2560, a checkpoint every 500 ms, sequential policy"
t0=$(now); "$rel/examples/lu" 2560 > /dev/null 2>&1; t1=$(now); base=$(secs "$t0" "$t1")
echo
echo "| store         | ckpts | MiB each | latency ms | paused ms | run time | overhead         |"
echo "| ------------- | ----: | -------: | ---------: | --------: | -------: | ---------------: |"
printf '| %-13s | %4s | %8s | %10s | %9s | %7.2f s | %16s |\n' "none" - - - - "$base" -
row "local disk" "dir:$work/disk-store" "$base" "$rel/examples/lu" 2560
row "remote memory" "$remote" "$base" "$rel/examples/lu" 2560
echo
echo "(latency: from the start of a checkpoint to its commit, as logged; remote memory: parity over"
echo " the three servers, pages encrypted; the disk's figures include the page cache, see docs/benchmarks.md)"
echo
echo "demo passed"
