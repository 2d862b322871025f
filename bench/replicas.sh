#!/usr/bin/env bash
# Upstream calls with 1 and with 3 mjgate replicas, on 127.0.0.1 only: the same client load through an
# nginx balancer, with and without consistent hashing, with and without the shared Redis tier (one
# server, or a three-master Redis Cluster with a replica each); then cache-hit throughput of one replica
# with no Redis, one server and the cluster (hits never touch Redis).
#
#   bench/replicas.sh                 # about 10 minutes
#   POLL_SECS=15 bench/replicas.sh    # a quick look
#   HITS_ONLY=1 bench/replicas.sh     # only the hit rounds (HIT_ROUNDS of HIT_SECS per layout)
#
# For each setup, from a fresh simulator (50 tasks finishing TASK_SECS after it starts) and empty caches:
#   poll:    200 clients poll the 50 tasks every 250 ms for POLL_SECS (the tasks finish midway)
#   restart: every replica is restarted, then 200 clients poll the finished tasks for 5 s
# and the simulator counts the upstream calls each phase caused.
set -euo pipefail

POLL_SECS=${POLL_SECS:-30}
TASK_SECS=${TASK_SECS:-$((POLL_SECS * 2 / 3))}

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ensure nginx:nginx-light redis-server:redis-server redis-cli:redis-tools wrk:wrk
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
ulimit -n 65536 2>/dev/null || true

WORK=$(mktemp -d /tmp/mjgate-replicas.XXXXXX)
chmod 755 "$WORK"
SIM=127.0.0.1:19000
REDIS_PORT=19500
LB=127.0.0.1:19600
REPLICAS=(127.0.0.1:19601 127.0.0.1:19602 127.0.0.1:19603)
KEY="Bearer sk-bench"
SECRET=bench-fingerprint-secret-0123456789
CLUSTER_PORTS=(19510 19511 19512 19513 19514 19515)
sim_pid="" redis_pid="" replica_pids=() cluster_pids=()

cleanup() {
    for pid in $sim_pid $redis_pid "${replica_pids[@]}" "${cluster_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    --maxmemory 256mb --maxmemory-policy allkeys-lru >/dev/null &
redis_pid=$!
wait_port "127.0.0.1:$REDIS_PORT"

# Six cluster nodes (bus ports +20), joined as three masters with a replica each.
for port in "${CLUSTER_PORTS[@]}"; do
    mkdir -p "$WORK/node-$port"
    (cd "$WORK/node-$port" && exec redis-server --port "$port" --cluster-port $((port + 20)) \
        --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 1000 \
        --save "" --appendonly no --maxmemory 256mb --maxmemory-policy allkeys-lru >/dev/null) &
    cluster_pids+=($!)
    wait_port "127.0.0.1:$port"
done
redis-cli --cluster create $(printf '127.0.0.1:%s ' "${CLUSTER_PORTS[@]}") --cluster-replicas 1 \
    --cluster-yes >/dev/null
for _ in $(seq 100); do
    redis-cli -p "${CLUSTER_PORTS[0]}" cluster info | grep -q cluster_state:ok && break
    sleep 0.1
done
SEEDS=$(printf '"redis://127.0.0.1:%s", ' "${CLUSTER_PORTS[@]:0:3}")

flush_redis() {
    redis-cli -p "$REDIS_PORT" flushall >/dev/null
    for port in "${CLUSTER_PORTS[@]}"; do
        redis-cli -p "$port" flushall >/dev/null 2>&1 || true # replicas refuse it: their master's counts
    done
}

start_sim() { # start_sim [TASK_DURATION]
    [ -n "$sim_pid" ] && { kill "$sim_pid"; wait "$sim_pid" 2>/dev/null || true; }
    "$BIN" simulator --listen "$SIM" --tasks 50 --credential "$KEY" --task-duration "${1:-${TASK_SECS}s}" 2>/dev/null &
    sim_pid=$!
    wait_port "$SIM"
}

# start_replicas COUNT SHARED(no|redis|cluster)
start_replicas() {
    local count=$1 shared=$2
    for ((i = 0; i < count; i++)); do
        local conf="$WORK/mjgate-$i.toml"
        cat >"$conf" <<EOF
listen = "${REPLICAS[$i]}"
[upstream]
url = "http://$SIM"
[cache]
in_progress_ttl = "3s"
[log]
filter = "warn"
EOF
        case $shared in
        redis) printf '[shared_cache]\nredis_url = "redis://127.0.0.1:%s"\nfingerprint_secret = "%s"\n' \
            "$REDIS_PORT" "$SECRET" >>"$conf" ;;
        cluster) printf '[shared_cache]\ncluster = [%s]\nfingerprint_secret = "%s"\n' \
            "${SEEDS%, }" "$SECRET" >>"$conf" ;;
        esac
        "$BIN" --config "$conf" 2>>"$WORK/mjgate.log" &
        replica_pids+=($!)
        wait_port "${REPLICAS[$i]}"
    done
}

stop_replicas() {
    for pid in "${replica_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${replica_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    replica_pids=()
}

