#!/usr/bin/env bash
# A sidecar's resident memory through the sequence of the README's memory table, for the gateway
# or a peer from ../shared/peer: at start; after 100 000 distinct tokens for 10 s (wrk, 32
# connections); after h2c, 32 connections x 10 streams for 5 s (h2load); after 512 connections,
# 3 x 4 s (wrk); the whole sequence PASSES times. RSS is read from /proc right after each phase.
#
# Usage: footprint.sh NAME PID H1_PORT H2C_PORT [PASSES]
#   gateway: footprint.sh gateway "$(pgrep -f bench.toml)" 18443 18443
#   HAProxy: footprint.sh haproxy "$(cat /tmp/peer/haproxy.pid)" 18081 18086
#   Envoy:   footprint.sh envoy "$(pgrep -f envoy.yaml)" 18087 18087
# TOKENS (one a line, default /tmp/peer/tokens/distinct100k.txt, from mint_tokens.py) and TOKEN
# (one, default /tmp/peer/tokens/mfa.jwt) say what is sent.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
name=$1; pid=$2; h1=$3; h2c=$4; passes=${5:-2}
tokens=${TOKENS:-/tmp/peer/tokens/distinct100k.txt}
token=$(cat "${TOKEN:-/tmp/peer/tokens/mfa.jwt}")
path=/v1/customers/x
rss() { awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status"; }
say() { echo "$name $1 rss_mib=$(rss)"; }
say start
for pass in $(seq "$passes"); do
  wrk -t1 -c32 -d10s -s "$here/rotate.lua" "http://127.0.0.1:$h1$path" -- "$tokens" >/dev/null
  say "pass$pass:distinct"
  h2load -t1 -c32 -m10 -D5 -H "authorization: Bearer $token" "http://127.0.0.1:$h2c$path" >/dev/null
  say "pass$pass:h2c"
  for _ in 1 2 3; do
    wrk -t1 -c512 -d4s -H "Authorization: Bearer $token" "http://127.0.0.1:$h1$path" >/dev/null
  done
  say "pass$pass:512"
done
