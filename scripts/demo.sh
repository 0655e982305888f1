#!/usr/bin/env bash
# CheckSync demo: set up, then protect the kvstore fixture with a live primary and
# backup while a load client runs through the public port; kill the primary's
# "machine" (the primary driver and the program it protects, SIGKILL); the backup
# takes over from its in-memory copy, the client reconnects to the same public
# address; a new backup joins and the promoted side protects itself to it
# (re-protection, under the same load); the client's recorded history is checked.
#
# Everything runs on this host: the primary's and the backup's processes share the
# loopback, so the public port moves simply because the dead primary's listener is
# gone. The two-machine version (network namespaces, a machine powered off, a
# floating public address) is the test `cargo test --release -p cs-tests --test replication`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
bash scripts/setup.sh

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building cs-driver, the restore stub, cs-check and the Go fixtures"
cargo build -q --release -p cs-driver -p cs-tests --bins
cargo build -q --release -p restore-stub --features bin
bash scripts/build-fixtures.sh >/dev/null
B=go-fixtures/build/go1.27.3
T=${CARGO_TARGET_DIR:-target}/release
CS=$T/cs-driver
PUBLIC=127.0.0.1:18000 APP=127.0.0.1:17000 REPL=127.0.0.1:19100 REPL2=127.0.0.1:19103
PSTAT=127.0.0.1:19102 BSTAT=127.0.0.1:19101
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  # The program the backup restored (its host pid is in the backup's log).
  rp=$(grep -o 'host_pid=[0-9]*' "$work/backup.log" 2>/dev/null | head -n 1 | cut -d= -f2 || true)
  [ -n "$rp" ] && kill -9 "$rp" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

say "a shared key for the pair: cs-driver keygen"
"$CS" keygen "$work/key"

say "backup: cs-driver backup --listen $REPL --serve $PUBLIC --peer $REPL2"
"$CS" backup --listen "$REPL" --key "$work/key" --serve "$PUBLIC" --status "$BSTAT" --peer "$REPL2" \
  --app-stdout "$work/restored.out" --app-stderr "$work/restored.err" 2>"$work/backup.log" &
pids+=($!)
sleep 0.5

say "primary: cs-driver primary --serve $PUBLIC=$APP -- kvstore (Go 1.27.3, 64 MiB preloaded)"
"$CS" primary --backup "$REPL" --key "$work/key" --serve "$PUBLIC=$APP" --status "$PSTAT" \
  -- "$B/kvstore" -addr "$APP" -preload-mib 64 >"$work/kv.out" 2>"$work/primary.log" &
primary=$!
pids+=($primary)
for _ in $(seq 300); do grep -q PROTECTED "$work/primary.log" && break; sleep 0.1; done
grep -q PROTECTED "$work/primary.log" || { cat "$work/primary.log" "$work/backup.log"; exit 1; }
cat "$work/primary.log"

say "load client through the public port: 4 connections for 10 s, recording every operation"
"$B/kvclient" -addr "$PUBLIC" -conns 4 -duration 10s -keys 50 -history "$work/history.jsonl" \
  >"$work/client.json" 2>"$work/client.err" &
client=$!
pids+=($client)
sleep 4
say "status of the primary (cs-driver status $PSTAT)"
"$CS" status "$PSTAT" | grep -v '^#' | grep -v _bucket

say "the primary's machine dies: SIGKILL the primary driver and the kvstore"
kv=$(pgrep -P "$primary" | head -n 1)
kill -9 "$primary" "$kv"
for _ in $(seq 100); do grep -q PROMOTED "$work/backup.log" && break; sleep 0.1; done
cat "$work/backup.log"

say "a new backup joins (the dead machine, started again empty): cs-driver backup --listen $REPL2 --peer $REPL"
"$CS" backup --listen "$REPL2" --key "$work/key" --serve "$PUBLIC" --peer "$REPL" 2>"$work/backup2.log" &
pids+=($!)
for _ in $(seq 300); do grep -q "PROTECTED: the backup committed" "$work/backup.log" && break; sleep 0.1; done
grep -q "PROTECTED: the backup committed" "$work/backup.log" || { cat "$work/backup.log" "$work/backup2.log"; exit 1; }
grep -E "re-protecting|PROTECTED" "$work/backup.log"
cat "$work/backup2.log"

say "waiting for the load client to finish"
wait "$client" || true
echo "client summary: $(tail -n 1 "$work/client.json")"
say "status of the promoted backup (cs-driver status $BSTAT)"
"$CS" status "$BSTAT" | grep -v '^#' | grep -v _bucket

say "checking: the history is linearizable, every preloaded value is intact"
"$T/cs-check" kv "$work/history.jsonl"
"$T/cs-check" preload "$PUBLIC" 64
say "done: the service survived the loss of its primary with no wrong answer, and is protected again"
