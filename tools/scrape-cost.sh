#!/usr/bin/env bash
# The cost of a `GET /metrics` with N users running (docs/benchmarks.md §7):
# `ferry serve` on a fresh SQLite store with N users (no networks: each is an idle
# actor), then 50 scrapes timed by curl. Usage: tools/scrape-cost.sh FERRY_BIN [N].
# Loopback only; kills only the node it started.
set -euo pipefail
ferry=$1
n=${2:-5000}
dir=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
export FERRY_DATABASE="sqlite://$dir/ferry.db"
echo secret | "$ferry" user add u0 >/dev/null
sqlite3 "$dir/ferry.db" "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i < $n - 1)
  INSERT INTO users (name, password_hash, is_admin, created_at)
  SELECT 'u' || i, (SELECT password_hash FROM users WHERE name = 'u0'), 0, 0 FROM s;"
port=$((20000 + RANDOM % 20000))
FERRY_LOG=warn "$ferry" --data-dir "$dir" serve --http "127.0.0.1:$port" --irc "127.0.0.1:$((port + 1))" \
  >"$dir/log" 2>&1 &
pid=$!
for _ in $(seq 600); do
  users=$(curl -s "http://127.0.0.1:$port/readyz" | sed -n 's/.*"users":\([0-9]*\).*/\1/p' || true)
  [ "${users:-0}" -ge "$n" ] && break
  sleep 0.5
done
echo "users running: $users"
for _ in $(seq 5); do curl -s -o /dev/null "http://127.0.0.1:$port/metrics"; done
times=$(for _ in $(seq 50); do curl -s -o /dev/null -w '%{time_total}\n' "http://127.0.0.1:$port/metrics"; done | sort -n)
echo "$times" | awk '{a[NR]=$1} END {printf "scrape ms: p50 %.2f  p90 %.2f  max %.2f (of %d)\n", a[int(NR*0.5)]*1000, a[int(NR*0.9)]*1000, a[NR]*1000, NR}'
echo "bytes: $(curl -s "http://127.0.0.1:$port/metrics" | wc -c)"
