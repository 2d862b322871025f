#!/usr/bin/env bash
# A bounded soak of mjgate on 127.0.0.1: many clients, mixed ids, several credentials, upstream faults
# switched on and off, with the gateway's RSS, cache size and error counts sampled throughout.
#
#   bench/soak.sh                    # 10 minutes
#   SOAK_SECS=120 bench/soak.sh      # a short one
#
# The simulator cycles every CHAOS period through: normal, 500s, 429 with Retry-After: 2, 2 s latency.
# The cache budget is small (CACHE) so that it fills early: after that, RSS must stay flat.
set -euo pipefail

SOAK_SECS=${SOAK_SECS:-600}
SAMPLE_SECS=${SAMPLE_SECS:-30}
CHAOS=${CHAOS:-30s}
CACHE=${CACHE:-16MiB}
TASKS=${TASKS:-20000}

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
WORK=$(mktemp -d /tmp/mjgate-soak.XXXXXX)
SIM=127.0.0.1:19500
GW=127.0.0.1:19600
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT


creds=()
for k in 0 1 2 3 4; do creds+=(--credential "Bearer sk-soak-$k"); done

# Half the tasks finish during the soak, half stay in progress: both kinds of entry churn.
"$BIN" simulator --listen "$SIM" --tasks "$TASKS" "${creds[@]}" --task-duration "$((SOAK_SECS / 2))s" \
    --chaos "$CHAOS" 2>"$WORK/sim.log" &
pids+=($!)
cat >"$WORK/mjgate.toml" <<EOF
listen = "$GW"
[upstream]
url = "http://$SIM"
request_timeout = "1s"
max_in_flight = 64
[cache]
in_progress_ttl = "3s"
max_memory = "$CACHE"
[log]
filter = "error"
EOF
"$BIN" --config "$WORK/mjgate.toml" 2>"$WORK/mjgate.log" &
pids+=($!)
wait_port "$SIM"
wait_port "$GW"
# The simulator listens before it has seeded every task: wait for all of them.
until curl -s "http://$SIM/_sim/stats" | grep -q "\"tasks\":$((5 * TASKS))"; do sleep 0.2; done

# 400 clients, each polling its own task every 100 ms, spread over all credentials.
"$BIN" bench --target "http://$GW" --clients 400 --tasks "$TASKS" --interval 100ms --duration "${SOAK_SECS}s" \
    "${creds[@]}" --sim-stats "http://$SIM/_sim/stats" --json >"$WORK/load.json" &
LOAD=$!
pids+=("$LOAD")
# Meanwhile 20 clients sweep through all 5 x TASKS ids, a new one every 100 ms each: the cache fills up
# and keeps evicting.
"$BIN" bench --target "http://$GW" --clients 20 --tasks "$TASKS" --interval 100ms --duration "${SOAK_SECS}s" \
    "${creds[@]}" --sweep --json >"$WORK/sweep.json" &
pids+=($!)

metric() { curl -s "http://$GW/metrics" | awk -v name="$1" '$1 ~ "^"name"($|\\{)" { s += $2 } END { printf "%.0f", s }'; }
echo "| t (s) | RSS MiB | cache entries | cache MiB | upstream calls | refused | client 5xx/429 seen | stale served |"
echo "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
start=$(date +%s)
while kill -0 "$LOAD" 2>/dev/null; do
    sleep "$SAMPLE_SECS"
    t=$(($(date +%s) - start))
    rss=$(metric process_resident_memory_bytes)
    entries=$(metric mjgate_cache_entries)
    bytes=$(metric mjgate_cache_weighted_bytes)
    upstream=$(metric mjgate_upstream_requests_total)
    refused=$(metric mjgate_upstream_refused_total)
    stale=$(curl -s "http://$GW/metrics" | awk '/^mjgate_requests_total\{cache="stale"/ { s += $2 } END { printf "%.0f", s }')
    errors=$(curl -s "http://$GW/metrics" | awk '/^mjgate_upstream_requests_total/ && /status="(5xx|4xx|timeout|error)"/ { s += $2 } END { printf "%.0f", s }')
    awk -v t="$t" -v rss="$rss" -v entries="$entries" -v bytes="$bytes" -v up="$upstream" -v refused="$refused" \
        -v errors="$errors" -v stale="$stale" \
        'BEGIN { printf "| %d | %.1f | %s | %.1f | %s | %s | %s | %s |\n", t, rss / 1048576, entries, bytes / 1048576, up, refused, errors, stale }'
done
wait "$LOAD" || true
python3 - "$WORK/load.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
load, up = r["load"], r["upstream"]
print(f"\nclients: {load['requests']:,} requests, {load['throughput']:.0f}/s, p50 {load['latency_ms']['p50']:.2f} ms, "
      f"p99 {load['latency_ms']['p99']:.2f} ms, statuses {dict((str(k), v) for k, v in load['statuses'])}")
print(f"upstream: {up['total']:,} calls ({up['fetches']:,} fetches)")
EOF
# Nothing mixed between credentials: every id answered for key k belongs to key k.
for k in 0 4; do
    id="task-$k-7"
    own=$(curl -s -H "Authorization: Bearer sk-soak-$k" "http://$GW/mj/task/$id/fetch" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("id"))' 2>/dev/null || true)
    other=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer sk-soak-$(((k + 1) % 5))" "http://$GW/mj/task/$id/fetch")
    echo "credential check: key $k sees $id -> ${own:-error}; key $(((k + 1) % 5)) gets HTTP $other"
done
