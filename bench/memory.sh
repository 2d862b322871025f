#!/usr/bin/env bash
# Memory per cached terminal task: fill mjgate's cache with TASKS distinct finished tasks (each asked
# for once, `mjgate bench --sweep`) and divide the growth of its RSS by the entries held.
#
#   bench/memory.sh            # 100,000 tasks, each stored with its gzip copy (cache.gzip, the default)
#   GZIP=false bench/memory.sh # identity only
set -euo pipefail
TASKS=${TASKS:-100000}
GZIP=${GZIP:-true}
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
SIM=127.0.0.1:19700
GW=127.0.0.1:19800
WORK=$(mktemp -d /tmp/mjgate-memory.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
"$BIN" simulator --listen "$SIM" --tasks "$TASKS" 2>/dev/null &
pids+=($!)
printf 'listen = "%s"\n[upstream]\nurl = "http://%s"\n[cache]\nmax_memory = "2GiB"\ngzip = %s\n[log]\nfilter = "warn"\n' "$GW" "$SIM" "$GZIP" >"$WORK/m.toml"
"$BIN" --config "$WORK/m.toml" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://$GW/healthz" && curl -s -o /dev/null "http://$SIM/_sim/stats" && break; sleep 0.2; done
metric() { curl -s "http://$GW/metrics" | awk -v m="$1" 'index($1, m) == 1 { s += $2 } END { printf "%.0f", s }'; }
body=$(curl -s -H 'Authorization: Bearer sk-bench' "http://$SIM/mj/task/task-1/fetch" | wc -c)
# Warm the connections and buffers with ids that are not cached for long, then measure.
"$BIN" bench --target "http://$GW" --clients 64 --tasks 2000 --interval 0s --duration 60s --sweep --id-prefix warm- >/dev/null
sleep 2
before=$(metric process_resident_memory_bytes)
"$BIN" bench --target "http://$GW" --clients 64 --tasks "$TASKS" --interval 0s --duration 300s --sweep | head -1
sleep 1
after=$(metric process_resident_memory_bytes)
entries=$(metric 'mjgate_cache_entries{class="terminal"}')
weighted=$(metric 'mjgate_cache_weighted_bytes{class="terminal"}')
awk -v b="$body" -v d="$((after - before))" -v n="$entries" -v w="$weighted" 'BEGIN {
    printf "body %d bytes; %d entries; RSS grew %.0f bytes per entry (%.0f above the body); target 1.5 x body + 200 = %.0f; the weigher charges %.0f per entry\n", b, n, d / n, d / n - b, 1.5 * b + 200, w / n }'
