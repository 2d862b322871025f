#!/usr/bin/env bash
# mjgate side by side with nginx proxy_cache and Varnish, over one simulated upstream, on 127.0.0.1 only.
#
#   bench/compare.sh                # full run (about 10 minutes)
#   POLL_SECS=20 ROUNDS=1 bench/compare.sh   # a quick look
#
# Loads (each bounded in time):
#   (a) cache hits only, CONNS connections, HIT_SECS per round, ROUNDS rounds interleaved: throughput, p99
#       (wrk); plus two ceilings: a bare hyper server and nginx `return 200`, both answering a fixed body;
#       and mjgate's hits spread over one task of each of the nine built-in task families (mjgate-mix),
#       and mjgate's hits for a client that accepts gzip (mjgate-gzip); then HTTP/2 hits over cleartext
#       (h2c, prior knowledge), H2_CONNS connections x H2_STREAMS streams (h2load, 1 thread), mjgate
#       against nginx's HTTP/2 proxy_cache
#   (b) 200 clients polling 50 in-progress tasks every 250 ms for POLL_SECS: upstream calls
#   (c) the same right after the tasks finish: upstream calls
#   (d) a cold burst of 1,000 clients on one new id: upstream calls, p99
# nginx: proxy_cache keyed on URI + credential headers, proxy_cache_lock on, proxy_cache_valid 200 3s.
# Varnish: hash on URL + credential headers, 3 s TTL. mjgate: in_progress_ttl 3s.
set -euo pipefail

ROUNDS=${ROUNDS:-3}
HIT_SECS=${HIT_SECS:-10}
POLL_SECS=${POLL_SECS:-60}
CONNS=${CONNS:-256}
H2_CONNS=${H2_CONNS:-64}
H2_STREAMS=${H2_STREAMS:-10}
BURST=${BURST:-1000}

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ensure nginx:nginx-light varnishd:varnish wrk:wrk h2load:nghttp2-client
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
ulimit -n 65536 2>/dev/null || true

WORK=$(mktemp -d /tmp/mjgate-compare.XXXXXX)
chmod 755 "$WORK"
SIM=127.0.0.1:19000
FIXED=127.0.0.1:19100
NGINX_FIXED=127.0.0.1:19101
MJGATE=127.0.0.1:19200
NGINX=127.0.0.1:19300
NGINX_H2=127.0.0.1:19301
VARNISH=127.0.0.1:19400
KEY="Bearer sk-bench"
pids=()

cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    [ -f "$WORK/varnish.pid" ] && kill "$(cat "$WORK/varnish.pid")" 2>/dev/null || true
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT


# The ceilings answer the very bytes the gateways serve from cache: the simulator's finished task-9.
"$BIN" simulator --listen "$SIM" --tasks 50 --credential "$KEY" 2>/dev/null &
body_sim=$!
wait_port "$SIM"
curl -s -H "Authorization: $KEY" "http://$SIM/mj/task/task-9/fetch" >"$WORK/task-1.json"
kill "$body_sim"; wait "$body_sim" 2>/dev/null || true
"$BIN" fixed-body --listen "$FIXED" --body-file "$WORK/task-1.json" 2>/dev/null &
pids+=($!)
wait_port "$FIXED"
TASK_BODY=$(curl -s "http://$FIXED/")
: "${TASK_BODY:?cannot read the fixed body}"

cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    # Connections live as long as the load does (HTTP/1.1 and HTTP/2 alike), as mjgate's do.
    keepalive_requests 10000000;
    proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=mj:16m max_size=256m inactive=10m use_temp_path=off;
    upstream sim { server $SIM; keepalive 64; }
    server {
        listen $NGINX reuseport backlog=4096;
        listen $NGINX_H2 http2 reuseport backlog=4096;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache mj;
            proxy_cache_key "\$request_uri|\$http_authorization|\$http_mj_api_secret";
            proxy_cache_lock on;
            proxy_cache_lock_timeout 30s;
            proxy_cache_valid 200 3s;
        }
    }
    server {
        listen $NGINX_FIXED reuseport backlog=4096;
        location / { default_type application/json; return 200 '$TASK_BODY'; }
    }
}
EOF

