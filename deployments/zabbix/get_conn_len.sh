#!/usr/bin/env bash
# The first generation's connection report, for Zabbix templates that read its item
#   UserParameter=conn.len[*],cat /etc/zabbix/connections | grep $1 | awk '{print $$2}'
# Writes the lines it wrote, keyed by service, to /etc/zabbix/connections (or
# $ANNOUNCER_CONNECTIONS_FILE), so conn.len[ejabberd], conn.len[redis], ... keep working:
#   ejabberd   component (or c2s) connections up, summed over the senders' /metrics; 0 when none answers
#   http redis user-activity-api mysql zookeeper kafka user-activity-rest-api
#              established TCP connections on this host to or from that service's port, counted as
#              the first generation counted them (its ports by default; set ANNOUNCER_CONN_PORTS,
#              e.g. "mysql=3306 http=8080", to change some)
# Nothing else is written: the item greps, so a line naming an ejabberd host such as
# "ejabberd:8889" would also match conn.len[ejabberd] and break it.
# Run it from cron every minute, as the first generation's get_conn_len.sh was:
#   * * * * * root /usr/local/bin/get_conn_len.sh 6062 6064
# Arguments: the senders' debug ports (default 6062).
set -euo pipefail

out="${ANNOUNCER_CONNECTIONS_FILE:-/etc/zabbix/connections}"
ports=("$@")
((${#ports[@]})) || ports=(6062)

# The first generation's keys, in its order, and the ports its script counted.
keys=(http redis user-activity-api mysql zookeeper kafka user-activity-rest-api)
declare -A port=([http]=8080 [redis]=6379 [user-activity-api]=8888 [mysql]=33061 [zookeeper]=2181 [kafka]=9092 [user-activity-rest-api]=8888)
for kv in ${ANNOUNCER_CONN_PORTS:-}; do
  [[ -n "${port[${kv%%=*}]+set}" ]] || { echo "get_conn_len.sh: ANNOUNCER_CONN_PORTS: unknown key ${kv%%=*}" >&2; exit 2; }
  port[${kv%%=*}]=${kv#*=}
done

ejabberd=0
for p in "${ports[@]}"; do
  metrics=$(curl -fsS --max-time 3 "http://127.0.0.1:$p/metrics" 2>/dev/null) || continue
  # announcer_sender_connections_up{node="n"} 2, one per node the sender serves.
  n=$(awk '/^announcer_sender_connections_up[{ ]/ { s += $NF } END { print s + 0 }' <<<"$metrics")
  ejabberd=$((ejabberd + n))
done

established() {
  if command -v ss >/dev/null; then
    ss -Htn state established "( sport = :$1 or dport = :$1 )" | wc -l
  else
    netstat -nt | awk -v p=":$1" '$6 == "ESTABLISHED" && (substr($4, length($4) - length(p) + 1) == p || substr($5, length($5) - length(p) + 1) == p)' | wc -l
  fi
}

tmp=$(mktemp "$out.XXXXXX")
{
  echo "ejabberd $ejabberd"
  for k in "${keys[@]}"; do
    echo "$k $(($(established "${port[$k]}")))"
  done
} >"$tmp"
chmod 0644 "$tmp"
mv -f "$tmp" "$out"
