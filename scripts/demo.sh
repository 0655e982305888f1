#!/usr/bin/env bash
# CheckSync demo: set up, then protect the kvstore fixture while a load client runs,
# checkpoint it, kill it (the "machine dies"), bring it back from the checkpoint in a
# fresh process, and show that the client carried on and every answer was right.
#
# Live primary/backup replication is not built yet: this demo fails over from a
# checkpoint image on one host (cs-driver dump / restore). See README "Status".
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
CS=target/release/cs-driver
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

say "starting kvstore (Go 1.27.3, MPTCP listener, 64 MiB preloaded)"
"$B/kvstore" -addr 127.0.0.1:0 -preload-mib 64 >"$work/kv.out" 2>"$work/kv.err" &
pids+=($!)
for _ in $(seq 100); do grep -q READY "$work/kv.out" && break; sleep 0.1; done
read -r _ pid addr <"$work/kv.out"
echo "kvstore pid $pid listening on $addr"

say "load client: 4 connections for 8 s, recording every operation"
"$B/kvclient" -addr "$addr" -conns 4 -duration 8s -keys 50 -history "$work/history.jsonl" \
  >"$work/client.json" 2>"$work/client.err" &
client=$!
pids+=($client)
sleep 2

say "checkpoint + primary death: cs-driver dump $pid (captures, then kills the program)"
"$CS" dump "$pid" -o "$work/kv.img"
"$CS" inspect "$work/kv.img" | head -n 12

say "failover: cs-driver restore (fresh process, same pid and tids in new pid/time namespaces)"
restored=$("$CS" restore "$work/kv.img" --detach --stdout "$work/restored.out" --stderr "$work/restored.err")
pids+=($restored)
echo "restored program runs as host pid $restored; inside its namespace it is still pid $pid:"
grep NSpid "/proc/$restored/status"

say "waiting for the load client to finish"
wait "$client" || true
echo "client summary: $(tail -n 1 "$work/client.json")"
grep -E "reconnect|connection" "$work/client.err" | tail -n 3 || true

say "checking: the history is linearizable, every preloaded value is intact"
target/release/cs-check kv "$work/history.jsonl"
target/release/cs-check preload "$addr" 64
say "done: the service survived the loss of its process with no wrong answer"