cat >"$WORK/mj.vcl" <<EOF
vcl 4.1;
backend sim { .host = "${SIM%:*}"; .port = "${SIM#*:}"; }
sub vcl_recv {
    # Cache GETs despite the credential headers (they are part of the hash below).
    if (req.method == "GET") { return (hash); }
    return (pass);
}
sub vcl_hash {
    hash_data(req.url);
    hash_data(req.http.Authorization);
    hash_data(req.http.mj-api-secret);
    return (lookup);
}
sub vcl_backend_response {
    if (beresp.status == 200) {
        set beresp.ttl = 3s;
        set beresp.grace = 0s;
    } else {
        set beresp.uncacheable = true;
        set beresp.ttl = 0s;
    }
    return (deliver);
}
EOF

cat >"$WORK/mjgate.toml" <<EOF
listen = "$MJGATE"
[upstream]
url = "http://$SIM"
[cache]
in_progress_ttl = "3s"
[server]
max_connections = 20000
[log]
filter = "warn"
EOF

start_sim() { # task duration [task APIs]
    [ -n "${SIM_PID:-}" ] && kill "$SIM_PID" 2>/dev/null && wait "$SIM_PID" 2>/dev/null || true
    "$BIN" simulator --listen "$SIM" --tasks 50 --credential "$KEY" --task-duration "$1" \
        --api "${2:-midjourney}" 2>>"$WORK/sim.log" &
    SIM_PID=$!
    pids+=("$SIM_PID")
    wait_port "$SIM"
}

start_gateway() { # name
    case $1 in
    mjgate)
        "$BIN" --config "$WORK/mjgate.toml" 2>>"$WORK/mjgate.log" &
        GW_PID=$!; pids+=("$GW_PID"); wait_port "$MJGATE" ;;
    nginx)
        rm -rf "$WORK/nginx-cache"
        nginx -c "$WORK/nginx.conf" -g 'daemon on;'
        wait_port "$NGINX"; wait_port "$NGINX_FIXED"; wait_port "$NGINX_H2" ;;
    varnish)
        varnishd -a "$VARNISH" -f "$WORK/mj.vcl" -s malloc,256m -n "$WORK/varnish" -P "$WORK/varnish.pid" \
            -p thread_pools=2 -p thread_pool_min=200 >/dev/null 2>>"$WORK/varnish.log"
        wait_port "$VARNISH" ;;
    esac
}

stop_gateway() { # name
    case $1 in
    mjgate) kill "$GW_PID" 2>/dev/null; wait "$GW_PID" 2>/dev/null || true ;;
    nginx) kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; sleep 0.5 ;;
    varnish) kill "$(cat "$WORK/varnish.pid")" 2>/dev/null || true; sleep 1 ;;
    esac
}

addr_of() {
    case $1 in
    mjgate | mjgate-mix | mjgate-gzip | mjgate-h2) echo "$MJGATE" ;; nginx) echo "$NGINX" ;;
    nginx-h2) echo "$NGINX_H2" ;; varnish) echo "$VARNISH" ;;
    fixed) echo "$FIXED" ;; nginx-fixed) echo "$NGINX_FIXED" ;;
    esac
}

# wrk's "99%" line in milliseconds.
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms/,"",v); print v } else if (v ~ /s$/) { sub(/s/,"",v); print v*1000 } else print v }'; }

