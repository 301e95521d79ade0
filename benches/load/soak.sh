#!/usr/bin/env bash
# Soak: mixed traffic against the release binary for SECONDS, sampling the gateway's resident
# memory, open descriptors, threads, open connections and requests in flight every 10 s, then a
# verdict (flat or growing).
#
# Traffic, all at once: a repeated valid token, 20 000 distinct tokens (no cache can answer),
# invalid tokens (expired, bad signature, unknown kid, garbage, no MFA), 50 slow clients that send
# a request head a byte a second, and requests whose upstream resets mid-body. The key server is
# up 17 s and gone 11 s, in turn. Needs wrk (Debian) and python3 with `cryptography`.
#
# Usage: benches/load/soak.sh SECONDS    (from the repository root; builds the release binary)
set -euo pipefail
secs=${1:?usage: soak.sh SECONDS}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
kp=18791 up=18792 gw=18793 admin=18794
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

(cd "$root" && cargo build --release --quiet)
python3 "$here/soak_servers.py" "$work" $kp $up $gw >"$work/servers.log" 2>&1 &
pids+=($!)
for _ in $(seq 600); do grep -q "tokens written" "$work/servers.log" 2>/dev/null && break; sleep 0.1; done
grep -q "tokens written" "$work/servers.log" || { cat "$work/servers.log"; exit 1; }

cat >"$work/gw.toml" <<EOF
[server]
listen = "127.0.0.1:$gw"
workers = 1
header_read_timeout = "5s"
[admin]
listen = "127.0.0.1:$admin"
[upstream]
url = "http://127.0.0.1:$up"
[log]
filter = "error"
[audit]
enabled = false
[[issuer]]
issuer = "https://sts.windows.net/{tenantid}/"
discovery = "http://127.0.0.1:$kp/.well-known/openid-configuration"
audiences = ["https://api.partnercenter.microsoft.com"]
refresh_interval = "10s"
[[route]]
name = "offers"
path = "/v1/offers"
require = "mfa"
[[route]]
name = "reset"
path = "/reset"
require = "mfa"
[[route]]
name = "customers"
path = "/v1/customers/{*rest}"
require = "app_user_mfa"
EOF
"$root/target/release/mfa-gateway" run --config "$work/gw.toml" 2>"$work/gw.log" &
gpid=$!
pids+=($gpid)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break; sleep 0.1; done

valid=$(cat "$work/valid.txt")
wrk -t1 -c8 -d"${secs}s" -H "Authorization: Bearer $valid" "http://127.0.0.1:$gw/v1/offers" >"$work/wrk-valid.txt" 2>&1 &
pids+=($!)
wrk -t1 -c8 -d"${secs}s" -s "$here/rotate.lua" "http://127.0.0.1:$gw/v1/customers/x" -- "$work/distinct.txt" >"$work/wrk-distinct.txt" 2>&1 &
pids+=($!)
wrk -t1 -c4 -d"${secs}s" -s "$here/rotate.lua" "http://127.0.0.1:$gw/v1/offers" -- "$work/invalid.txt" >"$work/wrk-invalid.txt" 2>&1 &
pids+=($!)
wrk -t1 -c2 -d"${secs}s" -H "Authorization: Bearer $valid" "http://127.0.0.1:$gw/reset" >"$work/wrk-reset.txt" 2>&1 &
pids+=($!)

metric() { curl -s "http://127.0.0.1:$admin/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
sample() {
  local rss fds thr
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$gpid/status")
  fds=$(ls "/proc/$gpid/fd" | wc -l)
  thr=$(awk '/Threads/ {print $2}' "/proc/$gpid/status")
  printf "%6s s  rss=%6.1f MiB  fds=%4s  threads=%2s  connections_open=%4s  in_flight=%3s\n" \
    "$1" "$(awk -v k="$rss" 'BEGIN {print k / 1024}')" "$fds" "$thr" \
    "$(metric mfa_gateway_connections_open)" "$(metric mfa_gateway_requests_in_flight)"
  echo "$1 $rss $fds" >>"$work/samples"
}

start=$(date +%s)
while :; do
  t=$(( $(date +%s) - start ))
  sample "$t"
  [ "$t" -ge "$secs" ] && break
  sleep 10
done
# Let the slow clients' last heads time out, then one more sample with only them connected.
sleep 12
echo "-- after the load stopped (slow clients still connecting):"
sample "$(( $(date +%s) - start ))"

for f in valid distinct invalid reset; do
  printf "wrk %-8s %10s req/s  %s\n" "$f" "$(awk '/Requests\/sec/ {print $2}' "$work/wrk-$f.txt")" \
    "$(grep -h "Socket errors" "$work/wrk-$f.txt" | sed 's/^ *//')"
done
echo "decisions: $(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^mfa_gateway_requests_total/ && $2 > 0 {split($1, a, "decision=\""); split(a[2], d, "\""); n[d[1]] += $2} END {for (k in n) printf "%s=%d ", k, n[k]}')"
echo "key fetch errors: $(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^mfa_gateway_key_fetches_total/ && /error/ {s += $2} END {print s + 0}')"

# Verdict: compare the end of the run with a third of the way in (after caches and pools fill).
# Growing means RSS up by more than 10 % plus 8 MiB, or descriptors up by more than 32.
awk -v secs="$secs" '
  { t[NR] = $1; rss[NR] = $2; fds[NR] = $3 }
  END {
    for (i = 1; i <= NR; i++) if (t[i] >= secs / 3) { b = i; break }
    e = NR - 1  # the last sample under load
    if (e < b) e = b
    grow_rss = rss[e] > rss[b] * 1.10 + 8192
    grow_fds = fds[NR] > fds[b] + 32
    printf "verdict: %s (rss %.1f -> %.1f MiB from %d s to %d s; fds %d -> %d, then %d after the load)\n",
      (grow_rss || grow_fds) ? "growing" : "flat", rss[b] / 1024, rss[e] / 1024, t[b], t[e], fds[b], fds[e], fds[NR]
  }' "$work/samples"
