#!/usr/bin/env bash
# mjgate terminating TLS, side by side with nginx terminating TLS in front of its proxy_cache, over one
# simulated upstream, on 127.0.0.1 only. Both serve an ECDSA P-256 certificate from a CA made here.
#
#   bench/tls.sh                         # about 3 minutes
#   ROUNDS=1 HIT_SECS=5 bench/tls.sh     # a quick look
#
# Loads (each bounded in time), cache hits of one finished task:
#   (a) HTTP/1.1 over TLS, CONNS kept-alive connections (wrk, 1 thread): throughput, p99
#   (b) HTTP/2 over TLS, H2_CONNS connections x H2_STREAMS streams (h2load, 1 thread): throughput
#   (c) handshakes: every request on a new connection (wrk, `Connection: close`): new TLS connections/s
set -euo pipefail

ROUNDS=${ROUNDS:-3}
HIT_SECS=${HIT_SECS:-10}
CONNS=${CONNS:-256}
H2_CONNS=${H2_CONNS:-64}
H2_STREAMS=${H2_STREAMS:-10}
HANDSHAKE_CONNS=${HANDSHAKE_CONNS:-32}

cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ensure nginx:nginx-light wrk:wrk h2load:nghttp2-client openssl:openssl
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
ulimit -n 65536 2>/dev/null || true

WORK=$(mktemp -d /tmp/mjgate-tls.XXXXXX)
chmod 755 "$WORK"
SIM=127.0.0.1:19000
MJGATE=127.0.0.1:19443
NGINX=127.0.0.1:19543
KEY="Bearer sk-bench"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    sleep 0.5
    rm -rf "$WORK"
}
trap cleanup EXIT

# A CA and a certificate for localhost, both P-256.
(
    cd "$WORK"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=mjgate bench CA" -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout tls.key -out tls.csr 2>/dev/null
    openssl x509 -req -in tls.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
        -copy_extensions copy -out tls.crt 2>/dev/null
)

"$BIN" simulator --listen "$SIM" --tasks 50 --credential "$KEY" --task-duration 0s 2>"$WORK/sim.log" &
pids+=($!)
wait_port "$SIM"

cat >"$WORK/mjgate.toml" <<EOF
listen = "$MJGATE"
[upstream]
url = "http://$SIM"
[server]
max_connections = 20000
[tls]
cert_file = "$WORK/tls.crt"
key_file = "$WORK/tls.key"
[log]
filter = "warn"
EOF
"$BIN" --config "$WORK/mjgate.toml" 2>"$WORK/mjgate.log" &
pids+=($!)
wait_port "$MJGATE"

# The same cache keying as bench/compare.sh; TLS 1.2 and 1.3, HTTP/2 by ALPN; no session cache or
# tickets, so every new connection is a full handshake, as for mjgate and wrk.
cat >"$WORK/nginx.conf" <<EOF
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    # nginx closes a connection after 1,000 requests by default (HTTP/2: GOAWAY, which h2load does not
    # reconnect after; HTTP/1.1: a new handshake). mjgate sets no such cap.
    keepalive_requests 10000000;
    proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=mj:16m max_size=256m inactive=10m use_temp_path=off;
    upstream sim { server $SIM; keepalive 64; }
    server {
        listen $NGINX ssl http2 reuseport backlog=4096;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_cache mj;
            proxy_cache_key "\$request_uri|\$http_authorization|\$http_mj_api_secret";
            proxy_cache_lock on;
            proxy_cache_valid 200 3s;
        }
    }
}
EOF
nginx -c "$WORK/nginx.conf" -g 'daemon on;'
wait_port "$NGINX"

PATH_=/mj/task/task-1/fetch
for addr in "$MJGATE" "$NGINX"; do
    curl -s -o /dev/null --fail --cacert "$WORK/ca.pem" -H "Authorization: $KEY" "https://localhost:${addr#*:}$PATH_"
    curl -s -o /dev/null --fail --http2 --cacert "$WORK/ca.pem" -H "Authorization: $KEY" "https://localhost:${addr#*:}$PATH_"
done

