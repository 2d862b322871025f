#!/usr/bin/env bash
# Resident memory of mjgate under hostile load: pending webhooks, large bodies held for retry, event
# streams whose clients never read (HTTP/1.1 and h2c), slow batch bodies, oversized Redis values.
# Each scenario starts its own simulator and gateway (and hook receiver, redis-server) on 127.0.0.1,
# reads the gateway's RSS from /proc before, during and after, and prints a markdown table.
#
#   bench/hardening.sh                      # every scenario, the brief's sizes (about 15 minutes)
#   bench/hardening.sh hooks large          # some: hooks large streams h2 bodies redis
#   bench/hardening.sh streams --streams 2000 --streams-watch 30   # sizes: bench/hardening.py --help
#   MJGATE=/path/to/mjgate bench/hardening.sh
#
# Needs python3 with the h2 package (for the h2c scenario) and redis-server / redis-cli (for redis).
set -euo pipefail
cd "$(dirname "$0")/.."
MJGATE=${MJGATE:-target/release/mjgate}
[ -x "$MJGATE" ] || { echo "no mjgate binary at $MJGATE (cargo build --release, or set MJGATE)" >&2; exit 1; }
python3 -c 'import h2' 2>/dev/null || python3 -m pip install --quiet h2 >/dev/null
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "# mjgate hardening: $("$MJGATE" --version), $(date -u +%Y-%m-%d), $(nproc) cores"
echo
echo "\`bench/hardening.sh $*\`"
exec timeout -s TERM -k 10 3600 python3 bench/hardening.py --bin "$MJGATE" "$@"
