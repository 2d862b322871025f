#!/usr/bin/env bash
# Bytes on the wire, identity against gzip: one task fetch and one 100-task batch, through mjgate, from
# the simulator's finished Midjourney tasks (they resemble each other, so a batch of them compresses
# better than a real one would).
#
#   bench/gzip.sh              # a few seconds
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
BIN=$PWD/target/release/mjgate
SIM=127.0.0.1:19750
GW=127.0.0.1:19751
KEY="Bearer sk-bench"
WORK=$(mktemp -d /tmp/mjgate-gzip.XXXXXX)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"' EXIT
"$BIN" simulator --listen "$SIM" --tasks 100 --credential "$KEY" --task-duration 0s 2>/dev/null &
pids+=($!)
printf 'listen = "%s"\n[upstream]\nurl = "http://%s"\n[log]\nfilter = "warn"\n' "$GW" "$SIM" >"$WORK/g.toml"
"$BIN" --config "$WORK/g.toml" 2>/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://$GW/healthz" && curl -s -o /dev/null "http://$SIM/_sim/stats" && break; sleep 0.2; done
sleep 0.5
ids=$(python3 -c 'import json; print(json.dumps({"ids": [f"task-{i}" for i in range(100)]}))')
# size ENCODING METHOD PATH [BODY]: body bytes and head bytes as received.
size() {
    local encoding=$1 method=$2 path=$3 body=${4:-}
    curl -s -o /dev/null -w '%{size_download} %{size_header}\n' -X "$method" -H "Authorization: $KEY" \
        -H "Accept-Encoding: $encoding" ${body:+-H 'Content-Type: application/json' --data "$body"} "http://$GW$path"
}
size identity GET /mj/task/task-1/fetch >/dev/null # fill the cache
size identity POST /mj/task/list-by-condition "$ids" >/dev/null
echo "| answer | identity body | gzip body | identity on the wire | gzip on the wire | saved |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for what in fetch batch; do
    if [ $what = fetch ]; then args=(GET /mj/task/task-1/fetch); label="one task fetch"; else args=(POST /mj/task/list-by-condition "$ids"); label="100-task batch"; fi
    read -r ib ih < <(size identity "${args[@]}")
    read -r gb gh < <(size gzip "${args[@]}")
    awk -v l="$label" -v ib="$ib" -v ih="$ih" -v gb="$gb" -v gh="$gh" 'BEGIN {
        printf "| %s | %d B | %d B | %d B | %d B | %.0f %% |\n", l, ib, gb, ib + ih, gb + gh, 100 * (1 - (gb + gh) / (ib + ih)) }'
done
