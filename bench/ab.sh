#!/usr/bin/env bash
# Cache-hit throughput of two mjgate binaries, paired: the same wrk load against each in turn, ROUNDS
# pairs, each from a fresh process, so a change's cost shows above the machine's noise.
#
#   git worktree add /tmp/base 98a8a41 && (cd /tmp/base && cargo build --release)
#   BASE=/tmp/base/target/release/mjgate bench/ab.sh      # this tree's release build against it
#   NEW=/tmp/other/release/mjgate BASE=... bench/ab.sh     # or any two builds
set -euo pipefail
: "${BASE:?set BASE to the other mjgate binary}"
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-8}
CONNS=${CONNS:-256}
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ensure wrk:wrk
# NEW: a binary built elsewhere (another target dir); else this tree's release build.
if [ -z "${NEW:-}" ]; then
    cargo build --release --quiet
    NEW=$PWD/target/release/mjgate
fi
SIM=127.0.0.1:19900
GW=127.0.0.1:19901
KEY="Bearer sk-bench"
WORK=$(mktemp -d /tmp/mjgate-ab.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
"$NEW" simulator --listen "$SIM" --tasks 50 --credential "$KEY" 2>/dev/null &
pids+=($!)
wait_port "$SIM"
# Keys both binaries know: the older one refuses keys it does not.
printf 'listen = "%s"\n[upstream]\nurl = "http://%s"\n[server]\nmax_connections = 20000\n[log]\nfilter = "warn"\n' \
    "$GW" "$SIM" >"$WORK/gw.toml"
printf 'wrk.headers["Authorization"] = "%s"\nwrk.path = "/mj/task/task-9/fetch"\n' "$KEY" >"$WORK/hit.lua"
run() { # name binary
    # Kept files (on by default since they were built) go to the run's own directory.
    MJGATE_ARTIFACTS_DIR="$WORK/kept-$1" "$2" --config "$WORK/gw.toml" 2>/dev/null &
    local gw=$!
    wait_port "$GW"
    curl -s -o /dev/null -H "Authorization: $KEY" "http://$GW/mj/task/task-9/fetch"
    # The finished task's image is kept and its answer linked to it in the background: the load
    # measures the linked answer.
    sleep 0.5
    curl -s -o /dev/null -H "Authorization: $KEY" "http://$GW/mj/task/task-9/fetch"
    echo "$1 $(wrk -t1 -c"$CONNS" -d"${SECS}s" -s "$WORK/hit.lua" "http://$GW" | awk '/Requests\/sec/ { print $2 }')"
    kill "$gw"; wait "$gw" 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
    run base "$BASE"
    run new "$NEW"
done | tee "$WORK/pairs.txt"
python3 - "$WORK/pairs.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
base = [float(r) for n, r in rows if n == "base"]
new = [float(r) for n, r in rows if n == "new"]
ratios = [n / b for b, n in zip(base, new)]
print(f"base median {statistics.median(base):,.0f} req/s, new median {statistics.median(new):,.0f} req/s, "
      f"median of the pairs' ratios {statistics.median(ratios):.3f}")
PY