# start_balancer COUNT POLICY(hash|round-robin)
start_balancer() {
    local count=$1 policy=$2 servers=""
    for ((i = 0; i < count; i++)); do servers+="server ${REPLICAS[$i]};"; done
    local balance=""
    [ "$policy" = hash ] && balance="hash \$request_uri consistent;"
    [ -f "$WORK/nginx.pid" ] && { kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; sleep 0.3; }
    cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    upstream mjgate { $balance $servers keepalive 64; }
    server {
        listen $LB;
        location / {
            proxy_pass http://mjgate;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    nginx -c "$WORK/nginx.conf"
    wait_port "$LB"
}

poll() { # poll SECONDS OUT
    "$BIN" bench --target "http://$LB" --clients 200 --tasks 50 --interval 250ms --duration "$1" \
        --credential "$KEY" --sim-stats "http://$SIM/_sim/stats" --json >"$2"
}

# setup NAME COUNT POLICY SHARED
setup() {
    local name=$1
    echo "== $name: ${POLL_SECS}s polling, then a restart of every replica" >&2
    flush_redis
    start_sim
    start_replicas "$2" "$4"
    start_balancer "$2" "$3"
    poll "${POLL_SECS}s" "$WORK/$name-poll.json"
    stop_replicas
    start_replicas "$2" "$4"
    poll 5s "$WORK/$name-restart.json"
    stop_replicas
}

if [ -z "${HITS_ONLY:-}" ]; then
    setup one 1 hash no
    setup three-round-robin 3 round-robin no
    setup three-hash 3 hash no
    setup three-round-robin-redis 3 round-robin redis
    setup three-hash-redis 3 hash redis
    setup three-round-robin-cluster 3 round-robin cluster
    setup three-hash-cluster 3 hash cluster
fi

# Commands the Redis of a layout has processed (every node of the cluster; 0 with none).
redis_commands() {
    local ports=()
    case $1 in
    redis) ports=("$REDIS_PORT") ;;
    cluster) ports=("${CLUSTER_PORTS[@]}") ;;
    esac
    local total=0
    for port in "${ports[@]}"; do
        total=$((total + $(redis-cli -p "$port" info stats | tr -d '\r' | awk -F: '/^total_commands_processed:/ {print $2}')))
    done
    echo "$total"
}

# Hits: one replica, one finished task fetched once, then wrk on it for HIT_SECS; the layouts take
# turns for HIT_ROUNDS rounds (a single run on two cores varies by more than any difference).
HIT_SECS=${HIT_SECS:-10}
HIT_ROUNDS=${HIT_ROUNDS:-3}
for round in $(seq "$HIT_ROUNDS"); do
    for shared in no redis cluster; do
        echo "== hits with shared tier: $shared (round $round)" >&2
        flush_redis
        start_sim 0s
        start_replicas 1 "$shared"
        curl -sf -H "Authorization: $KEY" "http://${REPLICAS[0]}/mj/task/task-1/fetch" >/dev/null || true
        before=$(redis_commands "$shared")
        wrk -t2 -c50 -d"${HIT_SECS}s" -H "Authorization: $KEY" "http://${REPLICAS[0]}/mj/task/task-1/fetch" \
            | awk '/Requests\/sec/ {print $2}' >>"$WORK/hits-$shared.txt"
        echo $(($(redis_commands "$shared") - before)) >>"$WORK/hits-$shared-commands.txt"
        stop_replicas
    done
done

python3 - "$WORK" "$POLL_SECS" "$TASK_SECS" "${HITS_ONLY:-}" <<'EOF'
import json, statistics, sys
work, poll_secs, task_secs, hits_only = sys.argv[1:]
rows = [("one", "1 replica"), ("three-round-robin", "3 replicas, round robin"),
        ("three-hash", "3 replicas, consistent hash"), ("three-round-robin-redis", "3 replicas, round robin + Redis"),
        ("three-hash-redis", "3 replicas, consistent hash + Redis"),
        ("three-round-robin-cluster", "3 replicas, round robin + Redis Cluster (3 masters)"),
        ("three-hash-cluster", "3 replicas, consistent hash + Redis Cluster (3 masters)")]
rows = [] if hits_only else rows
if rows:
    print(f"\n200 clients polling 50 tasks every 250 ms for {poll_secs}s (tasks finish after {task_secs}s), in_progress_ttl 3s;")
    print("then every replica restarted and the finished tasks polled for 5 s\n")
    print("| setup | client requests | upstream calls | calls per task | after restart: upstream calls | errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name, label in rows:
    p, r = (json.load(open(f"{work}/{name}-{x}.json")) for x in ("poll", "restart"))
    errors = p["load"]["errors"] + r["load"]["errors"]
    calls = p["upstream"]["fetches"]
    print(f"| {label} | {p['load']['requests']:,} | {calls:,} | {calls / 50:.1f} | {r['upstream']['fetches']} | {errors} |")
print("\nCache hits of one finished task, one replica, wrk -t2 -c50 (requests per second, each round and the median)\n")
print("| shared tier | rounds | median hits/s | Redis commands per round (all nodes) |")
print("| --- | --- | ---: | --- |")
for shared, label in (("no", "none"), ("redis", "one Redis server"), ("cluster", "Redis Cluster")):
    runs = [float(line) for line in open(f"{work}/hits-{shared}.txt") if line.strip()]
    commands = [line.strip() for line in open(f"{work}/hits-{shared}-commands.txt") if line.strip()]
    rounds = ", ".join(f"{r:,.0f}" for r in runs)
    print(f"| {label} | {rounds} | {statistics.median(runs) if runs else 0:,.0f} | {', '.join(commands)} |")
EOF