median() { sort -g | awk '{ a[NR]=$1 } END { if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }

# The simulator seeds `--api mix`: task-i is of family i mod 9 (task-0, task-9, ... Midjourney).
cat >"$WORK/hit.lua" <<EOF
wrk.headers["Authorization"] = "$KEY"
wrk.path = "/mj/task/task-9/fetch"
EOF
# One finished task of each family, each on its own status route, in turn.
MIX_PATHS=(/mj/task/task-0/fetch /suno/fetch/task-1 /kling/v1/videos/text2video/task-2 /v1/videos/task-3
    /v1/video/generations/task-4 "/v1/video/query?id=task-5" /runwayml/v1/tasks/task-6 /luma/generations/task-7
    /volc/v1/contents/generations/tasks/task-8)
{
    echo "wrk.headers[\"Authorization\"] = \"$KEY\""
    printf 'local paths = {'; printf '"%s",' "${MIX_PATHS[@]}"; echo '}'
    echo 'local i = 0'
    echo 'request = function() i = i % #paths + 1; return wrk.format(nil, paths[i]) end'
} >"$WORK/mix.lua"

echo "== (a) cache hits: $ROUNDS rounds of ${HIT_SECS}s, $CONNS connections (wrk, 1 thread)" >&2
start_sim 0s mix
for gw in nginx varnish mjgate; do start_gateway "$gw"; done
hit_targets=(fixed nginx-fixed nginx varnish mjgate mjgate-mix mjgate-gzip)
h2_targets=(nginx-h2 mjgate-h2)
sed 's/^wrk.path/wrk.headers["Accept-Encoding"] = "gzip"\nwrk.path/' "$WORK/hit.lua" >"$WORK/gzip.lua"
for target in "${hit_targets[@]}"; do
    curl -s -o /dev/null -H "Authorization: $KEY" "http://$(addr_of "$target")/mj/task/task-9/fetch"
done
for path in "${MIX_PATHS[@]}"; do
    code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: $KEY" "http://$MJGATE$path")
    [ "$code" = 200 ] || { echo "mix: $path answered $code" >&2; exit 1; }
done
for round in $(seq "$ROUNDS"); do
    for target in "${hit_targets[@]}"; do
        script=hit.lua
        [ "$target" = mjgate-mix ] && script=mix.lua
        [ "$target" = mjgate-gzip ] && script=gzip.lua
        out=$(wrk -t1 -c"$CONNS" -d"${HIT_SECS}s" --latency -s "$WORK/$script" "http://$(addr_of "$target")")
        rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
        p99=$(echo "$out" | awk '$1 == "99%" { print $2 }' | to_ms)
        non2xx=$(echo "$out" | awk '/Non-2xx/ { print $4 }')
        echo "$target $rps $p99 ${non2xx:-0}" >>"$WORK/hits.txt"
        echo "   round $round $target: $rps req/s, p99 $p99 ms, non-2xx ${non2xx:-0}" >&2
    done
    for target in "${h2_targets[@]}"; do
        out=$(h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$HIT_SECS" -H "authorization: $KEY" \
            "http://$(addr_of "$target")/mj/task/task-9/fetch")
        rps=$(echo "$out" | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
        ok=$(echo "$out" | awk '/^status codes:/ { print $3 }')
        echo "$target $rps ${ok:-0}" >>"$WORK/h2.txt"
        echo "   round $round $target: $rps req/s, ${ok:-0} 2xx" >&2
    done
done
for gw in nginx varnish mjgate; do stop_gateway "$gw"; done

# (d), (b), (c) for each gateway, each from a fresh simulator and a fresh cache.
for gw in nginx varnish mjgate; do
    echo "== $gw: (d) burst of $BURST, (b) ${POLL_SECS}s polling in-progress tasks, (c) ${POLL_SECS}s after they finish" >&2
    start_sim "$((POLL_SECS + 5))s"
    start_gateway "$gw"
    addr=$(addr_of "$gw")
    stats="http://$SIM/_sim/stats"
    "$BIN" bench --target "http://$addr" --clients "$BURST" --tasks 1 --burst --credential "$KEY" \
        --sim-stats "$stats" --json >"$WORK/$gw-d.json"
    sleep 4 # past every 3 s TTL, so (b) starts from the upstream
    "$BIN" bench --target "http://$addr" --clients 200 --tasks 50 --interval 250ms --duration "${POLL_SECS}s" \
        --credential "$KEY" --sim-stats "$stats" --json >"$WORK/$gw-b.json"
    sleep 6 # every task is now SUCCESS
    "$BIN" bench --target "http://$addr" --clients 200 --tasks 50 --interval 250ms --duration "${POLL_SECS}s" \
        --credential "$KEY" --sim-stats "$stats" --json >"$WORK/$gw-c.json"
    stop_gateway "$gw"
done

python3 - "$WORK" "$ROUNDS" "$HIT_SECS" "$CONNS" "$POLL_SECS" "$BURST" <<'EOF'
import json, statistics, sys
work, rounds, hit_secs, conns, poll_secs, burst = sys.argv[1:]
hits = {}
for line in open(f"{work}/hits.txt"):
    name, rps, p99, non2xx = line.split()
    hits.setdefault(name, []).append((float(rps), float(p99), int(non2xx)))
med = {k: (statistics.median(r for r, _, _ in v), statistics.median(p for _, p, _ in v), sum(n for _, _, n in v)) for k, v in hits.items()}
ng = med["nginx"][0]
names = {"fixed": "bare hyper, fixed body", "nginx-fixed": "nginx `return 200`, fixed body",
         "nginx": "nginx proxy_cache", "varnish": "Varnish", "mjgate": "mjgate",
         "mjgate-mix": "mjgate, nine families in turn", "mjgate-gzip": "mjgate, client accepts gzip",
         "nginx-h2": "nginx HTTP/2 proxy_cache", "mjgate-h2": "mjgate HTTP/2"}
print(f"\n(a) cache hits: median of {rounds} rounds, {hit_secs}s each, {conns} connections, wrk -t1\n")
print("| server | req/s | × nginx proxy_cache | × bare hyper | p99 ms | non-2xx |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for k in ["fixed", "nginx-fixed", "nginx", "varnish", "mjgate", "mjgate-mix", "mjgate-gzip"]:
    rps, p99, bad = med[k]
    print(f"| {names[k]} | {rps:,.0f} | {rps/ng:.2f} | {rps/med['fixed'][0]:.2f} | {p99:.2f} | {bad} |")
h2 = {}
for line in open(f"{work}/h2.txt"):
    name, rps, ok = line.split()
    h2.setdefault(name, []).append(float(rps))
print(f"\n(a) HTTP/2 cache hits over cleartext (h2c): median of {rounds} rounds, {hit_secs}s each, h2load -t1\n")
print("| server | req/s | × nginx HTTP/2 proxy_cache |")
print("| --- | ---: | ---: |")
for k in ["nginx-h2", "mjgate-h2"]:
    rps = statistics.median(h2[k])
    print(f"| {names[k]} | {rps:,.0f} | {rps/statistics.median(h2['nginx-h2']):.2f} |")
print(f"\n(b) 200 clients polling 50 in-progress tasks every 250 ms for {poll_secs}s; (c) the same after they finish; (d) {burst} clients at once on one new id\n")
print("| gateway | (b) client req | (b) upstream calls | (c) client req | (c) upstream calls | (d) upstream calls | (d) p99 ms | (d) max ms | errors |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for gw in ["nginx", "varnish", "mjgate"]:
    b, c, d = (json.load(open(f"{work}/{gw}-{x}.json")) for x in "bcd")
    errors = b["load"]["errors"] + c["load"]["errors"] + d["load"]["errors"]
    print(f"| {names[gw]} | {b['load']['requests']:,} | {b['upstream']['fetches']:,} | {c['load']['requests']:,} | {c['upstream']['fetches']:,} | {d['upstream']['fetches']} | {d['load']['latency_ms']['p99']:.1f} | {d['load']['latency_ms']['max']:.1f} | {errors} |")
EOF
