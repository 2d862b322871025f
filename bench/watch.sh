#!/usr/bin/env bash
# Plain polling, conditional polling (If-None-Match) and long-poll (?wait=) through mjgate, on
# 127.0.0.1 only: client requests, bytes the clients receive, and upstream calls.
#
#   bench/watch.sh                  # about 2 minutes
#   POLL_SECS=15 bench/watch.sh     # a quick look
#
# Each mode from a fresh simulator (50 tasks finishing TASK_SECS after it starts) and a fresh gateway:
# 200 clients each watch one task for POLL_SECS; the pollers ask every second.
set -euo pipefail

POLL_SECS=${POLL_SECS:-30}
TASK_SECS=${TASK_SECS:-$((POLL_SECS * 2 / 3))}

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
ulimit -n 65536 2>/dev/null || true

WORK=$(mktemp -d /tmp/mjgate-watch.XXXXXX)
SIM=127.0.0.1:19000
MJGATE=127.0.0.1:19200
KEY="Bearer sk-bench"
sim_pid="" gw_pid=""

cleanup() {
    for pid in $sim_pid $gw_pid; do kill "$pid" 2>/dev/null || true; done
    sleep 0.3
    rm -rf "$WORK"
}
trap cleanup EXIT

cat >"$WORK/mjgate.toml" <<EOF
listen = "$MJGATE"
[upstream]
url = "http://$SIM"
[cache]
in_progress_ttl = "3s"
[log]
filter = "warn"
EOF

# run NAME BENCH-ARGS...
run() {
    local name=$1
    shift
    echo "== $name: ${POLL_SECS}s" >&2
    for pid in $sim_pid $gw_pid; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    "$BIN" simulator --listen "$SIM" --tasks 50 --credential "$KEY" --task-duration "${TASK_SECS}s" 2>/dev/null &
    sim_pid=$!
    wait_port "$SIM"
    "$BIN" --config "$WORK/mjgate.toml" 2>>"$WORK/mjgate.log" &
    gw_pid=$!
    wait_port "$MJGATE"
    "$BIN" bench --target "http://$MJGATE" --clients 200 --tasks 50 --duration "${POLL_SECS}s" \
        --credential "$KEY" --sim-stats "http://$SIM/_sim/stats" --json "$@" >"$WORK/$name.json"
}

run poll --interval 1s
run conditional --interval 1s --conditional
run long-poll --interval 0s --wait 30s

python3 - "$WORK" "$POLL_SECS" "$TASK_SECS" <<'EOF'
import json, sys
work, poll_secs, task_secs = sys.argv[1:]
rows = [("poll", "poll every 1 s"), ("conditional", "poll every 1 s with If-None-Match"),
        ("long-poll", "long-poll, wait=30s, If-None-Match")]
print(f"\n200 clients watching 50 tasks (finishing after {task_secs}s) for {poll_secs}s through mjgate, in_progress_ttl 3s\n")
print("| clients | client requests | 200 / 304 | body bytes to clients | upstream calls | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name, label in rows:
    r = json.load(open(f"{work}/{name}.json"))
    load, up = r["load"], r["upstream"]
    statuses = dict(load["statuses"])
    ok, nm = statuses.get(200, 0), statuses.get(304, 0)
    print(f"| {label} | {load['requests']:,} | {ok:,} / {nm:,} | {load['body_bytes']:,} | {up['fetches']:,} | {load['errors']} |")
EOF
