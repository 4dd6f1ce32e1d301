#!/usr/bin/env bash
# Memory, disk and restart of an edge over a long MQTT run (until `ledger-bench soak` does
# it): starts NODE_BIN on the embedded default in a fresh directory, drives it with
# `ledger-bench mqtt --connect` for SECONDS, prints every 10 s the journal head, the node's
# RSS (KiB) and the redb file size (bytes), then SIGKILLs it and times the restart until
# it prints "ready". Needs curl and the embedded default's ports (1883, 9464) free.
#
#   tests/soak.sh target/release/ledger-node target/release/ledger-bench 90 LABEL
set -u
node=$(realpath "$1"); bench=$(realpath "$2"); secs=$3; label=$4
dir=$(mktemp -d); cd "$dir" || exit 1
"$node" > node.log 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q "ready" node.log && break; sleep 0.1; done
head_seq() { curl -s http://127.0.0.1:9464/metrics | awk '/^edgeledger_journal_head_seq /{print $2}'; }
sample() { echo "$label head=$(head_seq) rss_kib=$(awk '/VmRSS/{print $2}' /proc/$pid/status) file_bytes=$(stat -c %s data/ledger.redb)"; }
"$bench" mqtt --connect 127.0.0.1:1883 --ledger-only --seconds "$secs" > run.txt 2>&1 &
driver=$!
while kill -0 $driver 2>/dev/null; do sample; sleep 10; done
sample
grep -o "RESULT.*" run.txt | sed "s/^/$label /"
kill -9 $pid; wait $pid 2>/dev/null
start=$(date +%s%N)
"$node" > node2.log 2>&1 &
pid=$!
for _ in $(seq 1 12000); do grep -q "ready" node2.log && break; sleep 0.01; done
echo "$label restart_ms=$(( ($(date +%s%N) - start) / 1000000 )) head=$(head_seq)"
kill -9 $pid; wait $pid 2>/dev/null
cd / && rm -rf "$dir"
