#!/usr/bin/env bash
# The first generation's connection report, for Zabbix templates that read its item
#   UserParameter=conn.len[*],cat /etc/zabbix/connections | grep $1 | awk '{print $$2}'
# Writes one "<ejabberd address> <connections up>" line per sender to /etc/zabbix/connections
# (or $ANNOUNCER_CONNECTIONS_FILE), read from each sender's /metrics. Run it from cron every
# minute, as the first generation's get_conn_len.sh was:
#   * * * * * root /usr/local/bin/get_conn_len.sh 6062 6064
# Arguments: the senders' debug ports (default 6062). A sender that does not answer is reported
# with 0 connections for the address it last reported, so the item falls to 0, not stale.
set -euo pipefail

out="${ANNOUNCER_CONNECTIONS_FILE:-/etc/zabbix/connections}"
ports=("$@")
((${#ports[@]})) || ports=(6062)

declare -A up=()
if [[ -f "$out" ]]; then
  while read -r addr _; do
    [[ -n "$addr" ]] && up[$addr]=0
  done <"$out"
fi
for port in "${ports[@]}"; do
  metrics=$(curl -fsS --max-time 3 "http://127.0.0.1:$port/metrics" 2>/dev/null) || continue
  # announcer_sender_node_address_info{address="host:port",node="n"} 1 and
  # announcer_sender_connections_up{node="n"} 2 (label order as Prometheus writes it: sorted).
  while read -r addr count; do
    up[$addr]=$count
  done < <(awk '
    /^announcer_sender_node_address_info\{/ {
      match($0, /address="[^"]*"/); a = substr($0, RSTART + 9, RLENGTH - 10)
      match($0, /node="[^"]*"/); n = substr($0, RSTART + 6, RLENGTH - 7)
      addr[n] = a
    }
    /^announcer_sender_connections_up\{/ {
      match($0, /node="[^"]*"/); n = substr($0, RSTART + 6, RLENGTH - 7)
      c[n] = $2
    }
    END { for (n in addr) print addr[n], (n in c ? c[n] : 0) }' <<<"$metrics")
done

tmp=$(mktemp "$out.XXXXXX")
for addr in "${!up[@]}"; do
  printf '%s %s\n' "$addr" "${up[$addr]}"
done | sort >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
