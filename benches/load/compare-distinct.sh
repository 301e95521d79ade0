#!/usr/bin/env bash
# Side-by-side load like ../shared/peer/compare.sh, but every request carries a different valid
# token (benches/load/rotate.lua cycling TOKEN_FILE), so nothing is served from a token cache.
# Usage: compare-distinct.sh GATEWAY_PORT [TOKEN_FILE] [ROUNDS] [SECONDS] [CONNECTIONS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
gw=$1; tok=${2:-/tmp/peer/tokens/distinct.txt}; rounds=${3:-3}; secs=${4:-5}; conns=${5:-32}
path=${PATH_UNDER_TEST:-/v1/customers/x}
declare -A ports=([nginx]=18082 [haproxy]=18081 [gateway]=$gw)
declare -A all
for r in $(seq "$rounds"); do
  for name in nginx haproxy gateway; do
    out=$(wrk -t1 -c"$conns" -d"${secs}s" --latency -s "$here/rotate.lua" "http://127.0.0.1:${ports[$name]}$path" -- "$tok")
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
    p99=$(awk '$1 == "99%" {print $2}' <<<"$out")
    echo "round $r $name rps=$rps p99=$p99 non2xx=${bad:-0}"
    all[$name]="${all[$name]:-} $rps"
  done
done
med() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for name in nginx haproxy gateway; do echo "median $name $(med "${all[$name]}")"; done
g=$(med "${all[gateway]}"); n=$(med "${all[nginx]}"); h=$(med "${all[haproxy]}")
awk -v g="$g" -v n="$n" -v h="$h" 'BEGIN {printf "gateway/nginx=%.2f gateway/haproxy=%.2f\n", g/n, g/h}'
