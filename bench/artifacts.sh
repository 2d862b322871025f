#!/usr/bin/env bash
# Serving kept files: mjgate's `/_mjgate/files/{token}` against nginx serving the same files from disk
# (`sendfile on`), side by side in one run (wrk: req/s and MB/s for a 1 MiB and a 64 MiB file); then
# mjgate's resident memory while 100 clients download a 512 MiB file at once (it must stay flat: the
# file streams from the store, never held whole). 127.0.0.1 only.
#
#   bench/artifacts.sh                  # SECS=10 CONNS=16 by default
#   SECS=5 CONNS=32 bench/artifacts.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ensure nginx:nginx-light wrk:wrk curl:curl
SECS=${SECS:-10}
CONNS=${CONNS:-16}
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
GW=127.0.0.1:19971
NG=127.0.0.1:19972
WORK=$(mktemp -d /tmp/mjgate-artifacts.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
chmod 755 "$WORK"
mkdir -p "$WORK/files"
head -c $((1 << 20)) /dev/urandom >"$WORK/files/one.mp4"
head -c $((64 << 20)) /dev/urandom >"$WORK/files/sixtyfour.mp4"
head -c $((512 << 20)) /dev/urandom >"$WORK/files/big.mp4"
chmod 644 "$WORK"/files/*
cat >"$WORK/gw.toml" <<TOML
listen = "$GW"
[upstream]
url = "http://127.0.0.1:19970"
[server]
max_connections = 2000
[log]
filter = "warn"
[artifacts]
dir = "$WORK/store"
max_disk = "2GiB"
max_file = "1GiB"
secret = "bench-secret-0123456789abcdef0123"
TOML
keep() { "$BIN" --config "$WORK/gw.toml" artifacts-keep "$WORK/files/$1" --content-type video/mp4; }
ONE=$(keep one.mp4)
SIXTYFOUR=$(keep sixtyfour.mp4)
BIG=$(keep big.mp4)
"$BIN" --config "$WORK/gw.toml" 2>"$WORK/gw.log" &
pids+=($!)
GW_PID=$!
wait_port "$GW"
cat >"$WORK/nginx.conf" <<NGINX
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx.err;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    server {
        listen $NG;
        root $WORK/files;
    }
}
NGINX
nginx -c "$WORK/nginx.conf"
wait_port "$NG"

# One wrk run: "req/s MB/s".
measure() {
    local out
    out=$(wrk -t2 -c"$CONNS" -d"${SECS}s" "$1")
    local rps mbs
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    mbs=$(awk '/Transfer\/sec/ {v=$2; if (v ~ /GB/) {sub("GB","",v); v*=1024} else if (v ~ /KB/) {sub("KB","",v); v/=1024} else sub("MB","",v); print v}' <<<"$out")
    printf '%s %s' "$rps" "$mbs"
}
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$GW_PID/status"; }

echo "# mjgate kept files against nginx sendfile: $("$BIN" --version), $(date -u +%Y-%m-%d), $(nproc) cores"
echo
echo "\`SECS=$SECS CONNS=$CONNS bench/artifacts.sh\` (wrk -t2 -c$CONNS -d${SECS}s)"
echo
echo "| file | mjgate req/s | mjgate MB/s | nginx req/s | nginx MB/s | mjgate / nginx |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for pair in "1 MiB:$ONE:one.mp4" "64 MiB:$SIXTYFOUR:sixtyfour.mp4"; do
    IFS=: read -r name path file <<<"$pair"
    read -r g_rps g_mbs <<<"$(measure "http://$GW$path")"
    read -r n_rps n_mbs <<<"$(measure "http://$NG/$file")"
    ratio=$(awk -v a="$g_mbs" -v b="$n_mbs" 'BEGIN { printf "%.2f", a / b }')
    echo "| $name | $g_rps | $g_mbs | $n_rps | $n_mbs | $ratio |"
done

# 100 clients download the 512 MiB file at once; RSS sampled every 200 ms.
before=$(rss_kb)
dl_pids=()
for _ in $(seq 100); do
    curl -s -o /dev/null --max-time 600 "http://$GW$BIG" &
    dl_pids+=($!)
done
peak=$before
while :; do
    now=$(rss_kb)
    ((now > peak)) && peak=$now
    alive=0
    for p in "${dl_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
    ((alive == 0)) && break
    sleep 0.2
done
after=$(rss_kb)
served=$(curl -s "http://$GW/metrics" | awk '/^mjgate_artifacts_served_total\{answer="whole"\}/ {print $2}')
echo
echo "| 100 clients × 512 MiB at once | RSS before | RSS peak | RSS after | whole answers counted (the whole run) |"
echo "| --- | ---: | ---: | ---: | ---: |"
printf '| 51,200 MiB sent | %.1f MB | %.1f MB | %.1f MB | %s |\n' \
    "$(awk -v k="$before" 'BEGIN {print k/1024}')" "$(awk -v k="$peak" 'BEGIN {print k/1024}')" \
    "$(awk -v k="$after" 'BEGIN {print k/1024}')" "$served"
