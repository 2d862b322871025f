#!/usr/bin/env bash
# Memory per held connection: mjgate (idle keep-alive, held long-polls, open event streams) and nginx
# (idle keep-alive through proxy_cache), side by side in one run, each from a fresh process.
#
#   bench/hold.sh              # 8,000 connections of each kind (about 2 minutes)
#   N=15000 bench/hold.sh      # processes here may open at most 20,000 files
#
# The connections come from distinct loopback source addresses (127.0.0.0/8), so the ephemeral-port
# range is no limit. RSS is read from /proc (all nginx processes together) before the connections open
# and while they are held.
set -euo pipefail

N=${N:-8000}
HOLD=${HOLD:-6s}

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ensure nginx:nginx-light
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
ulimit -n 20000

WORK=$(mktemp -d /tmp/mjgate-hold.XXXXXX)
chmod 755 "$WORK"
SIM=127.0.0.1:19600
GW=127.0.0.1:19601
NGINX=127.0.0.1:19602
KEY="Bearer sk-bench"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" simulator --listen "$SIM" --tasks 50 --credential "$KEY" --task-duration 3600s 2>/dev/null &
pids+=($!)
wait_port "$SIM"

cat >"$WORK/mjgate.toml" <<EOF
listen = "$GW"
[upstream]
url = "http://$SIM"
[server]
max_connections = 20000
idle_timeout = "600s"
header_read_timeout = "600s"
[watch]
max_open = 20000
max_open_per_credential = 20000
[log]
filter = "warn"
EOF

cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_timeout 600s;
    keepalive_requests 10000000;
    proxy_cache_path $WORK/nginx-cache keys_zone=mj:10m;
    server {
        listen $NGINX;
        location / {
            proxy_pass http://$SIM;
            proxy_cache mj;
            proxy_cache_key "\$request_uri|\$http_authorization";
            proxy_cache_valid 200 3s;
        }
    }
}
EOF

rss_of() { # pids... -> total RSS in bytes
    local total=0 pid kb
    for pid in "$@"; do
        kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + kb * 1024))
    done
    echo "$total"
}

# measure NAME TARGET KIND PIDS...: holds N connections of KIND, prints bytes per connection.
measure() {
    local name=$1 target=$2 kind=$3
    shift 3
    local before after
    before=$(rss_of "$@")
    "$BIN" bench --target "http://$target" --credential "$KEY" --hold "$N" --hold-kind "$kind" \
        --hold-for "$HOLD" --sim-stats "http://$SIM/_sim/stats" >"$WORK/$name.json" &
    local holder=$!
    sleep "$(( ${HOLD%s} - 1 ))"
    after=$(rss_of "$@")
    wait "$holder" || true
    python3 - "$name" "$kind" "$before" "$after" "$N" "$WORK/$name.json" <<'PY'
import json, sys
name, kind, before, after, n, report = sys.argv[1:]
r = json.load(open(report))
per = (int(after) - int(before)) / max(r["held"], 1)
print(f"| {name} | {kind} | {r['held']:,} of {int(n):,} | {int(before)/2**20:.1f} | {int(after)/2**20:.1f} | {per:,.0f} | {r['upstream_fetches']} |")
PY
}

echo "| server | connections | held | RSS before (MiB) | RSS held (MiB) | bytes per connection | upstream fetches |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
for kind in idle long-poll events; do
    "$BIN" --config "$WORK/mjgate.toml" 2>>"$WORK/mjgate.log" &
    gw=$!
    wait_port "$GW"
    measure "mjgate" "$GW" "$kind" "$gw"
    kill "$gw"; wait "$gw" 2>/dev/null || true
done
nginx -c "$WORK/nginx.conf" -g 'daemon on;'
wait_port "$NGINX"
sleep 0.5
mapfile -t nginx_pids < <(pgrep -f "nginx.*$WORK/nginx.conf"; pgrep -P "$(cat "$WORK/nginx.pid")")
measure "nginx proxy_cache" "$NGINX" idle "${nginx_pids[@]}"