cat >"$WORK/hit.lua" <<EOF
wrk.headers["Authorization"] = "$KEY"
wrk.path = "$PATH_"
EOF
cat >"$WORK/close.lua" <<EOF
wrk.headers["Authorization"] = "$KEY"
wrk.headers["Connection"] = "close"
wrk.path = "$PATH_"
EOF

to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us/,"",v); print v/1000 } else if (v ~ /ms$/) { sub(/ms/,"",v); print v } else if (v ~ /s$/) { sub(/s/,"",v); print v*1000 } else print v }'; }

for round in $(seq "$ROUNDS"); do
    for name in mjgate nginx; do
        addr=$MJGATE; [ "$name" = nginx ] && addr=$NGINX
        url="https://localhost:${addr#*:}"
        out=$(wrk -t1 -c"$CONNS" -d"${HIT_SECS}s" --latency -s "$WORK/hit.lua" "$url")
        rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
        p99=$(echo "$out" | awk '$1 == "99%" { print $2 }' | to_ms)
        non2xx=$(echo "$out" | awk '/Non-2xx/ { print $4 }')
        echo "h1 $name $rps $p99 ${non2xx:-0}" >>"$WORK/results.txt"
        echo "   round $round h1 $name: $rps req/s, p99 $p99 ms, non-2xx ${non2xx:-0}" >&2
        out=$(h2load -t1 -c"$H2_CONNS" -m"$H2_STREAMS" -D"$HIT_SECS" -H "Authorization: $KEY" "$url$PATH_" 2>&1)
        rps=$(echo "$out" | awk '/^finished in/ { gsub(",", "", $4); print $4 }')
        ok=$(echo "$out" | awk '/^status codes:/ { print $3 }')
        proto=$(echo "$out" | awk '/^Application protocol:/ { print $3 }')
        echo "h2 $name $rps 0 0" >>"$WORK/results.txt"
        echo "   round $round h2 ($proto) $name: $rps req/s, 2xx $ok" >&2
        out=$(wrk -t1 -c"$HANDSHAKE_CONNS" -d"${HIT_SECS}s" --latency -s "$WORK/close.lua" "$url")
        rps=$(echo "$out" | awk '/Requests\/sec/ { print $2 }')
        p99=$(echo "$out" | awk '$1 == "99%" { print $2 }' | to_ms)
        echo "hs $name $rps $p99 0" >>"$WORK/results.txt"
        echo "   round $round handshakes $name: $rps new connections/s, p99 $p99 ms" >&2
    done
done

python3 - "$WORK" "$ROUNDS" "$HIT_SECS" "$CONNS" "$H2_CONNS" "$H2_STREAMS" "$HANDSHAKE_CONNS" <<'EOF'
import statistics, sys
work, rounds, secs, conns, h2c, h2m, hsc = sys.argv[1:]
runs = {}
for line in open(f"{work}/results.txt"):
    kind, name, rps, p99, bad = line.split()
    runs.setdefault((kind, name), []).append((float(rps), float(p99), int(bad)))
med = {k: (statistics.median(r for r, _, _ in v), statistics.median(p for _, p, _ in v), sum(b for *_, b in v)) for k, v in runs.items()}
print(f"\nTLS, median of {rounds} rounds of {secs}s; ECDSA P-256, TLS 1.3\n")
print("| load | mjgate | nginx (TLS + proxy_cache) | mjgate × nginx |")
print("| --- | ---: | ---: | ---: |")
rows = [("h1", f"HTTP/1.1 hits, {conns} connections (wrk) req/s"),
        ("h2", f"HTTP/2 hits, {h2c} connections × {h2m} streams (h2load) req/s"),
        ("hs", f"new connection per request, {hsc} at once (wrk) connections/s")]
for kind, label in rows:
    m, n = med[(kind, "mjgate")][0], med[(kind, "nginx")][0]
    print(f"| {label} | {m:,.0f} | {n:,.0f} | {m/n:.2f} |")
print(f"\np99 ms: HTTP/1.1 hits mjgate {med[('h1','mjgate')][1]:.2f}, nginx {med[('h1','nginx')][1]:.2f}; "
      f"handshakes mjgate {med[('hs','mjgate')][1]:.2f}, nginx {med[('hs','nginx')][1]:.2f}; "
      f"non-2xx mjgate {med[('h1','mjgate')][2]}, nginx {med[('h1','nginx')][2]}")
EOF
